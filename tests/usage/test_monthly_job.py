"""The monthly job applies once, however often and however concurrently it is invoked."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import cast

from shared.db.database import Database
from shared.jobs.queue import QueueSettings
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


def _patches(emulator: Emulator) -> int:
    return sum(1 for method, _ in emulator.requests if method == "PATCH")


async def test_two_concurrent_invocations_apply_once(
    keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    # GIVEN six keys whose limit last month was cut to $3 (of standard's $50)
    for i in range(6):
        await keys.create_key(Owner.user(f"m{i}"), actor="t", tier="standard")
    await _last_month(database, "3")
    patches = _patches(emulator)

    # WHEN two invocations run at once, then a third
    first, second = await asyncio.gather(
        open_period(runtime, QueueSettings(concurrency=3)),
        open_period(runtime, QueueSettings(concurrency=3)),
    )
    third = await open_period(runtime, QueueSettings())

    # THEN each key was restored to $50 once, with one call each; the invocation that found
    # the rest in the other's hands says "partial", and the month's job is done after them
    assert "done" in (first.status, second.status) and third.status == "already_done"
    assert first.keys_restored + second.keys_restored == 6
    assert await _limit_audits(database) == 6 and _patches(emulator) - patches == 6
    assert all(k.limit == Decimal(50) for k in emulator.user_keys())


async def test_keys_already_at_their_budget_roll_over_without_a_call(
    keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    # GIVEN three keys at their full budget last month, one cut short, one whose $2 spent this
    # month was given back by a reset
    secrets = [
        (await keys.create_key(Owner.user(f"r{i}"), actor="t", tier="free")).secret
        for i in range(5)
    ]
    emulator.charge(secrets[4] or "", Decimal(2))
    await _last_month(database, "10")
    async with database.connection() as conn:
        await conn.execute("update api_keys set limit_usd = 4 where owner = 'user:r3'")
        await conn.execute(
            "insert into usage_adjustments (user_id, period, amount_usd, reason, actor)"
            " values ('r4', date_trunc('month', now())::date, -2, 'goodwill', 't')"
        )
    patches = _patches(emulator)

    # WHEN the month opens
    result = await open_period(runtime, QueueSettings())

    # THEN three keys moved into the month by one statement, two by OpenRouter calls
    assert (result.status, result.keys_rolled_over, result.keys_restored) == ("done", 3, 2)
    assert _patches(emulator) - patches == 2
    limits = sorted(k.limit or Decimal(0) for k in emulator.user_keys())
    assert limits == [Decimal(10)] * 4 + [Decimal(12)]
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select count(*) as n from api_keys where state = 'current'"
            " and limit_period = date_trunc('month', now())::date"
        )
        assert (await cursor.fetchone() or {})["n"] == 5


async def test_a_run_cut_short_is_finished_by_the_next_invocation(
    keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    for i in range(5):
        await keys.create_key(Owner.user(f"p{i}"), actor="t", tier="free")
    await _last_month(database, "1")

    cut = await open_period(runtime, QueueSettings(time_budget_s=0))
    resumed = await open_period(runtime, QueueSettings())

    assert (cut.status, cut.keys_restored) == ("partial", 0)
    assert (resumed.status, resumed.keys_restored) == ("done", 5)
    assert all(k.limit == Decimal(10) for k in emulator.user_keys())
