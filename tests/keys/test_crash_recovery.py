"""Crash injection at every step of a rotation: a later invocation always completes it, with
exactly one current key, no orphan at OpenRouter, and a secret that opens to OpenRouter's key."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from shared.db.database import Database
from shared.errors import BadGateway, Conflict, ServiceUnavailable
from shared.keys.service import IssuedKey, KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import Runtime
from tests.keys.conftest import check_invariants

ACTOR = "service:test"
ROTATION_STEPS = [
    "before_freeze_old",
    "after_freeze_old",
    "after_plan",
    "before_openrouter_create",
    "after_openrouter_create",
    "after_record_secret",
    "after_activate",
    "before_settle",
    "after_final_usage",
]


class SimulatedCrash(Exception):
    pass


def crash_at(step: str):  # type: ignore[no-untyped-def]
    def checkpoint(name: str) -> None:
        if name == step:
            raise SimulatedCrash(step)

    return checkpoint


async def _operation_statuses(database: Database) -> list[str]:
    async with database.connection() as conn:
        cursor = await conn.execute("select status from key_operations order by created_at")
        return [str(row["status"]) for row in await cursor.fetchall()]


@pytest.mark.parametrize("step", ROTATION_STEPS)
async def test_a_rotation_crashed_at_any_step_is_completed_by_a_later_invocation(
    step: str, runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    # GIVEN a user who has spent $4 of a $10 key
    owner = Owner.user("crash-victim")
    healthy = KeyLifecycleService(runtime)
    first = await healthy.create_key(owner, actor=ACTOR, tier="free")
    assert first.secret is not None
    emulator.charge(first.secret, Decimal(4))

    # WHEN a rotation crashes at this step
    with pytest.raises(SimulatedCrash):
        await KeyLifecycleService(runtime, checkpoint=crash_at(step)).rotate_key(
            owner, actor=ACTOR, grace_seconds=0
        )

    # THEN the next job run completes it
    await healthy.advance_due_operations()
    assert await _operation_statuses(database) == ["completed", "completed"]
    report = await check_invariants(database, emulator, runtime)
    assert report.current_keys_per_owner == {owner.key: 1}
    assert report.orphans_at_openrouter == []
    assert report.live_missing_at_openrouter == []
    assert report.secrets_matching
    # and the budget carried over: the user can still spend exactly $6
    current = await healthy.current_key(owner)
    assert current.limit_usd == Decimal(6)
    [remote] = emulator.user_keys()
    assert remote.limit == Decimal(6)


async def test_an_operation_of_a_killed_invocation_resumes_once_its_lease_expires(
    runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    owner = Owner.user("killed")
    healthy = KeyLifecycleService(runtime)
    await healthy.create_key(owner, actor=ACTOR)
    with pytest.raises(SimulatedCrash):
        await KeyLifecycleService(
            runtime, checkpoint=crash_at("after_openrouter_create")
        ).rotate_key(owner, actor=ACTOR, grace_seconds=0)
    # A killed process never releases its lease: simulate that, then let the lease lapse.
    async with database.connection() as conn:
        await conn.execute("update owner_leases set lease_until = now() + interval '1 hour'")
    assert await healthy.advance_due_operations() == 0
    async with database.connection() as conn:
        await conn.execute("update owner_leases set lease_until = now() - interval '1 second'")
    assert await healthy.advance_due_operations() == 1
    report = await check_invariants(database, emulator, runtime)
    assert report.orphans_at_openrouter == []
    assert report.secrets_matching


async def test_a_lost_create_response_leaves_no_duplicate(
    runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    # GIVEN OpenRouter makes the key but its answer never reaches us
    service = KeyLifecycleService(runtime)
    emulator.inject(Fault("lost_response", method="POST", path="/keys"))
    with pytest.raises(ServiceUnavailable) as unknown:
        await service.create_key(Owner.user("lost"), actor=ACTOR)
    assert unknown.value.code == "openrouter_outcome_unknown"
    assert len(emulator.user_keys()) == 1  # the key exists, its secret is gone

    # WHEN the saga is resumed
    await service.advance_due_operations()

    # THEN the unreadable key was replaced, not duplicated
    report = await check_invariants(database, emulator, runtime)
    assert len(emulator.user_keys()) == 1
    assert report.current_keys_per_owner == {"user:lost": 1}
    assert report.orphans_at_openrouter == []
    assert report.secrets_matching


async def test_a_refused_create_fails_cleanly_and_keeps_the_old_key_working(
    runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    owner = Owner.user("refused")
    service = KeyLifecycleService(runtime)
    first = await service.create_key(owner, actor=ACTOR, tier="free")
    emulator.inject(Fault("status", method="POST", path="/keys", status=400))
    with pytest.raises(BadGateway) as failed:
        await service.rotate_key(owner, actor=ACTOR, grace_seconds=0)
    assert failed.value.code == "openrouter_refused"
    # the old key is still current, with its full limit back
    assert (await service.current_key(owner)).id == first.key.id
    [remote] = emulator.user_keys()
    assert remote.limit == Decimal(10)
    assert await _operation_statuses(database) == ["completed", "failed"]


async def test_fifty_concurrent_rotations_converge_to_one_current_key(
    runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    owner = Owner.user("popular")
    service = KeyLifecycleService(runtime)
    await service.create_key(owner, actor=ACTOR)

    results = await asyncio.gather(
        *(service.rotate_key(owner, actor=ACTOR, grace_seconds=0) for _ in range(50)),
        return_exceptions=True,
    )

    rotated = [r for r in results if isinstance(r, IssuedKey)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(rotated) >= 1
    assert len(rotated) + len(refused) == 50
    report = await check_invariants(database, emulator, runtime)
    assert report.current_keys_per_owner == {owner.key: 1}
    assert report.orphans_at_openrouter == []
    assert len(emulator.user_keys()) == 1
    assert report.secrets_matching


async def test_fifty_concurrent_creates_with_one_idempotency_key_create_one_key(
    runtime: Runtime, emulator: Emulator, database: Database
) -> None:
    owner = Owner.user("retrier")
    service = KeyLifecycleService(runtime)

    results = await asyncio.gather(
        *(service.create_key(owner, actor=ACTOR, idempotency_key="req-1") for _ in range(50)),
        return_exceptions=True,
    )

    issued = [r for r in results if isinstance(r, IssuedKey)]
    in_progress = [r for r in results if isinstance(r, Conflict)]
    assert len(issued) + len(in_progress) == 50
    assert len({i.key.id for i in issued}) == 1
    assert len(emulator.user_keys()) == 1
    # a retry after the fact returns the same key and secret, and creates nothing
    again = await service.create_key(owner, actor=ACTOR, idempotency_key="req-1")
    assert again.key.id == issued[0].key.id
    assert again.secret == emulator.user_keys()[0].secret
    assert len(emulator.user_keys()) == 1
    # another caller with the same Idempotency-Key is a different request
    with pytest.raises(Conflict):
        await service.create_key(owner, actor="service:other", idempotency_key="req-1")
