"""The audit trail: one row per key operation step, hash-chained, append-only, tamper-evident."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from shared.audit.repository import AuditRepository
from shared.db.database import Database
from shared.keys.service import KeyLifecycleService, Owner
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN


async def _actions(database: Database) -> list[str]:
    async with database.connection() as conn:
        cursor = await conn.execute("select action from audit_log order by seq")
        return [str(row["action"]) for row in await cursor.fetchall()]


async def _verify(database: Database) -> tuple[int | None, int]:
    async with database.connection() as conn:
        result = await AuditRepository(conn).verify()
    return result.broken_seq, result.rows_checked


async def test_each_step_of_a_rotation_leaves_exactly_one_row(
    keys: KeyLifecycleService, database: Database
) -> None:
    owner = Owner.user("audited")
    await keys.create_key(owner, actor="t")
    await keys.rotate_key(owner, actor="t", grace_seconds=0, reason="scheduled")
    key = await keys.current_key(owner)
    await keys.reveal(key, actor="service:reader", request_id="r1")
    assert await _actions(database) == [
        "user.created",
        "key.create.requested",
        "key.create.planned",
        "key.created_at_openrouter",
        "key.create.activated",
        "key.rotate.requested",
        "key.disabled_for_rotation",  # no grace: the old key stops before the new one exists
        "key.rotate.planned",
        "key.created_at_openrouter",
        "key.rotate.activated",
        "key.settled",  # its final usage read, then deleted at OpenRouter
        "key.revealed",
    ]
    assert await _verify(database) == (None, 12)


@pytest.mark.parametrize("tampering", ["update", "delete"])
async def test_editing_or_deleting_a_row_is_detected_at_that_row(
    keys: KeyLifecycleService, database: Database, tampering: str
) -> None:
    owner = Owner.user("tampered")
    await keys.create_key(owner, actor="t")
    await keys.rotate_key(owner, actor="t", grace_seconds=0)
    async with database.connection() as conn:
        cursor = await conn.execute("select seq from audit_log order by seq offset 3 limit 1")
        row = await cursor.fetchone()
        assert row is not None
        target = int(row["seq"])  # type: ignore[call-overload]

        # While the guard is on, no role (the owner included) can change history...
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(
                "update audit_log set actor = 'someone else' where seq = %s", (target,)
            )

        # ...and an owner who disables the guard is caught by verify.
        await conn.execute("alter table audit_log disable trigger audit_log_append_only")
        if tampering == "update":
            await conn.execute(
                "update audit_log set reason = 'nothing to see' where seq = %s", (target,)
            )
        else:
            await conn.execute("delete from audit_log where seq = %s", (target,))
        await conn.execute("alter table audit_log enable trigger audit_log_append_only")
        cursor = await conn.execute(
            "select min(seq) as seq from audit_log where seq > %s", (target,)
        )
        following = int((await cursor.fetchone() or {})["seq"])  # type: ignore[call-overload]

    broken, _ = await _verify(database)
    # an edited row breaks at itself; a deleted one at the row that followed it (seq values
    # are not contiguous: each row takes its seq under the chain's lock)
    assert broken == (target if tampering == "update" else following)


@pytest.mark.integration  # runs the CLI as its own process
async def test_the_cli_and_the_admin_route_report_the_chain(
    keys: KeyLifecycleService,
    database: Database,
    database_dsn: str,
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    await keys.create_key(Owner.user("cli"), actor="t")
    admin = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env.update(APP_ENV="development", LOCAL_DATA_DIR=str(tmp_path))
    command = [sys.executable, "-m", "shared.cli", "audit", "verify", "--dsn", database_dsn]

    intact = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    route = await api.get("/api/admin/audit/verify", headers=admin)
    assert (intact.returncode, intact.stdout.strip()) == (0, "audit chain intact: 5 rows")
    assert route.json() == {"intact": True, "rows_checked": 5, "broken_seq": None, "problem": None}

    async with database.connection() as conn:
        await conn.execute("alter table audit_log disable trigger audit_log_append_only")
        await conn.execute(
            "update audit_log set actor = 'forged' where seq = (select min(seq) from audit_log)"
        )
    broken = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    route = await api.get("/api/admin/audit/verify", headers=admin)
    events = await api.get("/api/admin/audit?limit=2", headers=admin)
    assert broken.returncode == 1 and "broken at row" in broken.stderr
    assert route.json()["intact"] is False
    assert len(events.json()["data"]) == 2
    assert events.json()["next_before_seq"] == events.json()["data"][-1]["seq"]


async def test_concurrent_writers_keep_the_chain_intact(
    keys: KeyLifecycleService, database: Database
) -> None:
    # GIVEN twelve owners whose keys are created at once (each create writes five audit rows
    # from its own transactions, interleaved with the others')
    await asyncio.gather(
        *(keys.create_key(Owner.user(f"concurrent-{n}"), actor="t") for n in range(12))
    )

    # THEN the chain verifies: seq order is the order rows were chained in
    broken, checked = await _verify(database)
    assert broken is None and checked == 60
