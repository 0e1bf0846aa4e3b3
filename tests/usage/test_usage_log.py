"""Logging usage: exact, idempotent, per-event outcomes, nothing half-written."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.config import Settings
from shared.db.database import Database, PoolLimits
from shared.db.rpc import PostgresRpc
from shared.runtime import Runtime
from shared.usage.service import UsageService
from shared.usage.store import UsageStore
from shared.users.repository import UserRepository

Headers = dict[str, str]


@pytest.fixture
async def writer(runtime: Runtime) -> Headers:
    issued = await AccessService(runtime).issue_token(
        issued_by="test",
        name="agents",
        scopes=[Scope.USAGE_WRITE, Scope.USAGE_READ],
        expires_at=None,
    )
    return {"Authorization": f"Bearer {issued.token}"}


@pytest.fixture
def make_users(database: Database) -> Callable[..., Awaitable[None]]:
    async def make(*user_ids: str, tier: str = "free") -> None:
        async with database.connection() as conn:
            for user_id in user_ids:
                await UserRepository(conn).upsert(
                    user_id, tier=tier, rotation_policy=None, actor="test"
                )

    return make


def event(user: str, generation: str, cost: str, **extra: object) -> dict[str, object]:
    return {
        "user_id": user,
        "generation_id": generation,
        "model": "openai/gpt-4o",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": cost,
        **extra,
    }


async def test_a_hundred_sub_cent_events_add_up_exactly(
    api: httpx.AsyncClient, writer: Headers, make_users: Callable[..., Awaitable[None]]
) -> None:
    await make_users("penny")
    batch = {"events": [event("penny", f"g-{i}", "0.004") for i in range(100)]}

    response = await api.post("/api/usage/log", headers=writer, json=batch)

    assert response.status_code == 200
    assert response.json()["stored"] == 100
    [summary] = response.json()["users"]
    assert Decimal(summary["spent_usd"]) == Decimal("0.400")  # not $0.00, as the original had it
    assert Decimal(summary["remaining_usd"]) == Decimal("9.6")
    assert Decimal(summary["percent_used"]) == Decimal("4.00")


async def test_a_batch_reports_each_event_and_keeps_the_good_ones(
    api: httpx.AsyncClient,
    writer: Headers,
    make_users: Callable[..., Awaitable[None]],
    database: Database,
) -> None:
    await make_users("ada")
    now = datetime.now(UTC)
    batch = {
        "events": [
            event("ada", "ok-1", "1.25"),
            event("ada", "ok-1", "1.25"),  # same generation: a duplicate
            event("ada", "neg", "-1"),  # negative
            event("ada", "nan", "NaN"),  # not a number
            event("ada", "inf", "Infinity"),  # infinite
            event("ada", "huge", "1e9"),  # absurd
            event("nobody", "who", "1"),  # unknown user
            event("ada", "bad id!", "1"),  # malformed id
            event("ada", "future", "1", occurred_at=(now + timedelta(hours=1)).isoformat()),
            event("ada", "ancient", "1", occurred_at=(now - timedelta(days=90)).isoformat()),
            {"user_id": "ada", "generation_id": "no-cost", "model": "m"},
            event("ada", "ok-2", "0.000001", agent_name="compliance"),
        ]
    }

    response = await api.post("/api/usage/log", headers=writer, json=batch)

    body = response.json()
    statuses = [(e["generation_id"], e["status"]) for e in body["events"]]
    assert statuses == [
        ("ok-1", "stored"),
        ("ok-1", "duplicate"),
        ("neg", "rejected"),
        ("nan", "rejected"),
        ("inf", "rejected"),
        ("huge", "rejected"),
        ("who", "rejected"),
        ("bad id!", "rejected"),
        ("future", "rejected"),
        ("ancient", "rejected"),
        ("no-cost", "rejected"),
        ("ok-2", "stored"),
    ]
    assert (body["stored"], body["duplicates"], body["rejected"]) == (2, 1, 9)
    assert "unknown_user" in body["events"][6]["reason"]
    async with database.connection() as conn:
        cursor = await conn.execute("select count(*) as n, sum(cost_usd) as s from usage_events")
        row = await cursor.fetchone()
    assert row == {"n": 2, "s": Decimal("1.250001")}


async def test_single_events_and_their_refusals(
    api: httpx.AsyncClient, writer: Headers, make_users: Callable[..., Awaitable[None]]
) -> None:
    await make_users("solo")
    stored = await api.post("/api/usage/log", headers=writer, json=event("solo", "s-1", "0.5"))
    again = await api.post("/api/usage/log", headers=writer, json=event("solo", "s-1", "0.5"))
    refused = await api.post("/api/usage/log", headers=writer, json=event("solo", "s-2", "-3"))
    too_many = await api.post(
        "/api/usage/log",
        headers=writer,
        json={"events": [event("solo", f"x-{i}", "0") for i in range(1001)]},
    )
    assert (stored.json()["stored"], again.json()["duplicates"]) == (1, 1)
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "usage_event_rejected")
    assert too_many.status_code == 422


async def test_reading_the_month_with_breakdowns_thresholds_and_forecast(
    api: httpx.AsyncClient, writer: Headers, make_users: Callable[..., Awaitable[None]]
) -> None:
    await make_users("reader", tier="free")
    await api.post(
        "/api/usage/log",
        headers=writer,
        json={
            "events": [
                event("reader", "r-1", "3", agent_name="a", model="m1"),
                event("reader", "r-2", "2.5", agent_name="b", model="m2"),
                event("reader", "r-3", "1", agent_name="a", model="m2"),
            ]
        },
    )

    current = (await api.get("/api/usage/reader", headers=writer)).json()

    assert Decimal(current["spent_usd"]) == Decimal("6.5")
    assert Decimal(current["limit_usd"]) == 10
    assert current["thresholds_crossed"] == [50]
    assert [(b["name"], Decimal(b["cost_usd"])) for b in current["by_agent"]] == [
        ("a", Decimal(4)),
        ("b", Decimal("2.5")),
    ]
    assert [(b["name"], Decimal(b["cost_usd"])) for b in current["by_model"]] == [
        ("m2", Decimal("3.5")),
        ("m1", Decimal(3)),
    ]
    assert Decimal(current["forecast_month_end_usd"]) >= Decimal("6.5")
    monthly = (await api.get("/api/usage/reader/monthly", headers=writer)).json()
    assert [Decimal(m["spent_usd"]) for m in monthly["data"]] == [Decimal("6.5")]


async def test_sixty_four_concurrent_writers_keep_exact_books(
    settings: Settings,
    runtime: Runtime,
    database_dsn: str,
    make_users: Callable[..., Awaitable[None]],
) -> None:
    # GIVEN 20 users and 10,000 events, one in ten a repeat of an earlier generation
    users = [f"u{i}" for i in range(20)]
    await make_users(*users, tier="admin")  # unlimited: no thresholds in the way
    rng = random.Random(7)
    unique = [
        event(rng.choice(users), f"gen-{i}", str(Decimal(rng.randint(1, 9_999_999)) / 10**7))
        for i in range(9_000)
    ]
    events = unique + [rng.choice(unique) for _ in range(1_000)]
    rng.shuffle(events)
    expected: dict[str, Decimal] = {}
    for e in unique:
        expected[str(e["user_id"])] = expected.get(str(e["user_id"]), Decimal(0)) + Decimal(
            str(e["cost_usd"])
        )

    # WHEN 64 writers, on separate pools as on separate function instances, log them at once
    instances = [
        UsageService(Runtime(settings, database=Database(database_dsn, PoolLimits(max_size=2))))
        for _ in range(8)
    ]
    chunks = [events[i : i + 25] for i in range(0, len(events), 25)]
    queue: asyncio.Queue[list[dict[str, object]]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)
    outcomes: list[str] = []

    async def writer_task(n: int) -> None:
        service = instances[n % len(instances)]
        while not queue.empty():
            chunk = queue.get_nowait()
            result = await service.log(chunk, actor="load")
            outcomes.extend(o.status for o in result.outcomes)

    await asyncio.gather(*(writer_task(n) for n in range(64)))

    # THEN every unique event counted once, to the last digit
    assert outcomes.count("stored") == 9_000
    assert outcomes.count("duplicate") == 1_000
    async with Database(database_dsn).connection() as conn:
        cursor = await conn.execute("select user_id, spent_usd, events from usage_totals")
        totals = {row["user_id"]: row["spent_usd"] for row in await cursor.fetchall()}
        cursor = await conn.execute("select sum(cost_usd) as s from usage_breakdown")
        breakdown_sum = (await cursor.fetchone() or {})["s"]
    assert totals == expected
    assert breakdown_sum == sum(expected.values())


async def test_thresholds_fire_once_each_under_concurrent_logging(
    runtime: Runtime, make_users: Callable[..., Awaitable[None]], database: Database
) -> None:
    await make_users("spender", tier="free")
    service = UsageService(runtime)
    events = [event("spender", f"t-{i}", "0.25") for i in range(60)]  # $15 of a $10 budget

    results = await asyncio.gather(*(service.log([e], actor="x") for e in events))

    crossed = [t for r in results for u in r.users for t in u.thresholds_crossed]
    assert sorted(crossed) == [50, 80, 100]
    async with database.connection() as conn:
        cursor = await conn.execute("select count(*) as n from alert_outbox")
        assert (await cursor.fetchone() or {})["n"] == 3


async def test_an_event_the_database_refuses_is_named_and_the_rest_kept(
    runtime: Runtime, make_users: Callable[..., Awaitable[None]], database: Database
) -> None:
    # GIVEN a batch in which one event got past validation but not past the database
    await make_users("guarded")
    now = datetime.now(UTC).isoformat()
    payloads: list[dict[str, Any]] = [
        {
            **event("guarded", f"db-{i}", "1"),
            "occurred_at": now,
            "agent_name": None,
            "endpoint": None,
            "duration_ms": None,
        }
        for i in range(3)
    ]
    payloads[1]["cost_usd"] = "not a number"

    results = await UsageService._record(UsageStore(PostgresRpc(database)), payloads, "test")

    assert [r.status for r in results] == ["stored", "rejected", "stored"]
    assert results[1].reason == "22P02"  # invalid text representation
    async with database.connection() as conn:
        cursor = await conn.execute("select count(*) as n from usage_events")
        assert (await cursor.fetchone() or {})["n"] == 2


@pytest.mark.parametrize(
    ("tier", "spends", "expected"),
    [
        # $8.20 in the first half hour of the month on $10: the limit, not 31 days of it
        ("free", [(timedelta(minutes=-30), "8.2")], "10"),
        # nothing yet this month, $7 over last month's last week: that week's pace ahead
        ("standard", [(timedelta(days=-d, hours=-2), "1") for d in range(7)], None),
    ],
)
async def test_the_forecast_on_the_first_of_the_month_is_one_a_user_would_trust(
    runtime: Runtime,
    make_users: Callable[..., Awaitable[None]],
    tier: str,
    spends: list[tuple[timedelta, str]],
    expected: str | None,
) -> None:
    # GIVEN a moment an hour into a month, and the user's spend before it
    now = datetime.now(UTC).replace(day=1, hour=1, minute=0, second=0, microsecond=0)
    usage = UsageService(runtime, clock=lambda: now)
    await make_users("early", tier=tier)
    result = await usage.log(
        [
            event("early", f"e-{n}", cost, occurred_at=(now + offset).isoformat())
            for n, (offset, cost) in enumerate(spends)
        ],
        actor="t",
    )
    assert result.count("stored") == len(spends)

    # WHEN the month is read then
    forecast = (await usage.current("early")).forecast_month_end_usd

    # THEN the forecast is capped by the budget, or is last week's $1 a day for the days left
    next_month = (now.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0)
    days_left = Decimal((next_month - now).total_seconds()) / 86_400
    assert forecast == (Decimal(expected) if expected else days_left.quantize(Decimal("0.000001")))
