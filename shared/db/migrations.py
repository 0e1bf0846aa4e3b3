"""Applies schema/migrations/NNNN_name.sql in order, once each, on any Postgres DSN.

Applied versions and their checksums are recorded in schema_migrations. A session advisory lock
serialises concurrent runners (several cold starts, a CLI run during a deploy): the second one
waits, then finds nothing left to do. An applied migration whose file changed is refused, since
silently diverging schemas are worse than a failed deploy.

One exception, declared in the file: a migration may be amended in a way that changes nothing
where it already ran (a statement made conditional on a schema it runs against, say). The file
then says `-- amends: <checksum of its earlier text>`, and a database that recorded that
checksum records the new one instead of refusing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shared.config import REPOSITORY_ROOT
from shared.db.database import Database

MIGRATIONS_DIR = REPOSITORY_ROOT / "schema" / "migrations"
SUPABASE_SCHEMA_FILE = REPOSITORY_ROOT / "schema" / "supabase-schema.sql"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_AMENDS = re.compile(r"^-- amends: (?P<checksum>[0-9a-f]{64})$", re.MULTILINE)
# Any fixed 64-bit number; it only has to be the same for every runner of this schema.
_ADVISORY_LOCK_KEY = 0x6F72_6167_656E_7431

BOOKKEEPING_DDL = """\
create table if not exists schema_migrations (
    version text primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);
alter table schema_migrations enable row level security;
"""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def file_name(self) -> str:
        return f"{self.version}_{self.name}.sql"

    @property
    def amends(self) -> frozenset[str]:
        """Checksums of earlier texts this one replaces where they were applied."""
        return frozenset(m["checksum"] for m in _AMENDS.finditer(self.sql))


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: str
    name: str
    checksum: str
    applied_at: datetime


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read every migration file, in version order; refuse badly named or duplicate versions."""
    migrations: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        version = match["version"]
        if version in migrations:
            raise MigrationError(f"two migrations share version {version}")
        migrations[version] = Migration(version, match["name"], path.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


def render_supabase_schema(migrations: list[Migration]) -> str:
    """The single file a Supabase user pastes into the SQL editor: every migration, recorded."""
    parts = [
        "-- openrouter-agent: the whole schema in one file, for Supabase's SQL editor.\n"
        "-- Generated from schema/migrations by `openrouter-agent migrate --bundle`; do not edit.\n"
        "-- Paste it into a fresh project. To upgrade later, run `openrouter-agent migrate`\n"
        "-- against the project's Postgres DSN: it skips the versions recorded below.\n\n"
        "begin;\n\n",
        BOOKKEEPING_DDL,
    ]
    for migration in migrations:
        parts.append(f"\n-- ===== migration {migration.file_name} =====\n\n")
        parts.append(migration.sql.rstrip() + "\n")
        # Our own file names and checksums (validated on load), written into a file.
        values = f"('{migration.version}', '{migration.name}', '{migration.checksum}')"
        parts.append(
            "\ninsert into schema_migrations (version, name, checksum) values "  # nosec B608
            + values
            + "\non conflict (version) do nothing;\n"
        )
    parts.append("\ncommit;\n")
    return "".join(parts)


class MigrationRunner:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def applied(self) -> list[AppliedMigration]:
        async with self._database.connection() as conn:
            exists = await conn.execute("select to_regclass('schema_migrations') is not null as ok")
            row = await exists.fetchone()
            if row is None or not row["ok"]:
                return []
            cursor = await conn.execute(
                "select version, name, checksum, applied_at from schema_migrations order by version"
            )
            return [AppliedMigration(**r) for r in await cursor.fetchall()]  # type: ignore[arg-type]

    async def migrate(self, migrations: list[Migration]) -> list[Migration]:
        """Apply what is pending, each in its own transaction; return what was applied now."""
        applied_now: list[Migration] = []
        async with self._database.connection() as conn:
            await conn.execute("select pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
            try:
                await conn.execute(BOOKKEEPING_DDL)
                cursor = await conn.execute("select version, checksum from schema_migrations")
                recorded = {str(r["version"]): str(r["checksum"]) for r in await cursor.fetchall()}
                for migration in migrations:
                    checksum = recorded.get(migration.version)
                    if checksum is not None:
                        if checksum in migration.amends:
                            await conn.execute(
                                "update schema_migrations set checksum = %s where version = %s",
                                (migration.checksum, migration.version),
                            )
                        elif checksum != migration.checksum:
                            raise MigrationError(
                                f"migration {migration.file_name} was applied with different "
                                "content; write a new migration instead of editing an applied one"
                            )
                        continue
                    async with conn.transaction():
                        await conn.execute(migration.sql.encode())
                        await conn.execute(
                            "insert into schema_migrations (version, name, checksum)"
                            " values (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                    applied_now.append(migration)
            finally:
                await conn.execute("select pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
        return applied_now
