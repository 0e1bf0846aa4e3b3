"""Workers that die: a real worker process killed with SIGKILL mid-item gives its item back
within its short lease (not its whole budget plus a margin), and the try it cut off keeps the
later phases closed until the item is tried again; an item that kills every worker taking it
is parked once its attempts are spent, not retried forever."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import REPOSITORY_ROOT
from shared.db.database import Database
from shared.jobs.queue import QueueSettings, work_through
from shared.jobs.repository import ClaimedItem, WorkQueueRepository
from tests.jobs.conftest import MakeRuntime, item_rows, phased_job

LEASE_S = 3
HEARTBEAT_S = 0.5


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    """The process's output until a line holds `needle`; fails at the deadline."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while (remaining := deadline - time.monotonic()) > 0 and selector.select(remaining):
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r} in {timeout_s} s; output:\n{''.join(seen)}")


@pytest.fixture
def doomed_worker(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes started by the test; any still alive at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


async def _db_now_past(database: Database, moment: object) -> bool:
    async with database.connection() as conn:
        cursor = await conn.execute("select now() > %s as past", (moment,))
        return bool((await cursor.fetchone() or {})["past"])


@pytest.mark.integration  # a real worker process
async def test_a_worker_process_killed_mid_item_gives_it_back_within_the_short_lease(
    database: Database,
    database_dsn: str,
    fleet: MakeRuntime,
    tmp_path: Path,
    doomed_worker: list[subprocess.Popen[str]],
) -> None:
    """GIVEN a job of a phase-0 item and a phase-1 item, and a worker process (3 s leases,
    renewed every 0.5 s) that started the phase-0 item and hangs on it, having renewed its
    lease at least once
    WHEN the process is killed with SIGKILL
    THEN while its lease lasts no other worker gets anything (the item is leased, the phase-1
    item waits for it); the lease runs out at most 3 s after the kill, not after the old
    budget-plus-margin of 75 s; then a surviving worker tries the item again (its second
    attempt) and only once that try ended starts the phase-1 item: a try cut off by a crash is
    no try; each item was completed once."""
    job_id = await phased_job(database, {0: ["a-doomed"], 1: ["b-after"]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "OPENROUTER_"))}
    env.update(APP_ENV="test", PYTHONUNBUFFERED="1")
    arguments = [database_dsn, str(job_id), str(LEASE_S), str(HEARTBEAT_S), str(tmp_path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.jobs.doomed_worker", *arguments],
        cwd=REPOSITORY_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    doomed_worker.append(process)
    await asyncio.to_thread(_wait_for_line, process, "started a-doomed", 60)
    first_lease = (await item_rows(database, job_id))["a-doomed"]["lease_until"]
    while (await item_rows(database, job_id))["a-doomed"]["lease_until"] == first_lease:
        assert process.poll() is None
        await asyncio.sleep(0.1)  # polling for the first renewal (due in 0.5 s)

    # WHEN
    process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(process.wait, 30)
    assert process.returncode == -signal.SIGKILL
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select lease_until, leased_by, now() as killed_at,"
            " extract(epoch from lease_until - now()) as left_s"
            " from work_items where job_id = %s and item = 'a-doomed'",
            (job_id,),
        )
        dead = await cursor.fetchone()
    assert dead is not None and dead["leased_by"] == "doomed"
    assert 0 < float(dead["left_s"]) <= LEASE_S  # type: ignore[arg-type]

    # THEN nothing for anyone while the lease lasts
    log: list[tuple[str, str, int]] = []

    async def survivor(claimed: ClaimedItem) -> None:
        log.append(("start", claimed.item, claimed.attempts))
        for _ in range(20):
            await asyncio.sleep(0)  # the other lane could start an item meanwhile
        log.append(("end", claimed.item, claimed.attempts))

    queue = QueueSettings(concurrency=2, time_budget_s=30, lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S)
    too_early = await work_through(fleet(), job_id, survivor, queue, worker="survivor")
    assert (too_early.done, log) == (0, [])
    assert not await _db_now_past(database, dead["lease_until"])

    # and once it ran out (waiting for the database's clock to pass it, polling)
    while not await _db_now_past(database, dead["lease_until"]):
        await asyncio.sleep(0.1)
    report = await work_through(fleet(), job_id, survivor, queue, worker="survivor")
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select extract(epoch from now() - %s::timestamptz) as since_kill_s",
            (dead["killed_at"],),
        )
        since_kill_s = float((await cursor.fetchone() or {})["since_kill_s"])  # type: ignore[arg-type]
    assert since_kill_s < LEASE_S + 2  # claimable within the short lease, not 75 s
    assert log == [
        ("start", "a-doomed", 2),
        ("end", "a-doomed", 2),
        ("start", "b-after", 1),
        ("end", "b-after", 1),
    ]
    assert (report.done, report.lost, report.finished) == (2, 0, True)


async def test_an_item_whose_workers_keep_dying_is_parked_when_its_attempts_are_spent(
    database: Database, fleet: MakeRuntime
) -> None:
    """GIVEN a job of two attempts at most: a poison item in phase 0 that kills every worker
    taking it (a worker claims it, dies, its lease runs out: moved into the past, no waiting),
    and an item in phase 1
    WHEN it has killed two workers, and a third worker comes
    THEN after the first death the next claim got the poison item again and not the phase-1
    item (a cut-off try keeps later phases closed); after the second, the poison item is
    parked as worker_lost instead of run a third time; the phase-1 item then runs; the job is
    finished."""
    job_id = await phased_job(database, {0: ["poison"], 1: ["later"]}, max_attempts=2)

    async def die_on_it(worker: str) -> list[str]:
        async with database.connection() as conn:
            queue = WorkQueueRepository(conn)
            claimed = await queue.claim(job_id, worker=worker, limit=10, lease_s=60)
            await conn.execute(
                "update work_items set lease_until = now() - interval '1 second'"
                " where job_id = %s and leased_by = %s",
                (job_id, worker),
            )
        return [c.item for c in claimed]

    assert await die_on_it("first") == ["poison"]
    assert await die_on_it("second") == ["poison"]  # not "later": the try was cut off
    runs: list[str] = []

    async def handler(claimed: ClaimedItem) -> None:
        runs.append(claimed.item)

    report = await work_through(fleet(), job_id, handler, QueueSettings(concurrency=2))
    rows = await item_rows(database, job_id)
    assert runs == ["later"]
    assert (rows["poison"]["status"], rows["poison"]["attempts"]) == ("parked", 2)
    assert str(rows["poison"]["last_error"]).startswith("worker_lost")
    assert (report.done, report.finished) == (1, True)
