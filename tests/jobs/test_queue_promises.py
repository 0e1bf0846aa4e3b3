"""The work queue's promises, attacked with several workers at once on the real SQL: phases are
gated across workers, every item is completed exactly once (a worker out of budget mid-item, a
worker whose lease was taken over), and a live worker keeps what it holds however long an item
takes (its leases are short and renewed)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

from shared.db.database import Database
from shared.jobs.queue import ItemHandler, QueueSettings, RetryItemLater, work_through
from shared.jobs.repository import ClaimedItem, WorkQueueRepository
from tests.jobs.conftest import MakeRuntime, item_rows, phased_job

Event = tuple[str, str, int, int, str]  # (start|end, item, phase, attempt, worker)


async def later_phase_claims(database: Database, job_id: UUID, *, after: int) -> list[str]:
    """Items of a phase after `after` that any worker has claimed, ever."""
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select item from work_items where job_id = %s and phase > %s and attempts > 0",
            (job_id, after),
        )
        return [str(row["item"]) for row in await cursor.fetchall()]


async def test_no_later_phase_starts_while_an_earlier_item_is_untried_or_in_flight(
    database: Database, fleet: MakeRuntime
) -> None:
    """GIVEN a job of three phases: ten slow phase-0 items (each waits until the test lets it
    go), three of which fail their first try with RetryItemLater; then eight phase-1 items
    and four phase-2 items
    WHEN three workers work it at once, and the test lets the phase-0 items go one at a time
    THEN while any phase-0 item is untried or on its first try no worker claims, let alone
    starts, a later item; every phase-1 item starts after every phase-0 first try ended, every
    phase-2 item after every phase-1 item's; the workers shared the work, and finished it
    themselves (no item left behind for a later invocation)."""
    phase0 = [f"p0-{n:02d}" for n in range(10)]
    flaky = {"p0-02", "p0-05", "p0-08"}
    phases = {0: phase0, 1: [f"p1-{n:02d}" for n in range(8)], 2: [f"p2-{n:02d}" for n in range(4)]}
    job_id = await phased_job(database, phases)
    log: list[Event] = []
    waiting: asyncio.Queue[str] = asyncio.Queue()
    let_go = {item: asyncio.Event() for item in phase0}

    def handler(worker: str) -> ItemHandler:
        async def handle(claimed: ClaimedItem) -> None:
            log.append(("start", claimed.item, claimed.phase, claimed.attempts, worker))
            try:
                if claimed.phase == 0 and claimed.attempts == 1:
                    waiting.put_nowait(claimed.item)
                    await let_go[claimed.item].wait()
                    if claimed.item in flaky:
                        raise RetryItemLater("not yet", after_s=0)
                else:
                    await asyncio.sleep(0)  # the other workers run in between
            finally:
                log.append(("end", claimed.item, claimed.phase, claimed.attempts, worker))

        return handle

    async def release_phase0_one_at_a_time() -> None:
        try:
            for _ in phase0:
                item = await asyncio.wait_for(waiting.get(), timeout=30)
                # a phase-0 item is still in flight: nothing of phase 1 or 2 may be claimed
                assert await later_phase_claims(database, job_id, after=0) == []
                let_go[item].set()
        finally:  # on a failure too, so that the workers end
            for event in let_go.values():
                event.set()

    settings = QueueSettings(concurrency=3, time_budget_s=60)
    workers = [f"worker-{n}" for n in range(3)]
    releasing = asyncio.create_task(release_phase0_one_at_a_time())
    reports = await asyncio.gather(
        *(work_through(fleet(), job_id, handler(w), settings, worker=w) for w in workers)
    )
    await releasing

    def index(kind: str, item: str, attempt: int = 1) -> int:
        return next(i for i, e in enumerate(log) if e[:2] == (kind, item) and e[3] == attempt)

    first_tries_ended = max(index("end", item) for item in phase0)
    phase1_ended = max(index("end", item) for item in phases[1])
    for n, (kind, item, phase, _, _) in enumerate(log):
        if kind == "start" and phase == 1:
            assert n > first_tries_ended, f"{item} started before phase 0 was tried: {log}"
        if kind == "start" and phase == 2:
            assert n > phase1_ended, f"{item} started before phase 1 was done: {log}"
    runs = Counter(e[1] for e in log if e[0] == "end")
    assert runs == Counter(
        {item: 2 if item in flaky else 1 for items in phases.values() for item in items}
    )
    assert len({e[4] for e in log if e[0] == "start" and e[2] == 0}) > 1, "the work was not shared"
    assert sum(r.done for r in reports) == 22 and sum(r.failed for r in reports) == 3
    assert any(r.finished for r in reports)
    rows = await item_rows(database, job_id)
    assert {row["status"] for row in rows.values()} == {"done"}


async def test_every_item_is_completed_once_despite_a_spent_budget_and_a_lease_taken_over(
    database: Database, fleet: MakeRuntime
) -> None:
    """GIVEN a job of 120 items, and a first worker ("stale") stuck on its first item, whose
    lease on that item is then taken from it (moved into the past, as if its lease had run
    out while it was stalled), renewing its leases all the while
    WHEN three steady workers and a worker with a budget of 0.3 s (its one item outlasts the
    budget) work the job at once, and the stale worker then comes back and completes its item
    THEN another worker took the stale item over and completed it; the stale worker's
    completion was refused (lost, not counted), its handler's result was not kept; the short
    worker's item, done after its budget was spent, counted; every item was completed once
    (the handler ran once per item, the stolen item twice); nothing is left behind."""
    items = [f"item-{n:04d}" for n in range(120)]
    job_id = await phased_job(database, {0: items})
    completions: Counter[str] = Counter()
    loop = asyncio.get_running_loop()

    def counting(worker: str, before: Callable[[ClaimedItem], Any] | None = None) -> ItemHandler:
        async def handle(claimed: ClaimedItem) -> dict[str, str]:
            if before is not None:
                await before(claimed)
            await asyncio.sleep(0)
            completions[claimed.item] += 1
            return {"by": worker}

        return handle

    stale_started, stale_back = asyncio.Event(), asyncio.Event()
    stolen: list[str] = []

    async def stall_on_first(claimed: ClaimedItem) -> None:
        if not stolen:
            stolen.append(claimed.item)
            stale_started.set()
            await stale_back.wait()

    stale_settings = QueueSettings(concurrency=1, time_budget_s=60, heartbeat_s=0.05)
    stale = asyncio.create_task(
        work_through(
            fleet(), job_id, counting("stale", stall_on_first), stale_settings, worker="stale"
        )
    )
    await asyncio.wait_for(stale_started.wait(), timeout=30)
    async with database.connection() as conn:
        cursor = await conn.execute(
            "update work_items set lease_until = now() - interval '1 second'"
            " where job_id = %s and item = %s and leased_by = 'stale'",
            (job_id, stolen[0]),
        )
        assert cursor.rowcount == 1

    short_budget_s = 0.3
    short_started_at = loop.time()
    short_items: list[str] = []

    async def outlast_the_budget(claimed: ClaimedItem) -> None:
        short_items.append(claimed.item)
        # this item is still running when the worker's budget is spent
        await asyncio.sleep(short_started_at + short_budget_s - loop.time() + 0.05)

    steady = QueueSettings(concurrency=4, time_budget_s=60)
    short = QueueSettings(concurrency=1, time_budget_s=short_budget_s)
    *steady_reports, short_report = await asyncio.gather(
        *(
            work_through(fleet(), job_id, counting(f"steady-{n}"), steady, worker=f"steady-{n}")
            for n in range(3)
        ),
        work_through(fleet(), job_id, counting("short", outlast_the_budget), short, worker="short"),
    )
    assert completions[stolen[0]] == 1, "the stolen item was not taken over"
    stale_back.set()
    stale_report = await stale
    # what the short worker claimed and did not start was handed back: whoever runs now
    drain = await work_through(fleet(), job_id, counting("drain"), steady, worker="drain")

    assert completions == Counter({item: 2 if item == stolen[0] else 1 for item in items})
    # the stolen item lost; the item it had claimed and not started (renewed all the while)
    # done, and maybe what the short worker handed back
    assert stale_report.lost == 1 and stale_report.done >= 1
    assert (short_report.done, short_report.lost, len(short_items)) == (1, 0, 1)
    assert short_report.released == 1
    reports = [*steady_reports, short_report, stale_report, drain]
    assert sum(r.done for r in reports) == len(items)
    assert drain.finished or any(r.finished for r in reports)
    async with database.connection() as conn:
        queue = WorkQueueRepository(conn)
        progress = await queue.progress(job_id)
        cursor = await conn.execute(
            "select result from work_items where job_id = %s and item = %s", (job_id, stolen[0])
        )
        row = await cursor.fetchone()
    assert progress is not None and (progress.status, progress.done) == ("done", len(items))
    assert row is not None and row["result"]["by"] != "stale"  # type: ignore[index]


async def test_a_live_worker_keeps_its_items_however_long_one_runs(
    database: Database, fleet: MakeRuntime
) -> None:
    """GIVEN a worker with two-second leases renewed every 0.25 s, working one item that takes
    long (until the test lets it go) and holding a second it has claimed and not started
    WHEN a rival worker tries to take the job again and again for more than two leases' time
    THEN the rival gets nothing: both leases are renewed (the running item's and the waiting
    one's); the first worker completes both itself, each run once."""
    job_id = await phased_job(database, {0: ["a-long", "b-next"]})
    runs: Counter[str] = Counter()
    started, finish = asyncio.Event(), asyncio.Event()

    async def holder(claimed: ClaimedItem) -> None:
        runs[claimed.item] += 1
        if claimed.item == "a-long":
            started.set()
            await finish.wait()

    async def rival(claimed: ClaimedItem) -> None:
        runs[claimed.item] += 1

    short_leases = QueueSettings(concurrency=1, time_budget_s=60, lease_s=2, heartbeat_s=0.25)
    holding = asyncio.create_task(
        work_through(fleet(), job_id, holder, short_leases, worker="holder")
    )
    await asyncio.wait_for(started.wait(), timeout=30)
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select max(lease_until) + interval '2 seconds' as past from work_items"
            " where job_id = %s",
            (job_id,),
        )
        first_leases_past = (await cursor.fetchone() or {})["past"]
    rival_runtime = fleet()
    attempts = 0
    while True:  # until the first leases would have run out twice over
        report = await work_through(rival_runtime, job_id, rival, short_leases, worker="rival")
        attempts += 1
        assert report.done == report.failed == report.lost == 0
        rows = await item_rows(database, job_id)
        assert {row["leased_by"] for row in rows.values()} == {"holder"}
        async with database.connection() as conn:
            cursor = await conn.execute("select now() > %s as past", (first_leases_past,))
            if (await cursor.fetchone() or {})["past"]:
                break
        await asyncio.sleep(0.1)  # polling the database's clock, not waiting for a race
    finish.set()
    report = await holding

    assert attempts > 5
    assert runs == Counter({"a-long": 1, "b-next": 1})
    assert (report.done, report.lost, report.finished) == (2, 0, True)


