"""Working through a bulk job in pieces: claim items, run them with bounded concurrency until
the invocation's time budget is spent, hand back what was not started.

Several invocations may work on one job at once (the work lanes, a cron tick, a request): the
database hands each item to one worker at a time, and an item of a later phase only once every
item of the earlier phases was tried (schema/migrations/0017_one_work_queue.sql). While it
works, the process follows the fleet's share of OpenRouter (shared/jobs/fleet.py). A handler
must be idempotent per item, since an item whose worker died is run again; the key sagas are
(a rotation replays by its idempotency key). What a handler returns is kept as the item's
result. Deadlines are read on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from shared.config import Settings
from shared.errors import AppError, NotFound
from shared.jobs.fleet import fleet_member
from shared.jobs.repository import ClaimedItem, JobProgress, WorkQueueRepository
from shared.observability import logger
from shared.redaction import redact
from shared.runtime import Runtime

ItemHandler = Callable[[ClaimedItem], Awaitable[Any]]


class RetryItemLater(Exception):
    """Raised by a handler for an item that should be tried again after a while."""

    def __init__(self, reason: str, *, after_s: float | None = None) -> None:
        super().__init__(reason)
        self.after_s = after_s


@dataclass(frozen=True, slots=True)
class QueueSettings:
    concurrency: int = 8
    time_budget_s: float = 45.0
    # Longer than the budget, so an item is never taken from a live worker; a dead worker's
    # items come back after it.
    lease_margin_s: float = 30.0
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0

    @classmethod
    def of(cls, settings: Settings, *, time_budget_s: float | None = None) -> QueueSettings:
        budget = settings.job_time_budget_s if time_budget_s is None else time_budget_s
        return cls(concurrency=settings.job_concurrency, time_budget_s=budget)


@dataclass(slots=True)
class WorkReport:
    worker: str
    done: int = 0
    failed: int = 0
    parked: int = 0
    lost: int = 0  # completed after the lease ran out: another worker owns the item now
    released: int = 0
    finished: bool = False
    errors: list[str] = field(default_factory=list)


def retry_delay(attempts: int, settings: QueueSettings) -> float:
    return float(min(settings.retry_base_s * 2.0 ** max(attempts - 1, 0), settings.retry_max_s))


async def work_through(
    runtime: Runtime,
    job_id: UUID,
    handler: ItemHandler,
    settings: QueueSettings,
    *,
    worker: str | None = None,
) -> WorkReport:
    """Run the job's due items until none is left or the time budget is spent."""
    report = WorkReport(worker=worker or f"worker-{uuid.uuid4().hex[:12]}")
    clock = asyncio.get_running_loop().time
    deadline = clock() + settings.time_budget_s
    lease_s = int(settings.time_budget_s + settings.lease_margin_s)
    database = runtime.database()
    buffer: list[ClaimedItem] = []
    claim_lock = asyncio.Lock()
    exhausted = False
    running = 0
    finished = 0  # items ended in this invocation: a claim made meanwhile may be stale
    one_finished = asyncio.Event()

    async def next_item() -> ClaimedItem | None:
        nonlocal exhausted
        while True:
            async with claim_lock:
                if clock() >= deadline:
                    return None
                if buffer:
                    return buffer.pop(0)
                if exhausted:
                    return None
                finished_before = finished
                async with database.connection() as conn:
                    buffer.extend(
                        await WorkQueueRepository(conn).claim(
                            job_id,
                            worker=report.worker,
                            limit=settings.concurrency * 2,
                            lease_s=lease_s,
                        )
                    )
                if buffer or finished != finished_before:
                    continue  # claimed, or an item ended meanwhile and may have opened more
                if running == 0:
                    exhausted = True  # nothing due, and nothing of ours that could open more
                    return None
                # Nothing claimable while our own items run: a later phase opens when they
                # end, so wait for one to end and ask again.
                one_finished.clear()
            await one_finished.wait()

    async def run(claimed: ClaimedItem) -> None:
        try:
            result = await handler(claimed)
        except Exception as error:
            after = error.after_s if isinstance(error, RetryItemLater) else None
            if isinstance(error, AppError):
                message = f"{error.code}: {error.message}"
            else:
                message = str(error) if isinstance(error, RetryItemLater) else repr(error)
            message = redact(message)  # kept in the database and the logs
            async with database.connection() as conn:
                status = await WorkQueueRepository(conn).fail(
                    job_id,
                    claimed.item,
                    worker=report.worker,
                    error=message,
                    retry_s=after if after is not None else retry_delay(claimed.attempts, settings),
                )
            report.failed += 1
            report.parked += status == "parked"
            report.lost += status is None
            if len(report.errors) < 10:
                report.errors.append(f"{claimed.item}: {message}"[:300])
            return
        async with database.connection() as conn:
            completed = await WorkQueueRepository(conn).complete(
                job_id, claimed.item, worker=report.worker, result=result
            )
        report.done += completed
        report.lost += not completed

    async def lane() -> None:
        nonlocal running, finished
        while (claimed := await next_item()) is not None:
            running += 1
            try:
                await run(claimed)
            finally:
                running -= 1
                finished += 1
                one_finished.set()

    async with fleet_member(runtime, lease_s=lease_s):
        await asyncio.gather(*(lane() for _ in range(settings.concurrency)))
    async with database.connection() as conn:
        repository = WorkQueueRepository(conn)
        if buffer:
            report.released = len(buffer)
            await repository.release(job_id, [c.item for c in buffer], worker=report.worker)
        report.finished = await repository.finish_if_drained(job_id)
    logger.info(
        "work queue invocation",
        extra={
            "job_id": str(job_id),
            "worker": report.worker,
            "done": report.done,
            "failed": report.failed,
            "parked": report.parked,
            "released": report.released,
            "finished": report.finished,
        },
    )
    return report


@dataclass(frozen=True, slots=True)
class JobStatus:
    progress: JobProgress
    rate_per_s: Decimal | None
    eta: datetime | None


def job_status(progress: JobProgress, *, now: datetime) -> JobStatus:
    """Done items per second since the first was done, and when the rest should be."""
    rate: Decimal | None = None
    eta: datetime | None = None
    first, last = progress.first_done_at, progress.last_done_at
    if first is not None and last is not None and progress.done > 1 and last > first:
        seconds = Decimal(str((last - first).total_seconds()))
        rate = (Decimal(progress.done - 1) / seconds).quantize(Decimal("0.01"))
        if progress.status == "running" and rate > 0:
            eta = now + timedelta(seconds=float(progress.remaining / rate))
    return JobStatus(progress=progress, rate_per_s=rate, eta=eta)


async def recent_jobs(runtime: Runtime, *, kind: str | None, limit: int) -> list[JobStatus]:
    """The newest bulk jobs, each with its progress, rate and ETA."""
    async with runtime.database().connection() as conn:
        jobs = await WorkQueueRepository(conn).recent(kind=kind, limit=limit)
    now = datetime.now(UTC)
    return [job_status(job, now=now) for job in jobs]


async def one_job(runtime: Runtime, job_id: UUID) -> JobStatus:
    async with runtime.database().connection() as conn:
        progress = await WorkQueueRepository(conn).progress(job_id)
    if progress is None:
        raise NotFound("no bulk job has this id", code="job_not_found")
    return job_status(progress, now=datetime.now(UTC))
