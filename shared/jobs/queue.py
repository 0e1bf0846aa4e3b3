"""Working through a bulk job in pieces: claim items, run them with bounded concurrency until
the invocation's time budget is spent, hand back what was not started.

Several invocations may work on one job at once (the work lanes, a cron tick, a request): the
database hands each item to one worker at a time, and an item of a later phase only once every
item of the earlier phases was tried (schema/migrations/0017_one_work_queue.sql). While it
works, the process follows the fleet's share of OpenRouter (shared/jobs/fleet.py). A handler
must be idempotent per item, since an item whose worker died is run again; the key sagas are
(a rotation replays by its idempotency key). What a handler returns is kept as the item's
result. Deadlines are read on the event loop's clock.

A worker holds an item for a short lease (`QueueSettings.lease_s`) and renews, every
`heartbeat_s` on the event loop's clock, the leases of every item it holds (claimed and not
started, or running) in one statement: a worker that dies gives its items back within the
lease, and a live one keeps an item however long it runs. An item whose lease was not renewed
(another worker has it now) is not started; if it was running, its completion is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    # How long a worker that died (kill -9, a platform's timeout) keeps its items: they come
    # back once their lease runs out. A live worker renews its leases every heartbeat_s, so it
    # keeps its items however long one runs (past its budget too).
    lease_s: int = 15
    heartbeat_s: float = 5.0
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.lease_s < 1:
            raise ValueError("lease_s must be at least 1 s")
        if not 0 < self.heartbeat_s < self.lease_s:
            raise ValueError("heartbeat_s must be positive and shorter than lease_s")

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
    lease_s = settings.lease_s
    database = runtime.database()
    buffer: list[ClaimedItem] = []
    running_items: dict[str, ClaimedItem] = {}
    # Each claim held (claimed and not started, or running), with when its lease may run out on
    # the loop's clock: read before the statement that set it was sent, so never later than the
    # database's. By claim, not only by name: an item failed and claimed again is a new claim.
    leases: dict[str, tuple[ClaimedItem, float]] = {}

    def holds(claimed: ClaimedItem) -> bool:
        lease = leases.get(claimed.item)
        return lease is not None and lease[0] is claimed and clock() < lease[1]

    def ending(claimed: ClaimedItem) -> None:
        """No longer held here: its handler is done (the statement that ends the item checks
        the lease itself), or it is not started after all."""
        if running_items.get(claimed.item) is claimed:
            del running_items[claimed.item]
        if leases.get(claimed.item, (None, 0.0))[0] is claimed:
            del leases[claimed.item]

    claim_lock = asyncio.Lock()
    exhausted = False
    running = 0
    finished = 0  # items ended in this invocation: a claim made meanwhile may be stale
    one_finished = asyncio.Event()
    stop = asyncio.Event()

    async def next_item() -> ClaimedItem | None:
        nonlocal exhausted
        while True:
            async with claim_lock:
                if clock() >= deadline:
                    return None
                if buffer:
                    claimed = buffer.pop(0)
                    if holds(claimed):
                        return claimed
                    ending(claimed)  # its lease may have run out: it may be another's now
                    continue
                if exhausted:
                    return None
                finished_before = finished
                sent_at = clock()
                async with database.connection() as conn:
                    claimed_now = await WorkQueueRepository(conn).claim(
                        job_id,
                        worker=report.worker,
                        limit=settings.concurrency * 2,
                        lease_s=lease_s,
                    )
                for claimed in claimed_now:
                    leases[claimed.item] = (claimed, sent_at + lease_s)
                buffer.extend(claimed_now)
                if buffer or finished != finished_before:
                    continue  # claimed, or an item ended meanwhile and may have opened more
                if running == 0:
                    exhausted = True  # nothing due, and nothing of ours that could open more
                    return None
                # Nothing claimable while our own items run: a later phase opens when they
                # end, so wait for one to end and ask again.
                one_finished.clear()
            await one_finished.wait()

    async def heartbeat() -> None:
        """Every heartbeat_s, renew the leases of the items held, in one statement; an item
        whose lease was not renewed is no longer held (another worker may have it)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.heartbeat_s)
            held = [*buffer, *running_items.values()]
            if stop.is_set() or not held:
                continue
            sent_at = clock()
            try:
                async with database.connection() as conn:
                    renewed = await WorkQueueRepository(conn).renew(
                        job_id, [c.item for c in held], worker=report.worker, lease_s=lease_s
                    )
            except Exception as error:  # the next beat tries again; the leases last till then
                logger.warning(
                    "work queue leases not renewed",
                    extra={"job_id": str(job_id), "error": type(error).__name__},
                )
                continue
            lost: list[ClaimedItem] = []
            for claimed in held:
                lease = leases.get(claimed.item)
                if lease is None or lease[0] is not claimed:
                    continue  # ended meanwhile (and maybe claimed again: a newer claim)
                if claimed.item in renewed:
                    leases[claimed.item] = (claimed, sent_at + lease_s)
                else:  # its lease ran out, or another worker has taken the item over
                    del leases[claimed.item]
                    lost.append(claimed)
            if lost:  # one not started yet will not be (next_item asks holds())
                logger.warning(
                    "work queue leases lost",
                    extra={"job_id": str(job_id), "items": [c.item for c in lost][:10]},
                )

    async def run(claimed: ClaimedItem) -> None:
        try:
            result = await handler(claimed)
        except Exception as error:
            ending(claimed)
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
        ending(claimed)
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
            running_items[claimed.item] = claimed
            try:
                await run(claimed)
            finally:
                ending(claimed)
                running -= 1
                finished += 1
                one_finished.set()

    beating = asyncio.create_task(heartbeat())
    try:
        async with fleet_member(runtime, lease_s=lease_s):
            await asyncio.gather(*(lane() for _ in range(settings.concurrency)))
    finally:
        stop.set()  # a renewal under way ends first: a statement is never cut off
        await beating
    async with database.connection() as conn:
        repository = WorkQueueRepository(conn)
        unstarted = [c.item for c in buffer if leases.get(c.item, (None, 0.0))[0] is c]
        if unstarted:
            report.released = len(unstarted)
            await repository.release(job_id, unstarted, worker=report.worker)
        report.finished = await repository.finish_if_drained(job_id)
    logger.info(
        "work queue invocation",
        extra={
            "job_id": str(job_id),
            "worker": report.worker,
            "done": report.done,
            "failed": report.failed,
            "parked": report.parked,
            "lost": report.lost,
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
