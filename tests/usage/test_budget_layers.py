"""What blocks a key is visible: a user's usage and their key's metadata carry every budget
layer OpenRouter enforces on the key (read from its GET /key, asked with the key itself), the
layer that refuses requests now, and a short code instead when OpenRouter cannot be read."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import Runtime
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN
from tests.openrouter.conftest import ManualClock

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
LAYER_FIELDS = ("budget_layers", "blocked_by", "budget_layers_error")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()  # 2026-11-26 12:00 UTC


@pytest.fixture
def emulator(clock: ManualClock) -> Emulator:
    """OpenRouter on a clock the test moves (its daily windows)."""
    return Emulator(clock=clock)


async def _set_policy(api: httpx.AsyncClient, tier: str, **policy: object) -> dict[str, Any]:
    response = await api.put(f"/api/admin/tiers/{tier}/policy", headers=ADMIN, json=policy)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _key_of(keys: KeyLifecycleService, user: str, tier: str = "free") -> str:
    issued = await keys.create_key(Owner.user(user), actor="t", tier=tier)
    assert issued.secret is not None
    return issued.secret


async def _usage(api: httpx.AsyncClient, user: str) -> dict[str, Any]:
    response = await api.get(f"/api/usage/{user}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _layers(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Each layer as (source, interval, limit, spent, remaining, resets_at)."""
    return [
        (
            layer["source"],
            layer["interval"],
            Decimal(layer["limit_usd"]),
            Decimal(layer["spent_usd"]),
            Decimal(layer["remaining_usd"]),
            _at(layer["resets_at"]),
        )
        for layer in body["budget_layers"]
    ]


async def _reveals(runtime: Runtime) -> list[object]:
    """The audit's reveals: a key read to ask OpenRouter is no reveal."""
    async with runtime.database().connection() as conn:
        cursor = await conn.execute("select target from audit_log where action = 'key.revealed'")
        return [row["target"] for row in await cursor.fetchall()]


async def test_a_spent_daily_cap_is_the_layer_that_blocks_until_the_next_utc_day(
    api: httpx.AsyncClient,
    keys: KeyLifecycleService,
    emulator: Emulator,
    clock: ManualClock,
    runtime: Runtime,
) -> None:
    """GIVEN the free tier ($10 a month) capped at $1 a UTC day, and a free user who spent $1
    today (2026-11-26)
    WHEN the user's usage and key are read, then read again the next UTC day
    THEN both show the tier's daily layer with nothing left until the next UTC midnight and the
    key's monthly limit with $9 left, the daily layer blocking; the next day nothing blocks.
    The secret was opened for OpenRouter only: not in the answers, not audited as a reveal."""
    policy = await _set_policy(api, "free", daily_cap_usd="1", reason="a dollar a day")
    secret = await _key_of(keys, "capped")
    emulator.charge(secret, Decimal(1))

    today = await _usage(api, "capped")
    key_answer = await api.get("/api/keys/user/capped", headers=ADMIN)
    clock.advance(days=1)
    next_day = await _usage(api, "capped")

    daily = ("tier_policy", "daily", Decimal(1), Decimal(1), Decimal(0))
    monthly = ("key_limit", "monthly", Decimal(10), Decimal(1), Decimal(9))
    assert _layers(today) == [
        (*daily, datetime(2026, 11, 27, tzinfo=UTC)),
        (*monthly, datetime(2026, 12, 1, tzinfo=UTC)),
    ]
    assert today["budget_layers"][0]["guardrail_id"] == policy["guardrail_id"]
    assert today["blocked_by"] == today["budget_layers"][0]
    assert today["budget_layers_error"] is None
    assert key_answer.status_code == 200, key_answer.text
    assert {f: key_answer.json()[f] for f in LAYER_FIELDS} == {f: today[f] for f in LAYER_FIELDS}
    assert _layers(next_day) == [
        (
            "tier_policy",
            "daily",
            Decimal(1),
            Decimal(0),
            Decimal(1),
            datetime(2026, 11, 28, tzinfo=UTC),
        ),
        (*monthly, datetime(2026, 12, 1, tzinfo=UTC)),
    ]
    assert next_day["blocked_by"] is None
    secret_shown = [secret in text for text in (str(today), key_answer.text, str(next_day))]
    assert secret_shown == [False, False, False]
    assert await _reveals(runtime) == []


