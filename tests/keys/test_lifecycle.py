"""Create, rotate, revoke against the emulator and the real schema."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from shared.db.database import Database
from shared.errors import Conflict
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN
from tests.keys.conftest import check_invariants

ACTOR = "service:test"


async def test_create_gives_a_monthly_key_with_the_tier_budget(
    keys: KeyLifecycleService, emulator: Emulator, database: Database, runtime: Runtime
) -> None:
    issued = await keys.create_key(Owner.user("alice"), actor=ACTOR, tier="standard")

    assert issued.secret is not None and issued.secret.startswith("sk-or-v1-")
    assert issued.key.state == "current"
    [remote] = emulator.user_keys()
    assert remote.secret == issued.secret
    assert remote.limit == Decimal(50)
    assert remote.limit_reset == "monthly"
    assert remote.name == f"ora-{issued.key.id}"
    report = await check_invariants(database, emulator, runtime)
    assert report.current_keys_per_owner == {"user:alice": 1}
    assert report.orphans_at_openrouter == []
    assert report.secrets_matching


async def test_unlimited_tiers_get_no_limit(keys: KeyLifecycleService, emulator: Emulator) -> None:
    await keys.create_key(Owner.user("root"), actor=ACTOR, tier="admin")
    assert emulator.user_keys()[0].limit is None


async def test_a_second_create_is_refused(keys: KeyLifecycleService) -> None:
    await keys.create_key(Owner.user("bob"), actor=ACTOR)
    with pytest.raises(Conflict) as refused:
        await keys.create_key(Owner.user("bob"), actor=ACTOR)
    assert refused.value.code == "key_exists"


async def test_rotation_with_no_grace_hands_over_only_what_is_left(
    keys: KeyLifecycleService, emulator: Emulator, database: Database, runtime: Runtime
) -> None:
    # GIVEN a free user ($10) who spent $7 with their key this month
    first = await keys.create_key(Owner.user("carol"), actor=ACTOR, tier="free")
    assert first.secret is not None
    emulator.charge(first.secret, Decimal(7))

    # WHEN the key is rotated with no grace period
    second = await keys.rotate_key(Owner.user("carol"), actor=ACTOR, grace_seconds=0)

    # THEN the new key's limit is $3, the old key is gone, and the pair cannot spend more
    assert second.secret is not None and second.secret != first.secret
    assert second.key.limit_usd == Decimal(3)
    [remote] = emulator.user_keys()
    assert remote.secret == second.secret and remote.limit == Decimal(3)
    emulator.charge(second.secret, Decimal(3))
    from shared.openrouter.emulator import EmulatorApiError

    with pytest.raises(EmulatorApiError):
        emulator.charge(second.secret, Decimal("0.01"))
    with pytest.raises(EmulatorApiError):
        emulator.charge(first.secret, Decimal("0.01"))
    report = await check_invariants(database, emulator, runtime)
    assert report.current_keys_per_owner == {"user:carol": 1}
    assert report.orphans_at_openrouter == []


async def test_during_grace_old_and_new_together_stay_within_the_budget(
    keys: KeyLifecycleService, emulator: Emulator, database: Database
) -> None:
    first = await keys.create_key(Owner.user("dave"), actor=ACTOR, tier="free")
    assert first.secret is not None
    emulator.charge(first.secret, Decimal(7))

    second = await keys.rotate_key(Owner.user("dave"), actor=ACTOR, grace_seconds=300)

    # During grace both keys work, and what they can still spend adds up to $3.
    assert second.secret is not None
    old_remote = next(k for k in emulator.user_keys() if k.secret == first.secret)
    new_remote = next(k for k in emulator.user_keys() if k.secret == second.secret)
    left_old = emulator.key_json(old_remote)["limit_remaining"]
    left_new = emulator.key_json(new_remote)["limit_remaining"]
    assert Decimal(str(left_old)) + Decimal(str(left_new)) == Decimal(3)
    assert second.operation.status == "completed"  # the grace period is the old key's own
    assert second.previous_key is not None and second.previous_key.state == "previous"

    # WHEN the old key spends 0.1 during grace and the grace ends
    emulator.charge(first.secret, Decimal("0.1"))
    async with database.connection() as conn:
        await conn.execute("update api_keys set grace_until = now() where id = %s", (first.key.id,))
    assert await keys.advance_due_operations() == 1

    # THEN the old key is gone and the new key's limit is what is left: 10 - 7.1
    [remote] = emulator.user_keys()
    assert remote.secret == second.secret
    assert remote.limit == Decimal("2.9")
    assert (await keys.get_key(first.key.id)).state == "revoked"


async def test_revoke_is_harmless_to_repeat(keys: KeyLifecycleService, emulator: Emulator) -> None:
    issued = await keys.create_key(Owner.user("erin"), actor=ACTOR)
    first = await keys.revoke_key(issued.key.id, actor=ACTOR, reason="left", request_id=None)
    second = await keys.revoke_key(issued.key.id, actor=ACTOR, reason="left", request_id=None)
    assert first.state == second.state == "revoked"
    assert first.revoked_at == second.revoked_at
    assert emulator.user_keys() == []


async def test_the_current_key_shows_the_key_in_its_grace_period(
    api: httpx.AsyncClient, keys: KeyLifecycleService
) -> None:
    first = await keys.create_key(Owner.user("graceful"), actor=ACTOR)
    await keys.rotate_key(Owner.user("graceful"), actor=ACTOR, grace_seconds=300)
    admin = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
    body = (await api.get("/api/keys/user/graceful", headers=admin)).json()
    assert body["rotation"] is None  # nothing in progress: the rotation is done
    [previous] = body["in_grace"]
    assert previous["id"] == str(first.key.id) and previous["state"] == "previous"
    assert previous["grace_until"] is not None
