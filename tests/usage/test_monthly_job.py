"""The monthly job applies once, however often and however concurrently it is invoked."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import cast

from shared.db.database import Database
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from shared.usage.monthly import open_period


async def _last_month(database: Database, limit: str) -> None:
    """Make every current key look like last month's, with a partial limit."""
    async with database.connection() as conn:
        await conn.execute(
            "update api_keys set limit_period = (date_trunc('month', now()) - interval '1 month')"
            "::date, limit_usd = %s, spent_before_usd = 7 where state = 'current'",
            (Decimal(limit),),
        )


async def _limit_audits(database: Database) -> int:
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select count(*) as n from audit_log where action = 'key.limit_applied'"
        )
        row = await cursor.fetchone()
        assert row is not None
        return cast(int, row["n"])


async def test_two_concurrent_invocations_apply_once(
    keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    for i in range(6):
        await keys.create_key(Owner.user(f"m{i}"), actor="t", tier="standard")
    await _last_month(database, "3")

    first, second = await asyncio.gather(
        open_period(runtime, time_budget_s=30), open_period(runtime, time_budget_s=30)
    )

    assert sorted([first.status, second.status]) == ["done", "in_progress"]
    assert await _limit_audits(database) == 6
    assert all(k.limit == Decimal(50) for k in emulator.user_keys())
    third = await open_period(runtime, time_budget_s=30)
    assert (third.status, await _limit_audits(database)) == ("already_done", 6)


async def test_a_run_cut_short_is_finished_by_the_next_invocation(
    keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    for i in range(5):
        await keys.create_key(Owner.user(f"p{i}"), actor="t", tier="free")
    await _last_month(database, "1")

    cut = await open_period(runtime, time_budget_s=30, batch=2)
    # a first run that stopped after two keys (its time was up)
    assert cut.status in ("done", "partial")
    async with database.connection() as conn:
        await conn.execute(
            "update usage_period_runs set status = 'running', lease_until = null,"
            " checkpoint_owner = 'user:p1', keys_restored = 2"
        )
        await conn.execute(
            "update api_keys set limit_period = (date_trunc('month', now()) - interval '1 month')"
            "::date, limit_usd = 1 where owner > 'user:p1' and state = 'current'"
        )

    resumed = await open_period(runtime, time_budget_s=30)

    assert (resumed.status, resumed.keys_restored) == ("done", 5)
    assert all(k.limit == Decimal(10) for k in emulator.user_keys())
