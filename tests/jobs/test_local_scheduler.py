"""The local server's scheduler: the deployments' cron expressions read as cron reads them, and
one job failing stops no other."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from shared.jobs.schedule import Cron, LocalScheduler
from shared.runtime import Runtime


@pytest.mark.parametrize(
    ("expression", "moment", "matches"),
    [
        ("5,20,35,50 * 1 * *", datetime(2026, 12, 1, 0, 5, tzinfo=UTC), True),
        ("5,20,35,50 * 1 * *", datetime(2026, 12, 2, 0, 5, tzinfo=UTC), False),
        ("5,20,35,50 * 1 * *", datetime(2026, 12, 1, 13, 21, tzinfo=UTC), False),
        ("30 2 * * *", datetime(2026, 6, 14, 2, 30, tzinfo=UTC), True),
        ("30 2 * * *", datetime(2026, 6, 14, 3, 30, tzinfo=UTC), False),
        ("*/15 * * * 1-5", datetime(2026, 12, 4, 9, 45, tzinfo=UTC), True),  # a Friday
        ("*/15 * * * 1-5", datetime(2026, 12, 6, 9, 45, tzinfo=UTC), False),  # a Sunday
        ("0 * * * *", datetime(2026, 12, 6, 9, 0, tzinfo=UTC), True),
    ],
)
def test_cron_expressions_match_as_cron_reads_them(
    expression: str, moment: datetime, matches: bool
) -> None:
    assert Cron.parse(expression).matches(moment) is matches


@pytest.mark.parametrize("expression", ["* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *"])
def test_an_impossible_cron_expression_is_refused(expression: str) -> None:
    with pytest.raises(ValueError, match=r"five fields|is outside"):
        Cron.parse(expression)


async def test_a_job_that_fails_stops_no_other(runtime: Runtime) -> None:
    # GIVEN a scheduler whose every-minute jobs are one that always fails and one that counts
    ran = asyncio.Event()
    attempts: list[str] = []

    async def failing(_: Runtime) -> None:
        attempts.append("failing")
        raise RuntimeError("OpenRouter is down")

    async def counting(_: Runtime) -> int:
        attempts.append("counting")
        ran.set()
        return 1

    every_minute = Cron.parse("* * * * *")
    scheduler = LocalScheduler(runtime, poll_s=0.05)
    scheduler._jobs = {"failing": (failing, every_minute), "counting": (counting, every_minute)}

    # WHEN it runs
    running = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(ran.wait(), timeout=30)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await scheduler.stop()

    # THEN the failure was the first run and did not keep the second from running
    assert scheduler.runs[:2] == ["failing", "counting"]
    assert attempts[:2] == ["failing", "counting"]


async def test_at_start_every_job_runs_once_to_catch_up_what_fell_due_while_down(
    runtime: Runtime,
) -> None:
    """GIVEN a daily job whose minute is not now (the server was down when it fell due)
    WHEN the scheduler starts THEN the job runs at once, and once only until its minute."""
    ran = asyncio.Event()
    now = datetime.now(UTC)
    elsewhere = (now.hour + 12) % 24  # a daily minute half a day away

    async def daily(_: Runtime) -> None:
        ran.set()

    scheduler = LocalScheduler(runtime, poll_s=0.05)
    scheduler._jobs = {"daily": (daily, Cron.parse(f"30 {elsewhere} * * *"))}

    running = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(ran.wait(), timeout=30)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await scheduler.stop()

    assert scheduler.runs == ["daily"]
