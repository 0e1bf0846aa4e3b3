"""The monthly rotation of every key the schedule covers, as a job on the work queue.

The month's job is created once (its name is the period), with every due owner enqueued in one
statement; the hourly cron creates it, and the work lanes work through it until it is done. An
item is one owner's rotation, started with an idempotency key made of the period and the
owner, so an item run again after its worker died replays that rotation instead of starting a
second one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from shared.errors import Conflict, NotFound
from shared.jobs.queue import (
    ItemHandler,
    QueueSettings,
    RetryItemLater,
    WorkReport,
    work_through,
)
from shared.jobs.repository import ClaimedItem, WorkJob, WorkQueueRepository
from shared.keys.domain import Owner, current_period
from shared.keys.repository import KeyRepository
from shared.keys.service import KeyLifecycleService
from shared.observability import logger
from shared.runtime import Runtime

KIND = "scheduled_rotation"
PRIORITY = 3
ACTOR = "job:scheduled-rotation"


async def ensure_month_job(runtime: Runtime) -> WorkJob:
    """This month's job, created with every due owner if it is new."""
    period = current_period()
    async with runtime.database().connection() as conn, conn.transaction():
        # One transaction: a concurrent tick waits for this job and its items, then sees both.
        job, created = await WorkQueueRepository(conn).ensure_job(
            KIND, period.isoformat(), created_by=ACTOR, priority=PRIORITY
        )
        if created:
            enqueued = await KeyRepository(conn).enqueue_due_for_scheduled_rotation(job.id, period)
            await WorkQueueRepository(conn).finish_if_drained(job.id)  # nothing due: done
            logger.info("scheduled rotation job created", extra={"keys": enqueued})
    return job


def handler(runtime: Runtime, job: WorkJob) -> ItemHandler:
    """An item is one owner's rotation this month (the job's name is the period)."""
    period = date.fromisoformat(job.name)
    keys = KeyLifecycleService(runtime)
    period_start = datetime(period.year, period.month, 1, tzinfo=UTC)

    async def rotate(claimed: ClaimedItem) -> None:
        owner_key = claimed.item
        owner = Owner.parse(owner_key)
        try:
            current = await keys.current_key(owner)
            if current.activated_at is not None and current.activated_at >= period_start:
                return  # rotated this month already (by its owner, or by this very item)
            await keys.rotate_key(
                owner,
                actor=ACTOR,
                reason="scheduled monthly rotation",
                idempotency_key=f"{KIND}:{period.isoformat()}:{owner_key}",
            )
        except NotFound:
            return  # no current key any more: nothing to rotate
        except Conflict as error:
            # Another operation of this owner is running; its lease is short.
            raise RetryItemLater(error.message, after_s=60) from error

    return rotate


async def rotate_scheduled_keys(
    runtime: Runtime, settings: QueueSettings, *, worker: str | None = None
) -> WorkReport:
    """Create this month's job if it is new, then work through it for the time budget (the
    work lanes carry on with it until it is done)."""
    job = await ensure_month_job(runtime)
    if job.status != "running":
        return WorkReport(worker=worker or "-", finished=True)
    return await work_through(runtime, job.id, handler(runtime, job), settings, worker=worker)
