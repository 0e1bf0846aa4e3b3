"""Emergency rotation: every key in scope stops working first, then is replaced."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from shared.db.database import Database
from shared.emergency.service import EmergencyRotationService, EmergencyScope
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, EmulatorApiError, Fault
from shared.runtime import Runtime
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN
from tests.keys.conftest import check_invariants

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}


async def _users(keys: KeyLifecycleService, tiers: dict[str, str]) -> dict[str, str]:
    secrets = {}
    for user, tier in tiers.items():
        issued = await keys.create_key(Owner.user(user), actor="t", tier=tier)
        assert issued.secret is not None
        secrets[user] = issued.secret
    return secrets


async def test_dry_run_lists_the_keys_in_scope_and_changes_nothing(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    await _users(keys, {"a": "free", "b": "beta", "c": "beta"})
    before = [(k.hash, k.disabled) for k in emulator.user_keys()]

    response = await api.post(
        "/api/admin/emergency-rotate",
        headers=ADMIN,
        json={"reason": "beta leak", "tiers": ["beta"], "dry_run": True},
    )

    assert response.status_code == 200
    assert response.json()["total"] == 2
    assert {k["user_id"] for k in response.json()["keys"]} == {"b", "c"}
    assert [(k.hash, k.disabled) for k in emulator.user_keys()] == before


async def test_an_emergency_rotation_replaces_every_key_in_scope(
    api: httpx.AsyncClient,
    keys: KeyLifecycleService,
    emulator: Emulator,
    database: Database,
    runtime: Runtime,
) -> None:
    secrets = await _users(keys, {"a": "free", "b": "beta", "c": "beta"})
    emulator.charge(secrets["b"], Decimal(400))

    started = await api.post(
        "/api/admin/emergency-rotate",
        headers=ADMIN,
        json={"reason": "credentials leaked in a log", "tiers": ["beta"]},
    )

    assert started.status_code == 202
    body = started.json()
    assert (body["status"], body["total"], body["replaced"], body["failed"]) == (
        "completed",
        2,
        2,
        0,
    )
    assert all(item["revoke_ms"] is not None for item in body["items"])
    # the leaked keys are dead, their replacements work and keep the budget: 1000 - 400
    for user in ("b", "c"):
        with pytest.raises(EmulatorApiError):
            emulator.charge(secrets[user], Decimal("0.01"))
    assert (await keys.current_key(Owner.user("b"))).limit_usd == Decimal(600)
    # the free user's key was not touched
    emulator.charge(secrets["a"], Decimal("0.01"))
    status = await api.get(f"/api/admin/emergency-rotate/{body['id']}", headers=ADMIN)
    assert status.json()["replaced"] == 2
    report = await check_invariants(database, emulator, runtime)
    assert report.orphans_at_openrouter == []
    assert report.secrets_matching


async def test_keys_are_blocked_even_when_no_replacement_can_be_made(
    runtime: Runtime, keys: KeyLifecycleService, emulator: Emulator, database: Database
) -> None:
    # GIVEN OpenRouter accepts no new key at the moment
    secrets = await _users(keys, {"x": "free", "y": "free"})
    emulator.inject(Fault("status", method="POST", path="/keys", status=503, times=None))
    service = EmergencyRotationService(runtime)

    # WHEN an emergency rotation of everything runs
    status = await service.start(
        EmergencyScope(everything=True),
        reason="compromise",
        actor="admin",
        request_id=None,
        time_budget_s=5,
    )

    # THEN every key was blocked first, and waits for its replacement
    assert status.count("disabled") == 2
    for secret in secrets.values():
        with pytest.raises(EmulatorApiError):
            emulator.charge(secret, Decimal("0.01"))

    # WHEN OpenRouter recovers and the job runs after the items' backoff, THEN the
    # replacements are issued
    emulator.clear_faults()
    async with database.connection() as conn:
        await conn.execute(
            "update work_items set available_at = now() where job_id = %s and status = 'pending'",
            (status.rotation.job_id,),
        )
    assert await service.process_running(time_budget_s=5) == 1
    done = await service.status(status.rotation.id)
    assert (done.rotation.status, done.count("replaced")) == ("completed", 2)


async def test_a_request_without_a_reason_or_a_scope_is_refused(api: httpx.AsyncClient) -> None:
    no_reason = await api.post("/api/admin/emergency-rotate", headers=ADMIN, json={"all": True})
    no_scope = await api.post("/api/admin/emergency-rotate", headers=ADMIN, json={"reason": "leak"})
    both = await api.post(
        "/api/admin/emergency-rotate",
        headers=ADMIN,
        json={"reason": "leak", "all": True, "tiers": ["free"]},
    )
    assert no_reason.status_code == no_scope.status_code == both.status_code == 422


async def test_an_emergency_supersedes_an_operation_left_half_done(
    runtime: Runtime, keys: KeyLifecycleService, emulator: Emulator, database: Database
) -> None:
    # GIVEN a rotation that died after its new key was made at OpenRouter, before it was
    # recorded: an operation open, a key live at OpenRouter whose secret no one has
    from tests.keys.test_crash_recovery import SimulatedCrash, crash_at

    owner = Owner.user("half-done")
    first = await keys.create_key(owner, actor="t", tier="standard")
    with pytest.raises(SimulatedCrash):
        await KeyLifecycleService(
            runtime, checkpoint=crash_at("after_openrouter_create")
        ).rotate_key(owner, actor="t", grace_seconds=300)
    assert len(emulator.user_keys()) == 2

    # WHEN an emergency rotation covers the user
    status = await EmergencyRotationService(runtime).start(
        EmergencyScope(user_ids=("half-done",)),
        reason="leaked",
        actor="admin",
        request_id=None,
        time_budget_s=5,
    )

    # THEN it completes; the operation is ended as superseded, audited; the only key enabled
    # at OpenRouter is the emergency's replacement
    assert status.rotation.status == "completed"
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select status, error_code from key_operations where kind = 'rotate'"
            " order by created_at"
        )
        operations = [(r["status"], r["error_code"]) for r in await cursor.fetchall()]
        cursor = await conn.execute(
            "select count(*) as n from audit_log where action = 'key.rotate.superseded'"
        )
        superseded = (await cursor.fetchone() or {})["n"]
    assert operations[0] == ("failed", "superseded_by_emergency")
    assert superseded == 1
    current = await keys.current_key(owner)
    enabled = [k for k in emulator.user_keys() if not k.disabled]
    assert [k.hash for k in enabled] == [current.openrouter_hash]
    assert current.id != first.key.id
    report = await check_invariants(database, emulator, runtime)
    assert report.orphans_at_openrouter == [] and report.secrets_matching


async def test_an_emergency_ends_failed_with_each_keys_reason_when_it_cannot_finish(
    runtime: Runtime, keys: KeyLifecycleService, emulator: Emulator, database: Database
) -> None:
    # GIVEN OpenRouter refuses every new key, and the item has used up its attempts
    secrets = await _users(keys, {"stuck": "free"})
    emulator.inject(Fault("status", method="POST", path="/keys", status=503, times=None))
    service = EmergencyRotationService(runtime)
    status = await service.start(
        EmergencyScope(user_ids=("stuck",)),
        reason="compromise",
        actor="admin",
        request_id=None,
        time_budget_s=2,
    )
    assert status.rotation.status == "running"
    async with database.connection() as conn:
        await conn.execute(
            "update work_items set attempts = 11, available_at = now()"
            " where job_id = %s and status = 'pending'",
            (status.rotation.job_id,),
        )

    # WHEN the job runs once more
    await service.process_running(time_budget_s=2)

    # THEN the rotation has ended: failed, the key's reason recorded, the key still blocked
    done = await service.status(status.rotation.id)
    assert done.rotation.status == "failed"
    [item] = done.items
    assert item.status == "failed" and item.error is not None
    with pytest.raises(EmulatorApiError):
        emulator.charge(secrets["stuck"], Decimal("0.01"))


async def test_an_emergency_on_a_tier_that_does_not_exist_is_refused(
    api: httpx.AsyncClient,
) -> None:
    """GIVEN no tier named "gold" WHEN an admin asks for an emergency rotation of it THEN it is
    refused (422 unknown_tier) instead of answering a rotation of no key, which an admin would
    read as their tier done."""
    response = await api.post(
        "/api/admin/emergency-rotate",
        headers=ADMIN,
        json={"tiers": ["gold"], "reason": "leaked on a forum"},
    )
    assert (response.status_code, response.json()["error"]["code"]) == (422, "unknown_tier")
