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
    repeated = await api.post(
        "/api/admin/reset-usage",
        headers=ADMIN,
        json={"user_id": "resetme", "reason": "support ticket 42"},
    )
    assert Decimal(repeated.json()["users"][0]["amount_usd"]) == 0  # safe to repeat
    emulator.charge(issued.secret, Decimal(10))
    with pytest.raises(EmulatorApiError):
        emulator.charge(issued.secret, Decimal("0.01"))
    usage = (await api.get("/api/usage/resetme", headers=ADMIN)).json()
    assert Decimal(usage["spent_usd"]) == 0
    assert Decimal(usage["events_usd"]) == 7
    assert Decimal(usage["adjustments_usd"]) == -7
    # a later reset gives back what OpenRouter counted since (the $10), reported or not
    again = await api.post(
        "/api/admin/reset-usage",
        headers=ADMIN,
        json={"user_id": "resetme", "reason": "support ticket 43"},
    )
    assert Decimal(again.json()["users"][0]["amount_usd"]) == -10


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


async def _thresholds(runtime: Runtime, user: str) -> list[int]:
    async with runtime.database().connection() as conn:
        cursor = await conn.execute(
            "select threshold from usage_threshold_crossings where user_id = %s order by threshold",
            (user,),
        )
        return [int(row["threshold"]) for row in await cursor.fetchall()]  # type: ignore[call-overload]


async def test_a_lower_tier_amount_reaches_every_key_of_the_tier_and_alerts(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    """GIVEN three standard users ($50), one of whom spent $30, and a free user
    WHEN an admin lowers the standard tier to $20 and the work lanes run
    THEN every standard key's limit at OpenRouter is $20 (the free key untouched), the spender
    can spend nothing more, and the 50/80/100 % thresholds the change put behind the spend
    are crossed with their alerts."""
    secrets = {}
    for user, tier in [("s1", "standard"), ("s2", "standard"), ("s3", "standard"), ("f1", "free")]:
        issued = await keys.create_key(Owner.user(user), actor="t", tier=tier)
        assert issued.secret is not None
        secrets[user] = issued.secret
    await _spend(emulator, runtime, secrets["s1"], "s1", "30", "s1-a")
    assert await _thresholds(runtime, "s1") == [50]

    edited = await api.put(
        "/api/admin/tiers/standard", headers=ADMIN, json={"monthly_budget_usd": "20"}
    )
    assert edited.status_code == 200
    assert await _thresholds(runtime, "s1") == [50, 80, 100]
    from shared.jobs.worker import work

    while (lane := await work(runtime, lane=0, stagger=False)).done or lane.failed:
        async with runtime.database().connection() as conn:
            errors = await (await conn.execute("select last_error from work_items")).fetchall()
        assert not lane.failed, errors

    hashes = {user: (await keys.current_key(Owner.user(user))) for user in secrets}
    limits = {k.hash: k.limit for k in emulator.user_keys()}
    by_user = {user: limits[key.openrouter_hash or ""] for user, key in hashes.items()}
    assert by_user == {"s1": Decimal(20), "s2": Decimal(20), "s3": Decimal(20), "f1": Decimal(10)}
    with pytest.raises(EmulatorApiError):
        emulator.charge(secrets["s1"], Decimal("0.01"))
    async with runtime.database().connection() as conn:
        cursor = await conn.execute(
            "select count(*) as n from alert_outbox where payload ->> 'user_id' = 's1'"
        )
        row = await cursor.fetchone()
    assert row is not None and row["n"] == 3


async def test_a_downgrade_below_the_spend_alerts_at_once(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    """GIVEN a standard user who spent $9 (no threshold of $50 crossed)
    WHEN they are moved to free ($10)
    THEN 50 and 80 % are crossed at once, as spending $9 on free would have, and the share
    used is written as amounts are ("90", not "90.00")."""
    issued = await keys.create_key(Owner.user("mover"), actor="t", tier="standard")
    assert issued.secret is not None
    await _spend(emulator, runtime, issued.secret, "mover", "9", "m-a")
    assert await _thresholds(runtime, "mover") == []

    down = await api.put("/api/users/mover/tier", headers=ADMIN, json={"tier": "free"})

    assert down.status_code == 200
    assert await _thresholds(runtime, "mover") == [50, 80]
    usage = (await api.get("/api/usage/mover", headers=ADMIN)).json()
    assert (usage["percent_used"], usage["remaining_usd"]) == ("90", "1")


async def test_a_tier_amount_change_nobody_is_on_leaves_no_job_running(
    runtime: Runtime,
) -> None:
    """GIVEN no key on the beta tier WHEN its amount changes THEN the change's job is done at
    once (it was left running with nothing to do, forever, in every job list)."""
    await BudgetService(runtime).set_tier_budget(
        "beta", Decimal(1200), actor="t", reason="test", request_id=None
    )
    async with runtime.database().connection() as conn:
        cursor = await conn.execute("select status from work_jobs where kind = 'tier_budget'")
        assert [row["status"] for row in await cursor.fetchall()] == ["done"]
