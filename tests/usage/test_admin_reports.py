"""Admin reports: the month system-wide, the key list by cursor, drift against OpenRouter."""

from __future__ import annotations

from decimal import Decimal

import httpx

from shared.jobs.service import measure_usage_drift
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from shared.usage.service import UsageService
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}


def _event(user: str, generation: str, cost: str, agent: str, model: str) -> dict[str, object]:
    return {
        "user_id": user,
        "generation_id": generation,
        "model": model,
        "cost_usd": cost,
        "agent_name": agent,
    }


async def test_the_month_system_wide(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator
) -> None:
    heavy = await keys.create_key(Owner.user("heavy"), actor="t", tier="free")
    await keys.create_key(Owner.user("light"), actor="t", tier="standard")
    assert heavy.secret is not None
    await UsageService(runtime).log(
        [
            _event("heavy", "h1", "9", "compliance", "m1"),
            _event("heavy", "h2", "2", "compliance", "m2"),
            _event("light", "l1", "1", "marketing", "m1"),
        ],
        actor="platform",
    )
    # OpenRouter's cap stopped heavy at $10 (the ledger has 11); light's $1 never reached it
    emulator.charge(heavy.secret, Decimal(10))
    assert await measure_usage_drift(runtime) == 2

    report = (await api.get("/api/admin/usage", headers=ADMIN)).json()

    assert Decimal(report["spent_usd"]) == 12
    assert [(t["name"], Decimal(t["cost_usd"])) for t in report["by_tier"]] == [
        ("free", Decimal(11)),
        ("standard", Decimal(1)),
    ]
    assert [a["name"] for a in report["by_agent"]] == ["compliance", "marketing"]
    assert [u["user_id"] for u in report["top_users"]] == ["heavy", "light"]
    assert [u["user_id"] for u in report["over_100_percent"]] == ["heavy"]
    assert [u["user_id"] for u in report["over_80_percent"]] == ["heavy"]
    assert sorted((d["user_id"], Decimal(d["drift_usd"])) for d in report["drift"]) == [
        ("heavy", Decimal(-1)),
        ("light", Decimal(-1)),
    ]


async def test_the_key_list_pages_by_cursor_and_filters(
    api: httpx.AsyncClient, keys: KeyLifecycleService
) -> None:
    for i in range(5):
        await keys.create_key(Owner.user(f"k{i}"), actor="t", tier="beta" if i % 2 else "free")
    await keys.rotate_key(Owner.user("k0"), actor="t", grace_seconds=0)

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/api/admin/keys", headers=ADMIN, params=params)).json()
        seen.extend(k["id"] for k in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    beta = (await api.get("/api/admin/keys?tier=beta", headers=ADMIN)).json()["data"]
    revoked = (await api.get("/api/admin/keys?status=revoked", headers=ADMIN)).json()["data"]
    mine = (await api.get("/api/admin/keys?user_id=k0", headers=ADMIN)).json()["data"]
    bad = await api.get("/api/admin/keys?cursor=garbage", headers=ADMIN)

    assert len(seen) == len(set(seen)) == 6
    assert {k["user_id"] for k in beta} == {"k1", "k3"}
    assert [k["user_id"] for k in revoked] == ["k0"]
    assert [k["state"] for k in mine] == ["current", "revoked"]
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_cursor")


async def test_users_over_a_share_are_held_to_their_own_tier(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime
) -> None:
    # GIVEN $9 spent by a free user (90 % of $10), $42.50 by a standard one (85 % of $50) and
    # $12 by a micro one (12 % of $100, though over the smallest budget)
    for user, tier in (("f", "free"), ("s", "standard"), ("m", "micro")):
        await keys.create_key(Owner.user(user), actor="t", tier=tier)
    await UsageService(runtime).log(
        [
            _event("f", "f1", "9", "a", "m1"),
            _event("s", "s1", "42.5", "a", "m1"),
            _event("m", "m1", "12", "a", "m1"),
        ],
        actor="platform",
    )

    report = (await api.get("/api/admin/usage", headers=ADMIN)).json()

    # THEN each is held to their own budget
    assert [u["user_id"] for u in report["over_80_percent"]] == ["s", "f"]
    assert report["over_100_percent"] == []
    assert [u["user_id"] for u in report["top_users"]] == ["s", "m", "f"]
    assert report["users"] == 3 and Decimal(report["spent_usd"]) == Decimal("63.5")


async def test_the_month_counts_users_who_spent_and_audits_amounts_as_responses_write_them(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime
) -> None:
    """GIVEN one user who spent $6.30 and one who spent nothing but whose month was reset
    WHEN the month report and the audit trail are read
    THEN the report counts one user with spend, and the audit writes amounts as every response
    does ("6.3", "10", never "6.300000" or "1E+1")."""
    await keys.create_key(Owner.user("spender"), actor="t", tier="free")
    await keys.create_key(Owner.user("idle"), actor="t", tier="free")
    await UsageService(runtime).log([_event("spender", "s1", "6.30", "a", "m")], actor="platform")
    reset = await api.post(
        "/api/admin/reset-usage", headers=ADMIN, json={"user_id": "idle", "reason": "test"}
    )
    assert reset.status_code == 200, reset.text
    await api.post(
        "/api/admin/reset-usage", headers=ADMIN, json={"user_id": "spender", "reason": "test"}
    )

    report = (await api.get("/api/admin/usage", headers=ADMIN)).json()
    audit = (await api.get("/api/admin/audit?limit=100", headers=ADMIN)).json()["data"]

    assert report["users"] == 1
    amounts = [
        value
        for event in audit
        for name, value in event["details"].items()
        if name.endswith("_usd") and value is not None
    ]
    assert "-6.3" in amounts or "6.3" in amounts, amounts
    trailing_zeros = [v for v in amounts if "." in v and v.endswith("0")]
    assert not trailing_zeros, amounts
    assert all("E" not in value for value in amounts), amounts
