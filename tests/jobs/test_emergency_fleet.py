"""An emergency rotation worked by several invocations at once, on the one work queue: every
key in scope is blocked before any is replaced, and each owner ends with one new key."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from shared.db.database import Database
from shared.emergency.service import EmergencyRotationService, EmergencyScope
from shared.jobs.queue import work_through
from shared.jobs.repository import ClaimedItem, WorkQueueRepository
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, EmulatorApiError
from shared.runtime import Runtime
from tests.jobs.conftest import MakeRuntime
from tests.keys.conftest import check_invariants

OWNERS = 36
IN_GRACE = 6  # owners rotated just before: their previous key still works, and is in scope


async def test_three_workers_block_every_key_before_replacing_any(
    runtime: Runtime,
    keys: KeyLifecycleService,
    emulator: Emulator,
    database: Database,
    fleet: MakeRuntime,
) -> None:
    """GIVEN 36 owners with a key each, 6 of them just rotated (their previous key, in its
    grace period, still works): 42 keys that can spend; OpenRouter answers a little late
    WHEN an emergency rotation of everything starts, and three invocations, four keys at once
    each, work its job at the same time (as the work lanes do: its handler, on the queue)
    THEN every key's revoke item ended before any owner's replace item started; at
    OpenRouter each of the 42 keys was disabled (by its own phase-0 item, timed) before the
    first replacement key was created; the work was shared; the rotation
    completed; each owner has exactly one current key, new, that works; no old key is
    enabled at OpenRouter, and none of the old secrets spends."""
    owners = [Owner.user(f"user-{n:02d}") for n in range(OWNERS)]
    for batch in range(0, OWNERS, 6):
        await asyncio.gather(*(keys.create_key(o, actor="t") for o in owners[batch : batch + 6]))
    for owner in owners[:IN_GRACE]:
        await keys.rotate_key(owner, actor="t", grace_seconds=3600)
    in_scope = await EmergencyRotationService(runtime).keys_in_scope(
        EmergencyScope(everything=True)
    )
    old = {k.openrouter_hash: k for k in in_scope if k.openrouter_hash is not None}
    assert len(old) == len(in_scope) == OWNERS + IN_GRACE
    old_secrets = {h: k.secret for h, k in ((k.hash, k) for k in emulator.user_keys())}
    old_current = {o.key: (await keys.current_key(o)).id for o in owners}
    emulator.latency_s = 0.002  # calls overlap: the invocations interleave

    # WHEN: the request only creates the job (no budget), three invocations work it
    status = await EmergencyRotationService(runtime).start(
        EmergencyScope(everything=True),
        reason="leaked management key",
        actor="admin",
        request_id=None,
        time_budget_s=0,
    )
    assert status.rotation.status == "running" and status.count("pending") == len(old)
    first_request = len(emulator.requests)
    assert status.rotation.job_id is not None
    async with database.connection() as conn:
        job = await WorkQueueRepository(conn).get_job(status.rotation.job_id)
    assert job is not None
    log: list[tuple[str, str]] = []  # (start|end, item), in the order they happened

    async def invocation() -> None:
        """What a work lane does with an emergency's job, its items' starts and ends noted."""
        invoked = fleet(emergency_concurrency=4)
        service = EmergencyRotationService(invoked)
        handle = service.handler(job)

        async def noted(claimed: ClaimedItem) -> None:
            log.append(("start", claimed.item))
            try:
                await handle(claimed)
            finally:
                log.append(("end", claimed.item))

        await work_through(invoked, job.id, noted, service.queue_settings(time_budget_s=60))

    await asyncio.gather(*(invocation() for _ in range(3)))

    # THEN every revoke item ended before the first replace item started
    revoked = [
        n for n, (kind, item) in enumerate(log) if kind == "end" and item.startswith("revoke:")
    ]
    replacing = [
        n for n, (kind, item) in enumerate(log) if kind == "start" and item.startswith("replace:")
    ]
    assert len(revoked) == len(old) and len(replacing) == OWNERS
    assert max(revoked) < min(replacing), log

    # and at OpenRouter, every key's disable came before the first replacement was created
    requests = emulator.requests[first_request:]
    first_create = requests.index(("POST", "/api/v1/keys"))
    disabled_at = {
        h: next(n for n, r in enumerate(requests) if r == ("PATCH", f"/api/v1/keys/{h}"))
        for h in old
    }
    assert max(disabled_at.values()) < first_create
    done = await EmergencyRotationService(runtime).status(status.rotation.id)
    assert done.rotation.status == "completed"
    assert {item.status for item in done.items} == {"replaced"}
    assert all(item.revoke_ms is not None for item in done.items)  # blocked by phase 0 each
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select count(distinct leased_by) as n from work_items where job_id = %s",
            (status.rotation.job_id,),
        )
        workers = (await cursor.fetchone() or {})["n"]
    assert workers == 3, "the work was not shared by the three invocations"

    # each owner: one current key, new; no old key enabled, no old secret spends
    report = await check_invariants(database, emulator, runtime)
    assert report.current_keys_per_owner == {o.key: 1 for o in owners}
    assert report.live_missing_at_openrouter == [] and report.secrets_matching
    for owner in owners:
        current = await keys.current_key(owner)
        assert current.id != old_current[owner.key] and current.openrouter_hash not in old
    at_openrouter = {k.hash: k for k in emulator.user_keys()}
    assert [h for h in old if h in at_openrouter and not at_openrouter[h].disabled] == []
    for key_hash in old:
        with pytest.raises(EmulatorApiError):
            emulator.charge(old_secrets[key_hash], Decimal("0.01"))
