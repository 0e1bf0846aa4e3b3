"""The store contract, run on both transports: the direct Postgres connection, and Supabase's
REST API (the real PostgREST on the same embedded database, behind a gateway that checks the
apikey as Supabase's does), with a legacy service-role key and with a new secret key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.access.store import AccessStore
from shared.crypto.tokens import hash_service_token
from shared.db.database import Database
from shared.db.rpc import PostgresRpc, PostgrestRpc, StoreRefused, StoreRpc
from shared.errors import ServiceUnavailable
from shared.health.repository import HealthRepository
from shared.health.service import expected_migration_version
from shared.runtime import Runtime
from shared.usage.store import UsageStore
from shared.users.repository import UserRepository
from tests.db.supabase_stack import SECRET_KEY, SERVICE_ROLE_KEY, SupabaseGateway

SUPABASE_URL = "https://project-ref.supabase.co"
TODAY = datetime.now(UTC)
PERIOD = date(TODAY.year, TODAY.month, 1)


@pytest.fixture(
    params=[
        "postgres",
        pytest.param("supabase", marks=pytest.mark.integration),  # PostgREST, a process
        pytest.param("supabase-secret-key", marks=pytest.mark.integration),
    ]
)
async def store(request: pytest.FixtureRequest, database: Database) -> AsyncIterator[StoreRpc]:
    if request.param == "postgres":
        yield PostgresRpc(database)
        return
    rest: SupabaseGateway = request.getfixturevalue("supabase_rest")
    key = SERVICE_ROLE_KEY if request.param == "supabase" else SECRET_KEY
    rpc = PostgrestRpc(rest.url, key)
    yield rpc
    await rpc.aclose()
    # Every call reached PostgREST as the service role, never as the table owner.
    assert rest.calls and {role for _, role in rest.calls} == {"service_role"}


async def make_user(database: Database, user_id: str, tier: str = "free") -> None:
    async with database.connection() as conn:
        await UserRepository(conn).upsert(user_id, tier=tier, rotation_policy=None, actor="t")


def usage_event(user: str, generation: str, cost: str, **extra: Any) -> dict[str, Any]:
    return {
        "user_id": user,
        "generation_id": generation,
        "model": "openai/gpt-4o",
        "agent_name": "compliance",
        "endpoint": None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": cost,
        "duration_ms": None,
        "occurred_at": TODAY.isoformat(),
        **extra,
    }


async def test_events_are_stored_once_and_unknown_users_reported(
    store: StoreRpc, database: Database
) -> None:
    # GIVEN a free-tier user ($10)
    await make_user(database, "alice")
    usage = UsageStore(store)

    # WHEN a batch arrives twice, with an event for a user nobody created
    batch = [
        usage_event("alice", "g-1", "6.000001"),
        usage_event("alice", "g-2", "2.5"),
        usage_event("nobody", "g-3", "1"),
    ]
    first = await usage.record_events(batch, recorded_by="agents")
    again = await usage.record_events(batch, recorded_by="agents")

    # THEN the first stores, the second finds duplicates, money is exact to the last digit
    assert [r.status for r in first] == ["stored", "stored", "unknown_user"]
    assert [r.status for r in again] == ["duplicate", "duplicate", "unknown_user"]
    assert first[1].spent_usd == Decimal("8.500001")
    assert first[1].budget_usd == Decimal(10)
    assert first[1].crossed == [50, 80]
    assert first[1].period == PERIOD


async def test_a_bad_value_is_refused_with_its_sqlstate_and_nothing_is_written(
    store: StoreRpc, database: Database
) -> None:
    # GIVEN a user
    await make_user(database, "bob")
    usage = UsageStore(store)

    # WHEN a batch holds a cost that is not a number
    with pytest.raises(StoreRefused) as refused:
        await usage.record_events(
            [usage_event("bob", "g-1", "1"), usage_event("bob", "g-2", "lots")],
            recorded_by="agents",
        )

    # THEN the whole call is refused as bad data, and the good event was not kept either
    assert refused.value.sqlstate == "22P02" and refused.value.is_bad_data
    books = await usage.month("bob", PERIOD, as_of=datetime.now(UTC))
    assert books is not None and books.months[0].total.events == 0


async def test_a_month_and_the_history_read_back_what_was_logged(
    store: StoreRpc, database: Database
) -> None:
    # GIVEN a micro-tier user ($100) with spend in two models and two months
    await make_user(database, "carol", tier="micro")
    usage = UsageStore(store)
    last_month = (PERIOD - timedelta(days=1)).replace(day=1)
    await usage.record_events(
        [
            usage_event("carol", "g-1", "0.1"),
            usage_event("carol", "g-2", "0.2", model="anthropic/claude"),
            usage_event("carol", "g-3", "0.000001", agent_name=None),
        ],
        recorded_by="agents",
    )
    async with database.connection() as conn:
        await conn.execute(
            "insert into usage_totals (user_id, period, spent_usd, events)"
            " values ('carol', %s, 3.25, 4)",
            (last_month,),
        )

    # WHEN the current month and the history are read
    month = await usage.month("carol", PERIOD, as_of=datetime.now(UTC))
    history = await usage.history("carol", limit=1, before=None)
    older = await usage.history("carol", limit=5, before=PERIOD)

    # THEN both carry the exact figures, newest first, paged by `before`
    assert month is not None and month.tier == "micro" and month.budget_usd == Decimal(100)
    [book] = month.months
    assert book.total.spent_usd == Decimal("0.300001") and book.total.events == 3
    assert [(r.model, r.agent_name, r.cost_usd) for r in book.breakdown] == [
        ("anthropic/claude", "compliance", Decimal("0.2")),
        ("openai/gpt-4o", "compliance", Decimal("0.1")),
        ("openai/gpt-4o", "", Decimal("0.000001")),
    ]
    assert book.crossed == []
    assert history is not None and [m.total.period for m in history.months] == [PERIOD]
    assert older is not None
    assert [(m.total.period, m.total.spent_usd) for m in older.months] == [
        (last_month, Decimal("3.25"))
    ]


async def test_a_month_carries_the_pace_of_the_seven_days_before_it_across_months(
    store: StoreRpc, database: Database
) -> None:
    # GIVEN spend eight days, six days and one hour before a moment early in a month
    await make_user(database, "erin", tier="standard")
    usage = UsageStore(store)
    as_of = datetime.now(UTC).replace(microsecond=0)
    spends = {"g-old": (8 * 24, "4"), "g-week": (6 * 24, "0.5"), "g-hour": (1, "0.25")}
    await usage.record_events(
        [
            usage_event("erin", gid, cost, occurred_at=(as_of - timedelta(hours=h)).isoformat())
            for gid, (h, cost) in spends.items()
        ],
        recorded_by="agents",
    )

    # WHEN the month is read as of that moment
    books = await usage.month("erin", current_month(as_of), as_of=as_of)

    # THEN the pace counts exactly the last seven days, whichever month they fell in
    assert books is not None and books.last_7_days_usd == Decimal("0.75")


def current_month(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


async def test_an_unknown_user_has_no_books(store: StoreRpc) -> None:
    usage = UsageStore(store)
    assert await usage.month("nobody", PERIOD, as_of=datetime.now(UTC)) is None
    assert await usage.history("nobody", limit=3, before=None) is None


async def test_concurrent_batches_sum_exactly(store: StoreRpc, database: Database) -> None:
    # GIVEN one user
    await make_user(database, "dave", tier="admin")  # unlimited
    usage = UsageStore(store)

    # WHEN 8 writers log 25 events of $0.000001 each at once, some generation ids repeated
    async def writer(n: int) -> None:
        events = [usage_event("dave", f"g-{(n * 25 + i) % 150}", "0.000001") for i in range(25)]
        await usage.record_events(events, recorded_by=f"w{n}")

    await asyncio.gather(*(writer(n) for n in range(8)))

    # THEN each distinct event counts once: 150 of them, $0.000150
    month = await usage.month("dave", PERIOD, as_of=datetime.now(UTC))
    assert month is not None
    assert month.months[0].total.events == 150
    assert month.months[0].total.spent_usd == Decimal("0.000150")


async def test_service_tokens_authenticate_until_revoked(
    store: StoreRpc, runtime: Runtime, database: Database
) -> None:
    # GIVEN an issued token
    issued = await AccessService(runtime).issue_token(
        issued_by="t", name="agents", scopes=[Scope.USAGE_WRITE], expires_at=None
    )
    token_hash = hash_service_token(issued.token, runtime.token_hmac_key())
    access = AccessStore(store)

    # WHEN it is checked, then revoked and checked again
    valid = await access.authenticate(token_hash)
    await AccessService(runtime).revoke_token(issued.record.id, revoked_by="t")
    revoked = await access.authenticate(token_hash)

    # THEN the first finds it (and records its use), the second does not
    assert valid is not None and valid.id == issued.record.id
    assert valid.scopes == ["usage:write"] and valid.last_used_at is not None
    assert revoked is None
    assert await access.authenticate(b"\x00" * 32) is None


async def test_rate_limits_count_in_the_database(store: StoreRpc) -> None:
    access = AccessStore(store)
    decisions = [
        await access.consume_rate_limit("key_write:svc", limit=2, window_s=60) for _ in range(3)
    ]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].hits == 3 and 0 < decisions[2].retry_after_s <= 60


async def test_the_probe_reports_the_server_and_schema(store: StoreRpc) -> None:
    probe = await HealthRepository(store).probe()
    assert probe.server_version.split(".")[0].isdigit()
    assert probe.migration_version == expected_migration_version()  # the newest shipped


async def test_only_store_functions_can_be_called(store: StoreRpc) -> None:
    with pytest.raises(ValueError, match="not a store function"):
        await store.call("record_usage_events; drop table users", {})
    with pytest.raises((StoreRefused, ServiceUnavailable)):
        await store.call("store_does_not_exist", {})
