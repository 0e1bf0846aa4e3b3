"""The work lanes: the one worker of every bulk job, so that bulk work finishes at the pace the
fleet allows, not at the pace of the job's own cron.

Each platform runs WORK_LANES lanes every minute (vercel.json's crons `/api/jobs/work?lane=N`,
serverless.yml's `workLaneN` schedules): a frequent schedule is the one mechanism both have
(Vercel has crons and nothing else), and it costs one query when there is nothing to do. A
lane with work waits `lane x (60 s - JOB_TIME_BUDGET_S) / (WORK_LANES - 1)` first, so that the
lanes' invocations overlap instead of all pausing at the same seconds of every minute, then
works the most urgent job with items due (an emergency first), then the next, until its time
budget is spent. Several lanes work one job at once (the queue hands each item to one worker);
together they take the fleet's share of OpenRouter (shared/jobs/fleet.py), not each the whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.jobs.queue import ItemHandler, QueueSettings, work_through
from shared.jobs.repository import WorkJob, WorkQueueRepository
from shared.observability import logger
from shared.runtime import Runtime

SCHEDULE_INTERVAL_S = 60.0  # the lanes' cron: every minute on both platforms
_LEFT_OVER_S = 0.5  # less than this left: not worth claiming anything


@dataclass(slots=True)
class LaneReport:
    lane: int
    waited_s: float = 0.0
    done: int = 0
    failed: int = 0
    jobs: list[str] = field(default_factory=list)


def stagger_s(lane: int, *, lanes: int, time_budget_s: float) -> float:
    """How long a lane waits before it works, so that the lanes cover the whole minute."""
    if lanes <= 1:
        return 0.0
    spare = max(0.0, SCHEDULE_INTERVAL_S - time_budget_s)
    return (lane % lanes) * spare / (lanes - 1)


def handler_for(runtime: Runtime, job: WorkJob) -> tuple[ItemHandler, QueueSettings]:
    """The handler of a job's items, by its kind, with the queue settings it runs under."""
    factories: dict[str, Callable[[], tuple[ItemHandler, QueueSettings]]] = {
        "emergency_rotation": lambda: _emergency(runtime, job),
        "scheduled_rotation": lambda: _scheduled_rotation(runtime, job),
        "monthly_restore": lambda: _monthly_restore(runtime, job),
        "reconcile": lambda: _reconcile(runtime, job),
        "tier_budget": lambda: _tier_budget(runtime, job),
        "tier_guardrail": lambda: _tier_guardrail(runtime, job),
        "usage_sync": lambda: _usage_sync(runtime, job),
    }
    factory = factories.get(job.kind)
    if factory is None:
        raise LookupError(f"no handler for bulk jobs of kind {job.kind!r}")
    return factory()


def _emergency(runtime: Runtime, job: WorkJob) -> tuple[ItemHandler, QueueSettings]:
    from shared.emergency.service import EmergencyRotationService

    service = EmergencyRotationService(runtime)
    return service.handler(job), service.queue_settings(time_budget_s=0)


def _scheduled_rotation(runtime: Runtime, job: WorkJob) -> tuple[ItemHandler, QueueSettings]:
    from shared.keys import scheduled_rotation

    return scheduled_rotation.handler(runtime, job), QueueSettings.of(runtime.settings)


def _monthly_restore(runtime: Runtime, job: WorkJob) -> tuple[ItemHandler, QueueSettings]:
    from shared.usage import monthly

    return monthly.handler(runtime, job), QueueSettings.of(runtime.settings)


def _reconcile(runtime: Runtime, job: WorkJob) -> tuple[ItemHandler, QueueSettings]:
    from shared.keys import reconcile

    return reconcile.handler(runtime, job), QueueSettings.of(runtime.settings)


def _tier_budget(runtime: Runtime, job: WorkJob) -> tuple[ItemHandler, QueueSettings]:
    from shared.usage import budgets

    return budgets.tier_budget_handler(runtime, job), QueueSettings.of(runtime.settings)


def _tier_guardrail(runtime: Runtime, job: WorkJob) -> tuple[ItemHandler, QueueSettings]:
    from shared.usage import tier_policies

    return tier_policies.tier_guardrail_handler(runtime, job), QueueSettings.of(runtime.settings)


def bulk_work_may_start(moment: datetime) -> bool:
    """Whether a cron that makes a bulk job runs this minute: a lane idle at the minute's start
    then looks again after its stagger, instead of missing the job for a minute."""
    from shared.jobs.schedule import BULK_JOB_CRONS, scheduled_jobs

    minute = moment.replace(second=0, microsecond=0)
    return any(
        cron.matches(minute)
        for name, (_, cron) in scheduled_jobs().items()
        if name in BULK_JOB_CRONS
    )


def _usage_sync(runtime: Runtime, job: WorkJob) -> tuple[ItemHandler, QueueSettings]:
    from shared.usage import sync

    return sync.handler(runtime, job), QueueSettings.of(runtime.settings)


async def work(
    runtime: Runtime, *, lane: int = 0, stagger: bool = True, jobs_may_start: bool | None = None
) -> LaneReport:
    """One lane's invocation: if any job has work, wait its stagger, then work the most
    urgent jobs until the time budget is spent. `jobs_may_start`: whether a cron makes a bulk
    job this minute (default: read from the schedule and the clock)."""
    settings = runtime.settings
    report = LaneReport(lane=lane)
    database = runtime.database()
    async with database.connection() as conn:
        idle = not await WorkQueueRepository(conn).due_jobs(limit=1)
    if idle and not stagger:
        return report
    if idle:
        if jobs_may_start is None:
            jobs_may_start = bulk_work_may_start(datetime.now(UTC))
        if not jobs_may_start:
            return report  # idle: one query, and done
    if stagger:
        report.waited_s = stagger_s(
            lane, lanes=settings.work_lanes, time_budget_s=settings.job_time_budget_s
        )
        await asyncio.sleep(report.waited_s)
    if idle:
        async with database.connection() as conn:
            if not await WorkQueueRepository(conn).due_jobs(limit=1):
                return report
    clock = asyncio.get_running_loop().time
    deadline = clock() + settings.job_time_budget_s
    passed: set[str] = set()  # jobs whose due items other workers took first
    while (left := deadline - clock()) > _LEFT_OVER_S:
        async with database.connection() as conn:
            due = await WorkQueueRepository(conn).due_jobs(limit=len(passed) + 1)
        job = next((j for j in due if str(j.id) not in passed), None)
        if job is None:
            break
        handle, queue = handler_for(runtime, job)
        done = await work_through(
            runtime,
            job.id,
            handle,
            dataclasses.replace(queue, time_budget_s=left),
        )
        report.done += done.done
        report.failed += done.failed
        report.jobs.append(f"{job.kind}:{job.name}")
        if done.done == 0 and done.failed == 0:
            passed.add(str(job.id))
    logger.info(
        "work lane done",
        extra={"lane": lane, "done": report.done, "failed": report.failed, "jobs": report.jobs},
    )
    return report