async def test_openrouter_failing_get_key_leaves_the_layers_null_with_a_code(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    """GIVEN a free user with a key
    WHEN OpenRouter answers its GET /key with 503, then times out, then the key is deleted at
    OpenRouter behind the service's back
    THEN usage and key answers are 200 with budget_layers null and the reason's code, the books
    as they were."""
    await _key_of(keys, "unlucky")
    whole = await _usage(api, "unlucky")

    emulator.inject(Fault("status", method="GET", path="/key", status=503, times=None))
    failing = await _usage(api, "unlucky")
    key_failing = await api.get("/api/keys/user/unlucky", headers=ADMIN)
    emulator.clear_faults()
    emulator.inject(Fault("timeout", method="GET", path="/key", times=None))
    timing_out = await _usage(api, "unlucky")
    emulator.clear_faults()
    current = await keys.current_key(Owner.user("unlucky"))
    assert current.openrouter_hash is not None
    await runtime.openrouter().delete_key(current.openrouter_hash)
    gone = await _usage(api, "unlucky")

    books = ("tier", "period", "spent_usd", "limit_usd", "remaining_usd", "events")
    assert [layer[0] for layer in _layers(whole)] == ["key_limit"]
    assert whole["budget_layers_error"] is None
    outcomes = [
        (body["budget_layers"], body["blocked_by"], body["budget_layers_error"])
        for body in (failing, key_failing.json(), timing_out, gone)
    ]
    assert key_failing.status_code == 200
    assert outcomes == [
        (None, None, "openrouter_unavailable"),
        (None, None, "openrouter_unavailable"),
        (None, None, "openrouter_timeout"),
        (None, None, "key_refused"),
    ]
    assert all({f: b[f] for f in books} == {f: whole[f] for f in books} for b in (failing, gone))


async def test_a_user_without_a_key_has_no_layers_and_costs_no_openrouter_call(
    api: httpx.AsyncClient, emulator: Emulator
) -> None:
    """GIVEN a user with no key
    WHEN their usage is read
    THEN budget_layers is [] and nothing blocks, and OpenRouter was not asked."""
    created = await api.put("/api/users/keyless", headers=ADMIN, json={"tier": "free"})
    assert created.status_code in (200, 201), created.text
    calls = len(emulator.requests)

    body = await _usage(api, "keyless")

    assert {f: body[f] for f in LAYER_FIELDS} == {
        "budget_layers": [],
        "blocked_by": None,
        "budget_layers_error": None,
    }
    assert emulator.requests[calls:] == []


async def test_a_caller_that_only_wants_the_key_can_skip_openrouter(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    """GIVEN a user with a key
    WHEN their key is read with ?budget_layers=false
    THEN OpenRouter is not asked and the answer says the layers were not requested."""
    await _key_of(keys, "hurried")
    calls = len(emulator.requests)

    answer = await api.get("/api/keys/user/hurried?budget_layers=false", headers=ADMIN)

    assert answer.status_code == 200, answer.text
    assert (answer.json()["budget_layers"], answer.json()["budget_layers_error"]) == (
        None,
        "not_requested",
    )
    assert emulator.requests[calls:] == []


async def test_the_layers_are_documented_in_both_answers(api: httpx.AsyncClient) -> None:
    """GIVEN the served OpenAPI document
    WHEN the usage and key answers' schemas are read
    THEN both describe budget_layers, blocked_by and budget_layers_error, and a layer's
    fields."""
    document = (await api.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]

    for name in ("CurrentUsage", "CurrentKeyResponse"):
        properties = schemas[name]["properties"]
        assert all(properties[f].get("description") for f in LAYER_FIELDS), name
    layer = schemas["BudgetLayer"]["properties"]
    assert set(layer) >= {"source", "interval", "limit_usd", "spent_usd", "remaining_usd"}
    assert layer["source"]["enum"] == ["key_limit", "tier_policy", "guardrail", "workspace"]
