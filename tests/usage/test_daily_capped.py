"""GET /api/admin/usage/daily-capped: the users their tier's daily cap holds today (UTC), by
what they reported since midnight, highest spend first, read from an index of the day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import httpx
import pytest

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.db.database import Connection
from shared.keys.service import KeyLifecycleService, Owner
from shared.runtime import Runtime
from shared.usage.tier_policies import TierPolicyRepository
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
ROUTE = "/api/admin/usage/daily-capped"


@pytest.fixture
async def writer(runtime: Runtime) -> dict[str, str]:
    issued = await AccessService(runtime).issue_token(
        issued_by="test", name="agents", scopes=[Scope.USAGE_WRITE], expires_at=None
    )
    return {"Authorization": f"Bearer {issued.token}"}


def _midnight(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


async def _log(
    api: httpx.AsyncClient, writer: dict[str, str], *events: tuple[str, str, str, datetime]
) -> None:
    batch = {
        "events": [
            {
                "user_id": user,
                "generation_id": generation,
                "model": "openai/gpt-4o-mini",
                "cost_usd": cost,
                "occurred_at": occurred_at.isoformat(),
            }
            for user, generation, cost, occurred_at in events
        ]
    }
    response = await api.post("/api/usage/log", headers=writer, json=batch)
    assert response.status_code == 200, response.text
    assert [e["status"] for e in response.json()["events"]] == ["stored"] * len(events)


async def _cap(api: httpx.AsyncClient, tier: str, cap: str) -> None:
    response = await api.put(
        f"/api/admin/tiers/{tier}/policy", headers=ADMIN, json={"daily_cap_usd": cap}
    )
    assert response.status_code == 200, response.text


async def test_only_the_users_at_or_over_their_tiers_daily_cap_today_are_listed(
    api: httpx.AsyncClient, keys: KeyLifecycleService, writer: dict[str, str]
) -> None:
    """GIVEN a free tier daily cap of $1 (set via PUT /api/admin/tiers/free/policy), free users
    who reported $1.50 today (in two events), $0.50 today and $2 yesterday, and a standard
    user (no daily cap) who reported $5 today
    WHEN an admin asks for the users held by their daily cap
    THEN only the first is listed, with today's spend, the cap and the next UTC midnight."""
    await _cap(api, "free", "1")
    for user, tier in (("over", "free"), ("under", "free"), ("past", "free"), ("big", "standard")):
        await keys.create_key(Owner.user(user), actor="t", tier=tier)
    now = datetime.now(UTC)
    midnight = _midnight(now)
    await _log(
        api,
        writer,
        ("over", "o-1", "1", now),
        ("over", "o-2", "0.5", now),
        ("under", "u-1", "0.5", now),
        ("past", "p-1", "2", midnight - timedelta(hours=1)),
        ("big", "b-1", "5", now),
    )

    response = await api.get(ROUTE, headers=ADMIN)

    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    assert [
        (r["user_id"], r["tier"], Decimal(r["spent_today_usd"]), Decimal(r["daily_cap_usd"]))
        for r in rows
    ] == [("over", "free", Decimal("1.5"), Decimal(1))]
    assert datetime.fromisoformat(rows[0]["resets_at"]) == midnight + timedelta(days=1)


async def test_the_list_is_highest_spend_first_bounded_and_counts_a_user_at_the_cap(
    api: httpx.AsyncClient, keys: KeyLifecycleService, writer: dict[str, str]
) -> None:
    """GIVEN free capped at $1 and micro at $3, and users who reported $1 (exactly the cap),
    $2.50 and $4 today
    WHEN an admin asks with ?limit=2, and with limits out of bounds
    THEN the two highest spenders come first ($4 micro, $2.50 free); the bounds are refused."""
    await _cap(api, "free", "1")
    await _cap(api, "micro", "3")
    for user, tier in (("exact", "free"), ("mid", "free"), ("top", "micro")):
        await keys.create_key(Owner.user(user), actor="t", tier=tier)
    now = datetime.now(UTC)
    await _log(
        api,
        writer,
        ("exact", "e-1", "1", now),
        ("mid", "m-1", "2.5", now),
        ("top", "t-1", "4", now),
    )

    everyone = (await api.get(ROUTE, headers=ADMIN)).json()["data"]
    first_two = (await api.get(ROUTE, headers=ADMIN, params={"limit": 2})).json()["data"]
    refused = [
        (await api.get(ROUTE, headers=ADMIN, params={"limit": n})).status_code for n in (0, 1001)
    ]

    assert [r["user_id"] for r in everyone] == ["top", "mid", "exact"]
    assert [(r["user_id"], r["tier"]) for r in first_two] == [("top", "micro"), ("mid", "free")]
    assert refused == [422, 422]


class _Explained:
    """A connection that answers each statement's plan instead of its rows."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, query: str, params: Any = None) -> Any:
        return await self._conn.execute(f"explain (format json) {query}".encode(), params)


async def test_the_days_spend_is_read_from_the_index_of_when_events_occurred(
    runtime: Runtime,
) -> None:
    """GIVEN 60,000 events over 30 days of 500 users, their statistics gathered
    WHEN the daily-capped query is planned for today
    THEN it reads usage_events through usage_events_by_occurred_at, never a scan of the table."""
    now = datetime.now(UTC)
    async with runtime.database().connection() as conn:
        await conn.execute("update subscription_tiers set daily_cap_usd = 1 where tier = 'free'")
        await conn.execute(
            "insert into users (user_id, tier, updated_by)"
            " select 'u' || i, 'free', 'test' from generate_series(1, 500) i"
        )
        await conn.execute(
            "insert into usage_events (user_id, generation_id, period, model, prompt_tokens,"
            " completion_tokens, cost_usd, occurred_at, recorded_by)"
            " select 'u' || (mod(i, 500) + 1), 'g-' || i,"
            "  date_trunc('month', (%(now)s - mod(i, 30) * interval '1 day') at time zone 'UTC'),"
            "  'm', 0, 0, 0.01, %(now)s - mod(i, 30) * interval '1 day', 'test'"
            " from generate_series(1, 60000) i",
            {"now": now},
        )
        await conn.execute("analyze usage_events")
        midnight = _midnight(now)
        repository = TierPolicyRepository(cast(Connection, _Explained(conn)))
        [row] = await repository.daily_capped(
            since=midnight, until=midnight + timedelta(days=1), limit=100
        )

    nodes = _nodes(row["QUERY PLAN"][0]["Plan"])
    assert any(n.get("Index Name") == "usage_events_by_occurred_at" for n in nodes), nodes
    scans = [n["Node Type"] for n in nodes if n.get("Relation Name") == "usage_events"]
    assert scans and "Seq Scan" not in scans, nodes


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's nodes, each without its children."""
    children = plan.get("Plans", [])
    return [{k: v for k, v in plan.items() if k != "Plans"}] + [
        node for child in children for node in _nodes(child)
    ]
