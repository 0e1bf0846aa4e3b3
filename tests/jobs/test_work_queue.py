"""The work queue: racing workers, dead workers, failing items, all against the real SQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from uuid import UUID

import pytest

from shared.config import Settings
from shared.db.database import Database
from shared.jobs.queue import QueueSettings, RetryItemLater, work_through
from shared.jobs.repository import ClaimedItem, WorkQueueRepository
from shared.runtime import Runtime, pool_limits

ITEMS = [f"item-{n:04d}" for n in range(400)]


@pytest.fixture
async def invocations(settings: Settings) -> AsyncIterator[Callable[[], Runtime]]:
    """Separate runtimes, each with its own connections, as separate invocations would have."""
    made: list[Runtime] = []

    def make() -> Runtime:
        database = Database(settings.database_url.get_secret_value(), pool_limits(settings))  # type: ignore[union-attr]
        made.append(Runtime(settings, database=database))
        return made[-1]

    yield make
    for runtime in made:
        await runtime.database().close()


async def new_job(database: Database, items: list[str], *, max_attempts: int = 5) -> UUID:
    async with database.connection() as conn:
        queue = WorkQueueRepository(conn)
        job, created = await queue.ensure_job(
            "test_job", "race", created_by="test", max_attempts=max_attempts
        )
        assert created
        assert await queue.enqueue(job.id, items) == len(items)
        assert await queue.enqueue(job.id, items[:10]) == 0  # an item is enqueued once
    return job.id


@pytest.mark.parametrize("workers", [2, 8])
async def test_racing_workers_process_every_item_exactly_once(
    workers: int, database: Database, invocations: Callable[[], Runtime]
) -> None:
    # GIVEN a job of 400 items
    job_id = await new_job(database, ITEMS)
    calls: Counter[str] = Counter()

    async def handler(claimed: ClaimedItem) -> None:
        item = claimed.item
        calls[item] += 1
        await asyncio.sleep(0)  # let the other workers run in between

    # WHEN several invocations work through it at once
    settings = QueueSettings(concurrency=4, time_budget_s=60)
    reports = await asyncio.gather(
        *(work_through(invocations(), job_id, handler, settings) for _ in range(workers))
    )

    # THEN every item ran exactly once, shared between the workers, and the job is done
    assert calls == Counter(dict.fromkeys(ITEMS, 1))
    assert sum(r.done for r in reports) == len(ITEMS)
    assert sum(1 for r in reports if r.done) > 1, "the work was not shared"
    assert any(r.finished for r in reports)
    async with database.connection() as conn:
        progress = await WorkQueueRepository(conn).progress(job_id)
    assert progress is not None and progress.status == "done"
    assert (progress.done, progress.remaining, progress.parked) == (len(ITEMS), 0, 0)


async def test_a_worker_killed_mid_batch_loses_nothing(
    database: Database, invocations: Callable[[], Runtime]
) -> None:
    # GIVEN a worker that claims a batch and is killed while working on it
    job_id = await new_job(database, ITEMS[:50])
    started = asyncio.Event()
    hang = asyncio.Event()
    doomed_calls: list[str] = []

    async def doomed(claimed: ClaimedItem) -> None:
        item = claimed.item
        doomed_calls.append(item)
        started.set()
        await hang.wait()  # never set: the process dies here

    settings = QueueSettings(concurrency=4, time_budget_s=60)
    worker = asyncio.create_task(work_through(invocations(), job_id, doomed, settings))
    await started.wait()
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker

    # WHEN its leases run out (moved into the past: no waiting) and another worker runs
    async with database.connection() as conn:
        cursor = await conn.execute(
            "update work_items set lease_until = now() - interval '1 second'"
            " where job_id = %s and lease_until is not null",
            (job_id,),
        )
        held = cursor.rowcount
    calls: Counter[str] = Counter()

    async def survivor(claimed: ClaimedItem) -> None:
        item = claimed.item
        calls[item] += 1

    report = await work_through(invocations(), job_id, survivor, settings)

    # THEN the dead worker held items, and every item is done, each completed once
    assert held > 0 and doomed_calls
    assert set(calls) == set(ITEMS[:50]) and max(calls.values()) == 1
    assert report.done == 50 and report.finished


async def test_failing_items_are_retried_later_then_parked_without_blocking_the_rest(
    database: Database, invocations: Callable[[], Runtime]
) -> None:
    # GIVEN a job where one item always fails
    job_id = await new_job(database, ITEMS[:20], max_attempts=3)

    async def handler(claimed: ClaimedItem) -> None:
        item = claimed.item
        if item == "item-0007":
            raise RetryItemLater("OpenRouter said no", after_s=600)

    settings = QueueSettings(concurrency=2, time_budget_s=60)

    # WHEN the job is worked through three times, the retry delay passing in between (moved
    # into the past: no waiting)
    reports = []
    for _ in range(3):
        reports.append(await work_through(invocations(), job_id, handler, settings))
        async with database.connection() as conn:
            await conn.execute(
                "update work_items set available_at = now() where job_id = %s", (job_id,)
            )

    # THEN the rest was done the first time, and the bad item is parked with its error
    assert reports[0].done == 19 and reports[0].failed == 1
    assert [r.failed for r in reports] == [1, 1, 1] and reports[2].parked == 1
    assert reports[2].finished
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select status, attempts, last_error from work_items where job_id = %s and item = %s",
            (job_id, "item-0007"),
        )
        row = await cursor.fetchone()
    assert row == {"status": "parked", "attempts": 3, "last_error": "OpenRouter said no"}


async def test_an_invocation_stops_at_its_budget_and_hands_back_what_it_did_not_start(
    database: Database, invocations: Callable[[], Runtime]
) -> None:
    # GIVEN a job, and an invocation whose budget is spent before it starts anything
    job_id = await new_job(database, ITEMS[:30])

    async def handler(claimed: ClaimedItem) -> None:
        pass

    spent = await work_through(
        invocations(), job_id, handler, QueueSettings(concurrency=2, time_budget_s=0)
    )

    # THEN it did nothing and left every item claimable; the next invocation does them all
    assert (spent.done, spent.finished) == (0, False)
    following = await work_through(
        invocations(), job_id, handler, QueueSettings(concurrency=2, time_budget_s=60)
    )
    assert following.done == 30 and following.finished
