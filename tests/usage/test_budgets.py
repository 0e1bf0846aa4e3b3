"""Resets and tier changes move the ledger and the keys' OpenRouter limits together."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, EmulatorApiError
from shared.runtime import Runtime
from shared.usage.budgets import BudgetService
from shared.usage.service import UsageService
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}


async def _spend(
    emulator: Emulator, runtime: Runtime, secret: str, user: str, amount: str, generation: str
) -> None:
    """Spend at OpenRouter and report it to the ledger, as the platform would."""
    emulator.charge(secret, Decimal(amount))
    result = await UsageService(runtime).log(
        [{"user_id": user, "generation_id": generation, "model": "m", "cost_usd": amount}],
        actor="platform",
    )
    assert result.count("stored") == 1


async def test_a_reset_gives_the_whole_budget_back_at_openrouter_too(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    issued = await keys.create_key(Owner.user("resetme"), actor="t", tier="free")
    assert issued.secret is not None
    await _spend(emulator, runtime, issued.secret, "resetme", "7", "g1")

    response = await api.post(
        "/api/admin/reset-usage",
        headers=ADMIN,
        json={"user_id": "resetme", "reason": "support ticket 42"},
    )

    [outcome] = response.json()["users"]
    assert Decimal(outcome["amount_usd"]) == Decimal(-7)
    assert Decimal(outcome["key_limit_usd"]) == Decimal(17)  # its own $7, plus a fresh $10
    emulator.charge(issued.secret, Decimal(10))
    with pytest.raises(EmulatorApiError):
        emulator.charge(issued.secret, Decimal("0.01"))
    usage = (await api.get("/api/usage/resetme", headers=ADMIN)).json()
    assert Decimal(usage["spent_usd"]) == 0
    assert Decimal(usage["events_usd"]) == 7
    assert Decimal(usage["adjustments_usd"]) == -7
    again = await api.post(
        "/api/admin/reset-usage",
        headers=ADMIN,
        json={"user_id": "resetme", "reason": "support ticket 42"},
    )
    assert Decimal(again.json()["users"][0]["amount_usd"]) == 0


async def test_a_rotation_after_a_reset_keeps_what_the_reset_gave(
    keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    first = await keys.create_key(Owner.user("rr"), actor="t", tier="free")
    assert first.secret is not None
    await _spend(emulator, runtime, first.secret, "rr", "7", "a")
    await BudgetService(runtime).reset(
        user_id="rr",
        tier=None,
        everyone=False,
        reason="goodwill",
        actor="admin",
        request_id=None,
    )
    await _spend(emulator, runtime, first.secret, "rr", "2", "b")

    rotated = await keys.rotate_key(Owner.user("rr"), actor="t", grace_seconds=0)

    # spent 9 at OpenRouter, 7 of it given back: 8 of the $10 budget is left
    assert rotated.key.limit_usd == Decimal(8)


async def test_tier_changes_take_effect_at_once(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    issued = await keys.create_key(Owner.user("climber"), actor="t", tier="free")
    assert issued.secret is not None
    await _spend(emulator, runtime, issued.secret, "climber", "7", "c1")

    up = await api.put("/api/users/climber/tier", headers=ADMIN, json={"tier": "standard"})
    assert (up.json()["previous_tier"], up.json()["tier"]) == ("free", "standard")
    assert Decimal(up.json()["key_limit_usd"]) == 50
    emulator.charge(issued.secret, Decimal(43))  # 50 in all this month
    with pytest.raises(EmulatorApiError):
        emulator.charge(issued.secret, Decimal("0.01"))

    down = await api.put("/api/users/climber/tier", headers=ADMIN, json={"tier": "free"})
    assert Decimal(down.json()["key_limit_usd"]) == 10  # never below zero; the key is spent
    unlimited = await api.put("/api/users/climber/tier", headers=ADMIN, json={"tier": "admin"})
    assert unlimited.json()["key_limit_usd"] is None
    assert emulator.user_keys()[0].limit is None
    same = await api.put("/api/users/climber/tier", headers=ADMIN, json={"tier": "admin"})
    assert same.status_code == 200
    unknown = await api.put("/api/users/climber/tier", headers=ADMIN, json={"tier": "gold"})
    nobody = await api.put("/api/users/nobody/tier", headers=ADMIN, json={"tier": "free"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (422, "unknown_tier")
    assert (nobody.status_code, nobody.json()["error"]["code"]) == (404, "user_not_found")


async def test_admins_edit_tier_amounts_and_unlimited_stays_unlimited(
    api: httpx.AsyncClient,
) -> None:
    edited = await api.put(
        "/api/admin/tiers/micro", headers=ADMIN, json={"monthly_budget_usd": "120.50"}
    )
    tiers = {
        t["tier"]: t["monthly_budget_usd"]
        for t in (await api.get("/api/admin/tiers", headers=ADMIN)).json()["data"]
    }
    assert Decimal(edited.json()["monthly_budget_usd"]) == Decimal("120.50")
    assert Decimal(tiers["micro"]) == Decimal("120.50")
    assert tiers["admin"] is None and tiers["future4200"] is None
