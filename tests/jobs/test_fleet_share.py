"""The fleet's share of OpenRouter (openrouter_fleet_share, schema/migrations/0017): one
allowance for every invocation, learned from 429s (additive increase, multiplicative decrease),
divided among the workers alive. Called as the service calls it, through the repository."""

from __future__ import annotations

import asyncio
import itertools

from shared.db.database import Database
from shared.jobs.repository import FleetShare, WorkQueueRepository

MAX = 10


async def report(
    database: Database,
    worker: str,
    *,
    max_allowance: int = MAX,
    lease_s: int = 30,
    successes: int = 0,
    throttled: bool = False,
    retry_after_s: float = 0.0,
    leave: bool = False,
) -> FleetShare:
    async with database.connection() as conn:
        return await WorkQueueRepository(conn).fleet_share(
            worker,
            max_allowance=max_allowance,
            lease_s=lease_s,
            successes=successes,
            throttled=throttled,
            retry_after_s=retry_after_s,
            leave=leave,
        )


async def test_the_allowance_is_divided_among_the_workers_alive_at_least_one_each(
    database: Database,
) -> None:
    """GIVEN a fleet allowance of 10 calls at once
    WHEN three workers join at once (concurrent statements on one row), then each asks again;
    then nine more join
    THEN every worker counts once: three workers get 3 each (10 // 3); twelve get 1 each
    (10 // 12 is 0: never less than one call); the allowance itself is unchanged."""
    joined = await asyncio.gather(*(report(database, f"w{n}") for n in range(3)))
    assert sorted(share.workers for share in joined) == [1, 2, 3]  # each saw those before it

    again = [await report(database, f"w{n}") for n in range(3)]
    assert [(s.share, s.allowance, s.workers) for s in again] == [(3, MAX, 3)] * 3

    for n in range(3, 12):
        await report(database, f"w{n}")
    crowded = await report(database, "w0")
    assert (crowded.share, crowded.allowance, crowded.workers) == (1, MAX, 12)


def cut_multiplicatively(before: int, after: int) -> bool:
    """A 429's cut: by a fraction of the allowance (at least a quarter, at most a half), never
    below one call; not by one call at a time."""
    return after >= 1 and (before // 2 <= after <= before * 3 // 4 or after == 1)


async def test_a_429_cuts_the_allowance_once_per_pause_and_everyone_waits_it_out(
    database: Database,
) -> None:
    """GIVEN two workers sharing an allowance
    WHEN one reports a 429 with Retry-After 7.5 s, then the other the same burst's 429 with
    2 s, then one asking for 20 s
    THEN the first cuts the allowance by a fraction (multiplicative decrease) and the others,
    seen while the fleet waits out that pause, cut nothing more (one burst seen by N workers
    is one cut, not N); every worker is told to wait out the longest Retry-After still
    running; each worker's share follows the smaller allowance."""
    await report(database, "a")
    await report(database, "b")

    first = await report(database, "a", throttled=True, retry_after_s=7.5)
    assert cut_multiplicatively(MAX, first.allowance), first
    assert (first.share, first.workers) == (first.allowance // 2, 2)
    assert 6.5 < first.resume_in_s <= 7.5

    second = await report(database, "b", throttled=True, retry_after_s=2)
    assert second.allowance == first.allowance, second  # the same burst: no second cut
    assert 6.5 < second.resume_in_s <= 7.5  # the earlier, longer pause still holds
    longer = await report(database, "a", throttled=True, retry_after_s=20)
    assert longer.allowance == first.allowance and 19 < longer.resume_in_s <= 20


async def test_429s_in_pauses_of_their_own_cut_the_allowance_down_to_one_and_never_below(
    database: Database,
) -> None:
    """GIVEN a worker WHEN it reports 429s whose pauses have ended (Retry-After 0) THEN each
    cuts the allowance by a fraction, down to one call and never below."""
    allowances = [(await report(database, "solo")).allowance]
    for _ in range(12):
        allowances.append(
            (await report(database, "solo", throttled=True, retry_after_s=0)).allowance
        )
    assert all(cut_multiplicatively(a, b) for a, b in itertools.pairwise(allowances))
    assert allowances[-3:] == [1, 1, 1]


async def test_a_run_of_successes_as_long_as_the_allowance_adds_one_up_to_the_maximum(
    database: Database,
) -> None:
    """GIVEN an allowance of 16 at most, brought down to some A by a 429
    WHEN successes are reported, in pieces and at once
    THEN the allowance grows by one only once the successes since its last change reach it
    (A - 1 successes: still A; one more: A + 1), a long run earns one step, not several, and
    it never passes the maximum however many successes follow."""
    cap = 16
    await report(database, "solo", max_allowance=cap)
    start = (await report(database, "solo", max_allowance=cap, throttled=True)).allowance
    assert 1 < start < cap - 2

    async def succeed(successes: int) -> int:
        share = await report(database, "solo", max_allowance=cap, successes=successes)
        assert share.share == share.allowance and share.resume_in_s == 0  # alone, no pause
        return share.allowance

    assert await succeed(start - 1) == start
    assert await succeed(1) == start + 1
    assert await succeed(1000) == start + 2  # one step for a long run
    assert await succeed(start + 1) == start + 2  # a run one short of the allowance
    assert await succeed(1) == start + 3
    assert [await succeed(1000) for _ in range(cap)][-3:] == [cap] * 3


async def test_a_worker_whose_lease_ran_out_stops_counting_and_one_that_leaves_is_gone(
    database: Database,
) -> None:
    """GIVEN three workers of an allowance of 10, one of which joined with a lease that runs
    out at once (it died right after)
    WHEN the others report, and then one of them leaves the fleet
    THEN the dead worker no longer counts (two workers, 5 each); after the leave, the one left
    has the whole allowance; the dead one counts again only if it reports again."""
    await report(database, "alive-1")
    await report(database, "alive-2")
    dying = await report(database, "dead", lease_s=0)
    assert dying.workers == 3  # counted while its lease lasted

    alive = await report(database, "alive-1")
    assert (alive.workers, alive.share) == (2, 5)

    left = await report(database, "alive-2", leave=True)
    assert left.workers == 1
    alone = await report(database, "alive-1")
    assert (alone.workers, alone.share) == (1, MAX)
    async with database.connection() as conn:
        cursor = await conn.execute("select worker from openrouter_fleet_workers order by worker")
        assert [row["worker"] for row in await cursor.fetchall()] == ["alive-1"]

    back = await report(database, "dead")
    assert (back.workers, back.share) == (2, 5)
