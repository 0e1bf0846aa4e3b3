"""Every scheduled job, on the schedule the deployments run it (vercel.json's crons and
serverless.yml's EventBridge rules hold the same; tests/test_project_files.py checks), and the
local server's scheduler that runs them in process.

The local server has no Vercel or EventBridge: without this, a grace period would never end,
an emergency rotation would stop after its request, and nothing would ever be reconciled. The
scheduler runs each job at its cron minute, one run of a job at a time, each isolated (a job
that fails is logged and runs again at its next minute; the others are not stopped). It also
looks every LOCAL_JOBS_POLL_S seconds whether key operations or bulk work are due before
their next minute, and runs their job then: the every-minute cron, as soon as it has work,
which costs nothing a deployment would not pay. Locally one work lane is enough (one process:
its concurrency is the lanes'). A local server is not always running, as a deployment's crons
are: at its start it runs every job once, so what fell due while it was down (the month's
opening, a rotation, the daily reconcile) happens then; every job is safe to repeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.observability import logger
from shared.runtime import Runtime

Job = Callable[[Runtime], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week), UTC."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday, as cron counts

    @classmethod
    def parse(cls, expression: str) -> Cron:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"a cron expression has five fields: {expression!r}")
        bounds = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
        minutes, hours, days, months, weekdays = (
            _field(text, low, high) for text, (low, high) in zip(fields, bounds, strict=True)
        )
        return cls(expression, minutes, hours, days, months, weekdays)

    def matches(self, moment: datetime) -> bool:
        moment = moment.astimezone(UTC)
        return (
            moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.day in self.days
            and moment.month in self.months
            and (moment.isoweekday() % 7) in self.weekdays
        )


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            start, end = low, high
        elif "-" in span:
            start, end = (int(v) for v in span.split("-"))
        else:
            start = int(span)
            end = high if step_text else start
        if not (low <= start <= end <= high) or step < 1:
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


# The crons that make bulk jobs for the work lanes (shared/jobs/worker.py).
BULK_JOB_CRONS = frozenset(
    {"rotate-scheduled-keys", "open-usage-period", "reconcile-keys", "sync-usage-from-openrouter"}
)


def scheduled_jobs() -> dict[str, tuple[Job, Cron]]:
    """Every scheduled job by name (its cron route's last segment), with its schedule."""
    from shared.jobs import service

    schedule = {
        "prune-rate-limits": (service.prune_rate_limits, "0 * * * *"),
        "advance-key-operations": (service.advance_key_operations, "* * * * *"),
        "reconcile-keys": (service.reconcile_keys, "30 2 * * *"),
        "work": (service.work, "* * * * *"),
        "rotate-scheduled-keys": (service.rotate_scheduled_keys, "15 * * * *"),
        "open-usage-period": (service.open_usage_period, "5,20,35,50 * 1 * *"),
        "measure-usage-drift": (service.measure_usage_drift, "40 * * * *"),
        "sync-usage-from-openrouter": (service.sync_usage_from_openrouter, "0,15,30,45 * * * *"),
        "verify-reported-usage": (service.verify_reported_usage, "*/5 * * * *"),
        "deliver-alerts": (service.deliver_alerts, "* * * * *"),
    }
    return {name: (job, Cron.parse(cron)) for name, (job, cron) in schedule.items()}


async def run_job(runtime: Runtime, name: str) -> Any:
    """Run one scheduled job now, as its cron would (KeyError for an unknown name)."""
    job, _ = scheduled_jobs()[name]
    return await job(runtime)


# Work the every-minute jobs have before their minute, looked for every poll.
_DUE_WORK = {
    "advance-key-operations": (
        "select exists (select 1 from owner_leases where (tend_at <= now() or dirty)"
        " and (lease_until is null or lease_until < now()))"
        " or exists (select 1 from api_keys where state = 'previous' and grace_until <= now())"
        " or exists (select 1 from key_operations where status in"
        "  ('started', 'planned', 'key_created', 'activated') and updated_at < now() - interval"
        "  '5 seconds')"
        " or exists (select 1 from budget_increases where lapse_applied_at is null"
        "  and ends_at <= now()) as due"
    ),
    "work": ("select exists (select 1 from work_jobs_due(1)) as due"),
}


class LocalScheduler:
    def __init__(self, runtime: Runtime, *, poll_s: float) -> None:
        self._runtime = runtime
        self._poll_s = poll_s
        self._jobs = scheduled_jobs()
        self._running: dict[str, asyncio.Task[None]] = {}
        self.runs: list[str] = []  # the jobs started, in order (what the tests look at)

    async def run(self) -> None:
        """Until cancelled: each job at its cron minute, and due work between minutes."""
        last_minute: datetime | None = None
        while True:
            now = datetime.now(UTC)
            minute = now.replace(second=0, microsecond=0)
            if minute != last_minute:
                for name, (_, cron) in self._jobs.items():
                    if last_minute is None or cron.matches(minute):
                        self._start(name)  # at start: every job, to catch up missed runs
                last_minute = minute
            await self._start_due_work()
            next_minute = minute + timedelta(minutes=1)
            await asyncio.sleep(
                max(0.05, min(self._poll_s, (next_minute - datetime.now(UTC)).total_seconds()))
            )

    async def _start_due_work(self) -> None:
        for name, query in _DUE_WORK.items():
            if name in self._running:
                continue
            try:
                async with self._runtime.database().connection() as conn:
                    cursor = await conn.execute(query)
                    row = await cursor.fetchone()
            except Exception as error:  # the database may be down: the next poll asks again
                logger.warning(
                    "local jobs: could not look for due work", extra={"error": type(error).__name__}
                )
                return
            if row is not None and row["due"]:
                self._start(name)

    def _start(self, name: str) -> None:
        if name in self._running:
            return  # one run of a job at a time, as one cron invocation would have it
        self.runs.append(name)
        task = asyncio.create_task(self._run_isolated(name))
        self._running[name] = task
        task.add_done_callback(lambda _: self._running.pop(name, None))

    async def _run_isolated(self, name: str) -> None:
        job, _ = self._jobs[name]
        started = time.monotonic()
        try:
            result = await job(self._runtime)
        except Exception as error:  # isolated: one job failing stops no other
            logger.warning(
                "local job failed; it runs again at its next minute",
                extra={"job": name, "error_code": getattr(error, "code", type(error).__name__)},
            )
            return
        logger.info(
            "local job done",
            extra={"job": name, "result": result, "seconds": round(time.monotonic() - started, 3)},
        )

    async def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
