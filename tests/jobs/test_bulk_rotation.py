"""The monthly rotation of many keys through the work queue, under a 429 storm."""

from __future__ import annotations

from shared.db.database import Database
from shared.jobs.queue import QueueSettings
from shared.keys.scheduled_rotation import rotate_scheduled_keys
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import Runtime
from tests.conftest import RecordingSleep

USERS = [f"user-{n:03d}" for n in range(24)]


async def test_a_429_storm_slows_the_job_down_and_it_still_finishes(
    keys: KeyLifecycleService,
    database: Database,
    runtime: Runtime,
    emulator: Emulator,
    recording_sleep: RecordingSleep,
) -> None:
    # GIVEN 24 users on the monthly policy, their keys from last month
    originals = {
        user: (await keys.create_key(Owner.user(user), actor="t", rotation_policy="monthly")).key
        for user in USERS
    }
    async with database.connection() as conn:
        await conn.execute(
            "update api_keys set activated_at = date_trunc('month', now()) - interval '1 day'"
        )
    # AND OpenRouter answering the next 15 key creations with 429, Retry-After 3 s
    emulator.inject(
        Fault("status", method="POST", path="/keys", status=429, retry_after_s=3, times=15)
    )

    # WHEN the hourly job runs until the month's job is done (each retry delay passes between
    # runs: moved into the past, no waiting)
    reports = []
    for _ in range(20):
        report = await rotate_scheduled_keys(runtime, QueueSettings(concurrency=8))
        reports.append(report)
        if report.finished:
            break
        async with database.connection() as conn:
            await conn.execute("update work_items set available_at = now()")
            await conn.execute("update key_operations set lease_until = now()")

    # THEN it slowed down: the limiter halved and paused for the Retry-After, items were retried
    limiter = runtime.openrouter().limiter
    assert limiter.throttles == 15 and 3.0 in recording_sleep.waits
    assert sum(r.failed for r in reports) > 0 and len(reports) > 1
    # AND it finished: every user rotated once, nothing parked
    assert reports[-1].finished and sum(r.parked for r in reports) == 0
    for user in USERS:
        current = await keys.current_key(Owner.user(user))
        assert current.id != originals[user].id
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select owner, count(*) as n from key_operations where kind = 'rotate'"
            " and status <> 'failed' group by owner having count(*) <> 1"
        )
        assert await cursor.fetchall() == []
        # AND OpenRouter holds exactly our live keys: no duplicate, no orphan
        cursor = await conn.execute(
            "select openrouter_hash from api_keys where state in ('current', 'previous')"
        )
        ours = {row["openrouter_hash"] for row in await cursor.fetchall()}
    at_openrouter = {key.hash for key in await runtime.openrouter().list_all_keys()}
    assert at_openrouter == ours and len(ours) == 2 * len(USERS)  # old ones in their grace
