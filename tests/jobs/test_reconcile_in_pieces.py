"""A reconcile larger than one invocation: worked by many invocations with tiny budgets, two at
a time, each doing a page or two, the listing longer than the pages the job began with."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from shared.db.database import Database
from shared.jobs.queue import QueueSettings, work_through
from shared.keys import reconcile
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.client import PAGE_SIZE
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from tests.jobs.conftest import MakeRuntime
from tests.keys.conftest import check_invariants

KEYS = 250
LOST = 7
OLD_ORPHANS = 30
YOUNG_ORPHANS = 3
NOT_OURS = 300  # someone else's keys in the account: they fill pages, nothing else


async def test_a_reconcile_worked_in_small_pieces_by_many_invocations_completes(
    runtime: Runtime,
    keys: KeyLifecycleService,
    emulator: Emulator,
    database: Database,
    fleet: MakeRuntime,
) -> None:
    """GIVEN 250 owners with a key each, 7 of which OpenRouter lost (deleted behind our back),
    30 old orphans and 3 young ones under our prefix, and 300 keys of someone else: 576 keys
    listed, more than the 5 pages the job starts with for 250 known keys (so the last of them
    comes back full and must enqueue the next)
    WHEN invocations with a budget of 50 ms (a few items each: OpenRouter answers in 10 ms),
    two at a time, work the reconcile job until it is done
    THEN it took many invocations, none doing a third of it; every page was read (the one
    enqueued on the way too); exactly the 30 old orphans were deleted, the young ones and the
    foreign keys left alone; the 7 lost keys were written off and each owner given one new
    key; every owner has exactly one current key; the database and OpenRouter agree."""
    owners = [Owner.user(f"owner-{n:03d}") for n in range(KEYS)]
    for batch in range(0, KEYS, 10):
        await asyncio.gather(*(keys.create_key(o, actor="t") for o in owners[batch : batch + 10]))
    lost = {o.key: await keys.current_key(o) for o in owners[::37][:LOST]}
    for key in lost.values():
        await runtime.openrouter().delete_key(key.openrouter_hash or "")
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    old_orphans = set()
    for _ in range(OLD_ORPHANS):
        orphan = emulator.add_key(name=f"ora-{uuid.uuid4()}")
        orphan.created_at = long_ago
        old_orphans.add(orphan.hash)
    young = {emulator.add_key(name=f"ora-{uuid.uuid4()}").hash for _ in range(YOUNG_ORPHANS)}
    foreign = set()
    for n in range(NOT_OURS):
        other = emulator.add_key(name=f"someone-else-{n}")
        other.created_at = long_ago
        foreign.add(other.hash)
    listed = len(emulator.user_keys())
    assert listed == KEYS - LOST + OLD_ORPHANS + YOUNG_ORPHANS + NOT_OURS

    # WHEN (each OpenRouter call taking 10 ms, as a real one takes longer)
    emulator.latency_s = 0.01
    job = await reconcile.start(runtime, actor="admin")
    tiny = QueueSettings(concurrency=2, time_budget_s=0.05)
    invocations = worked = most = 0
    finished = False
    while not finished:
        assert invocations < 400, "the reconcile never finished"
        pair = [fleet(), fleet()]
        reports = await asyncio.gather(
            *(work_through(r, job.id, reconcile.handler(r, job), tiny) for r in pair)
        )
        invocations += len(reports)
        worked += sum(1 for r in reports if r.done)
        most = max(most, *(r.done for r in reports))
        assert all(r.failed == 0 for r in reports), [r.errors for r in reports]
        finished = any(r.finished for r in reports)
        for r in pair:
            await r.openrouter().aclose()
            await r.database().close()

    # THEN
    report = await reconcile.report_of(runtime, job)
    items = len(report.deleted_at_openrouter) + len(lost) + 7  # + 6 pages and the conclusion
    assert worked >= 5 and most <= items // 3, f"{worked} invocations, one did {most} of {items}"
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select item from work_items where job_id = %s and starts_with(item, 'page/')"
            " and status = 'done' order by item",
            (job.id,),
        )
        pages = [str(row["item"]) for row in await cursor.fetchall()]
    assert pages == [f"page/{n * PAGE_SIZE:09d}" for n in range(len(pages))]
    assert len(pages) * PAGE_SIZE > listed  # the enqueued pages, and the ones found on the way
    assert sorted(report.deleted_at_openrouter) == sorted(old_orphans)
    assert report.too_young_to_judge == YOUNG_ORPHANS
    assert sorted(report.revoked_missing) == sorted(k.id for k in lost.values())
    assert len(report.reprovisioned) == LOST and report.failed == report.skipped == []
    for owner_key, key in lost.items():
        replacement = await keys.current_key(Owner.parse(owner_key))
        assert replacement.id != key.id and replacement.id in report.reprovisioned
    invariants = await check_invariants(database, emulator, runtime)
    assert invariants.current_keys_per_owner == {o.key: 1 for o in owners}
    assert invariants.live_missing_at_openrouter == []
    assert invariants.orphans_at_openrouter == sorted(young | foreign)
    assert invariants.secrets_matching
