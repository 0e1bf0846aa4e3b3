"""The migration runner on real PostgreSQL: ordered, once-only, concurrency-safe, tamper-evident."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from shared.db.database import Database
from shared.db.migrations import (
    MIGRATIONS_DIR,
    SUPABASE_SCHEMA_FILE,
    Migration,
    MigrationError,
    MigrationRunner,
    load_migrations,
    render_supabase_schema,
)


async def _tables(dsn: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("select tablename from pg_tables where schemaname = 'public'")
        return {row[0] for row in await cursor.fetchall()}


async def test_migrate_applies_every_migration_once_and_records_it(empty_database_dsn: str) -> None:
    database = Database(empty_database_dsn)
    runner = MigrationRunner(database)
    migrations = load_migrations()

    first = await runner.migrate(migrations)
    second = await runner.migrate(migrations)
    applied = await runner.applied()
    await database.close()

    assert [m.version for m in first] == [m.version for m in migrations]
    assert second == []
    assert [(a.version, a.checksum) for a in applied] == [
        (m.version, m.checksum) for m in migrations
    ]


async def test_concurrent_runners_apply_each_migration_exactly_once(
    empty_database_dsn: str,
) -> None:
    # GIVEN eight processes' worth of runners starting at once (eight cold starts)
    databases = [Database(empty_database_dsn) for _ in range(8)]
    migrations = load_migrations()

    # WHEN they all migrate concurrently
    results = await asyncio.gather(*(MigrationRunner(d).migrate(migrations) for d in databases))
    for database in databases:
        await database.close()

    # THEN every migration was applied by exactly one of them, and nothing failed
    applied_versions = sorted(m.version for result in results for m in result)
    assert applied_versions == [m.version for m in migrations]


async def test_an_edited_applied_migration_is_refused(database: Database) -> None:
    original = load_migrations()
    edited = [Migration(original[0].version, original[0].name, original[0].sql + "\n-- edit")]
    with pytest.raises(MigrationError, match="different content"):
        await MigrationRunner(database).migrate(edited)


async def test_a_failing_migration_leaves_nothing_behind(empty_database_dsn: str) -> None:
    database = Database(empty_database_dsn)
    broken = Migration("0001", "broken", "create table half_done (id int);\nselect 1/0;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        await MigrationRunner(database).migrate([broken])
    applied = await MigrationRunner(database).applied()
    await database.close()
    assert applied == []
    assert "half_done" not in await _tables(empty_database_dsn)


def test_badly_named_migration_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match=r"NNNN_lower_snake\.sql"):
        load_migrations(tmp_path)


def test_the_supabase_schema_file_is_the_migrations_bundled() -> None:
    """schema/supabase-schema.sql must be regenerated (`openrouter-agent migrate --bundle`)
    whenever a migration is added."""
    assert SUPABASE_SCHEMA_FILE.read_text() == render_supabase_schema(
        load_migrations(MIGRATIONS_DIR)
    )


async def test_the_supabase_schema_file_builds_the_same_schema_as_the_runner(
    empty_database_dsn: str, database_dsn: str
) -> None:
    # WHEN the bundled file is pasted into a fresh database (as into Supabase's SQL editor)
    async with await psycopg.AsyncConnection.connect(empty_database_dsn, autocommit=True) as conn:
        await conn.execute(SUPABASE_SCHEMA_FILE.read_bytes())

    # THEN it has the runner's tables, and the runner then finds nothing left to do
    assert await _tables(empty_database_dsn) == await _tables(database_dsn)
    database = Database(empty_database_dsn)
    assert await MigrationRunner(database).migrate(load_migrations()) == []
    await database.close()


async def test_every_table_has_row_level_security_enabled(database_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_dsn) as conn:
        cursor = await conn.execute(
            "select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'public' and c.relkind = 'r' and not c.relrowsecurity"
        )
        assert await cursor.fetchall() == []


async def test_tier_budgets_are_exact_and_unlimited_is_null(database_dsn: str) -> None:
    from decimal import Decimal

    async with await psycopg.AsyncConnection.connect(database_dsn) as conn:
        cursor = await conn.execute("select tier, monthly_budget_usd from subscription_tiers")
        budgets: dict[str, Decimal | None] = dict(await cursor.fetchall())
    assert budgets == {
        "free": Decimal(10),
        "standard": Decimal(50),
        "micro": Decimal(100),
        "operator": Decimal(250),
        "enterprise": Decimal(500),
        "beta": Decimal(1000),
        "admin": None,
        "future4200": None,
    }


async def test_a_migration_amended_in_place_is_accepted_where_its_earlier_text_ran(
    empty_database_dsn: str,
) -> None:
    # GIVEN a database where migration 0002 ran in the text it had before it was amended
    database = Database(empty_database_dsn)
    migrations = load_migrations()
    amended = next(m for m in migrations if m.version == "0002")
    [earlier] = amended.amends
    await MigrationRunner(database).migrate(migrations)
    async with database.connection() as conn:
        await conn.execute(
            "update schema_migrations set checksum = %s where version = '0002'", (earlier,)
        )

    # WHEN the runner meets it again THEN it records the amended text instead of refusing
    assert await MigrationRunner(database).migrate(migrations) == []
    recorded = {a.version: a.checksum for a in await MigrationRunner(database).applied()}
    await database.close()
    assert recorded["0002"] == amended.checksum