async def test_a_worker_does_not_start_an_item_taken_from_it_while_it_waited(
    database: Database, fleet: MakeRuntime
) -> None:
    """GIVEN a worker (one lane, leases renewed every 0.1 s) busy with a long item and holding
    a second one it has claimed and not started
    WHEN the second item's lease runs out (moved into the past, as if the worker had stalled)
    and a rival worker takes it and completes it
    THEN the first worker's next renewal finds that item no longer its own, and it does not
    start it once its long item ends: the item ran once, by the rival; no completion was
    refused, none counted twice."""
    job_id = await phased_job(database, {0: ["a-long", "b-next"]})
    runs: Counter[str] = Counter()
    started, finish = asyncio.Event(), asyncio.Event()

    async def holder(claimed: ClaimedItem) -> None:
        runs[f"holder:{claimed.item}"] += 1
        if claimed.item == "a-long":
            started.set()
            await finish.wait()

    async def rival(claimed: ClaimedItem) -> None:
        runs[f"rival:{claimed.item}"] += 1

    beating = QueueSettings(concurrency=1, time_budget_s=60, lease_s=5, heartbeat_s=0.1)
    holding = asyncio.create_task(work_through(fleet(), job_id, holder, beating, worker="holder"))
    await asyncio.wait_for(started.wait(), timeout=30)
    assert (await item_rows(database, job_id))["b-next"]["leased_by"] == "holder"
    async with database.connection() as conn:
        await conn.execute(
            "update work_items set lease_until = now() - interval '1 second'"
            " where job_id = %s and item = 'b-next'",
            (job_id,),
        )
    taken = await work_through(fleet(), job_id, rival, beating, worker="rival")
    assert taken.done == 1
    # two renewals of the long item since: the first one's answer was handled before the
    # second was sent
    renewals = [(await item_rows(database, job_id))["a-long"]["lease_until"]]
    while len(set(renewals)) < 3:
        await asyncio.sleep(0.05)  # polling for the holder's next two renewals
        renewals.append((await item_rows(database, job_id))["a-long"]["lease_until"])
    finish.set()
    report = await holding

    assert runs == Counter({"holder:a-long": 1, "rival:b-next": 1})
    assert (report.done, report.lost, report.released) == (1, 0, 0)
    assert report.finished or taken.finished
