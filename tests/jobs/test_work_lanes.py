"""The work lanes: idle for one query, staggered when there is work, most urgent job first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.config import Settings
from shared.jobs.repository import WorkQueueRepository
from shared.jobs.worker import bulk_work_may_start, stagger_s, work
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from shared.usage.budgets import BudgetService


@pytest.fixture
async def lanes(
    settings: Settings, emulator: Emulator, openrouter: OpenRouterClient
) -> AsyncIterator[Runtime]:
    """Two lanes a minute whose invocations leave 0.2 s of the minute: lane 1 waits 0.2 s."""
    tuned = settings.model_copy(update={"work_lanes": 2, "job_time_budget_s": 59.8})
    runtime = Runtime(tuned, openrouter=openrouter, emulator=emulator)
    yield runtime
    await runtime.database().close()


def test_the_lanes_cover_the_minute_between_them() -> None:
    """Lane 0 starts at the minute, the last lane so that it ends with it."""
    assert stagger_s(0, lanes=2, time_budget_s=45) == 0
    assert stagger_s(1, lanes=2, time_budget_s=45) == 15
    assert stagger_s(2, lanes=3, time_budget_s=45) == 15
    assert stagger_s(1, lanes=1, time_budget_s=45) == 0


def test_a_lane_looks_again_only_in_a_minute_a_bulk_cron_runs() -> None:
    """The month's rotation is made hourly at :15; the reconcile daily at 02:30."""
    assert bulk_work_may_start(datetime(2026, 12, 2, 7, 15, 30, tzinfo=UTC))
    assert bulk_work_may_start(datetime(2026, 12, 2, 2, 30, tzinfo=UTC))
    assert not bulk_work_may_start(datetime(2026, 12, 2, 7, 16, tzinfo=UTC))


async def test_an_idle_lane_ends_at_once_unless_a_bulk_cron_runs_this_minute(
    lanes: Runtime,
) -> None:
    """GIVEN no bulk job WHEN lane 1 is invoked THEN it ends without waiting its stagger; in a
    minute whose cron makes a job, it waits its stagger and looks again."""
    idle = await work(lanes, lane=1, jobs_may_start=False)
    looked_again = await work(lanes, lane=1, jobs_may_start=True)

    assert (idle.waited_s, idle.done, idle.jobs) == (0.0, 0, [])
    assert looked_again.waited_s == pytest.approx(0.2)
    assert (looked_again.done, looked_again.jobs) == (0, [])


async def test_a_lane_works_the_most_urgent_job_first(lanes: Runtime) -> None:
    """GIVEN a job of priority 3 and one of priority 9 with items due WHEN a worker asks
    THEN the urgent one comes first; and a lane works both to their end."""
    async with lanes.database().connection() as conn:
        queue = WorkQueueRepository(conn)
        low, _ = await queue.ensure_job("tier_budget", "low", created_by="t", priority=3)
        high, _ = await queue.ensure_job("tier_budget", "high", created_by="t", priority=9)
        await queue.enqueue(low.id, ["user:a"])
        await queue.enqueue(high.id, ["user:b"])
        due = await queue.due_jobs(limit=5)
    assert [job.name for job in due] == ["high", "low"]

    report = await work(lanes, lane=0, stagger=False)

    assert report.jobs == ["tier_budget:high", "tier_budget:low"]
    assert report.done == 2  # owners without a key: nothing to apply, each done once


async def test_a_tier_amount_change_is_worked_by_a_lane(lanes: Runtime, emulator: Emulator) -> None:
    """GIVEN two free users with keys WHEN the free tier's amount changes THEN one lane's
    invocation brings both keys' limits to it."""
    keys = KeyLifecycleService(lanes)
    for user in ("p", "q"):
        await keys.create_key(Owner.user(user), actor="t", tier="free")
    await BudgetService(lanes).set_tier_budget(
        "free", Decimal(7), actor="t", reason="test", request_id=None
    )

    report = await work(lanes, lane=0, stagger=False)

    assert report.done == 2
    assert [k.limit for k in emulator.user_keys()] == [Decimal(7), Decimal(7)]
