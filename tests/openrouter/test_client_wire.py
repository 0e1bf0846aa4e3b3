"""Exact wire checks with respx: what the client sends, and how leniently it reads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest
import respx
from pydantic import SecretStr

from shared.openrouter.client import OpenRouterClient, parse_retry_after
from shared.openrouter.errors import OpenRouterInvalidResponse, OpenRouterOutcomeUnknown
from tests.conftest import RecordingSleep

BASE = "https://openrouter.test/api/v1"
MANAGEMENT_KEY = "sk-or-v1-" + "a" * 64
SECRET = "sk-or-v1-" + "b" * 64
MINIMAL_KEY = {"hash": "h1", "name": "n", "created_at": "2025-02-19T20:52:27.363244+00:00"}


@pytest.fixture
async def client(recording_sleep: RecordingSleep) -> AsyncIterator[OpenRouterClient]:
    c = OpenRouterClient(
        management_key=SecretStr(MANAGEMENT_KEY),
        base_url=BASE,
        sleep=recording_sleep,
        clock=recording_sleep.clock,
    )
    yield c
    await c.aclose()


@respx.mock
async def test_create_sends_the_documented_body_and_headers(client: OpenRouterClient) -> None:
    route = respx.post(f"{BASE}/keys").respond(201, json={"data": MINIMAL_KEY, "key": SECRET})

    created = await client.create_key(
        name="user-1",
        limit=Decimal("50"),
        limit_reset="monthly",
        include_byok_in_limit=False,
        expires_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        external_user="user-1",
    )

    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {MANAGEMENT_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("openrouter-agent/")
    assert json.loads(request.content) == {
        "name": "user-1",
        "limit": 50.0,
        "limit_reset": "monthly",
        "include_byok_in_limit": False,
        "expires_at": "2030-01-02T03:04:05Z",
        "external": {"user": "user-1"},
    }
    assert created.secret.get_secret_value() == SECRET
    assert created.key.hash == "h1"


@respx.mock
async def test_list_sends_offset_and_flags(client: OpenRouterClient) -> None:
    route = respx.get(f"{BASE}/keys").respond(200, json={"data": []})
    await client.list_keys(offset=200, include_disabled=True, include_expired=True)
    assert dict(route.calls.last.request.url.params) == {
        "offset": "200",
        "include_disabled": "true",
        "include_expired": "true",
    }


@respx.mock
async def test_patch_sends_only_given_fields_and_null_removes_a_limit(
    client: OpenRouterClient,
) -> None:
    route = respx.patch(f"{BASE}/keys/h1").respond(200, json={"data": MINIMAL_KEY})
    await client.update_key("h1", limit=None, disabled=True)
    assert json.loads(route.calls.last.request.content) == {"disabled": True, "limit": None}


@respx.mock
async def test_parsing_ignores_unknown_fields_and_tolerates_missing_optional_ones(
    client: OpenRouterClient,
) -> None:
    key = {**MINIMAL_KEY, "limit": 0.004, "brand_new_field": {"x": 1}, "usage_monthly": 1e-7}
    respx.get(f"{BASE}/keys/h1").respond(200, json={"data": key})

    parsed = await client.get_key("h1")

    assert parsed.limit == Decimal("0.004")  # exact, not 0.004000000000000000083
    assert parsed.usage_monthly == Decimal("1E-7")
    assert parsed.usage == Decimal(0)
    assert parsed.expires_at is None and parsed.last_used_at is None
    assert parsed.created_at == datetime(2025, 2, 19, 20, 52, 27, 363244, tzinfo=UTC)


@respx.mock
async def test_create_reads_the_secret_from_data_when_top_level_is_missing(
    client: OpenRouterClient,
) -> None:
    respx.post(f"{BASE}/keys").respond(201, json={"data": {**MINIMAL_KEY, "key": SECRET}})
    created = await client.create_key(name="n")
    assert created.secret.get_secret_value() == SECRET


@respx.mock
async def test_a_create_answer_without_a_secret_is_an_unknown_outcome(
    client: OpenRouterClient,
) -> None:
    respx.post(f"{BASE}/keys").respond(201, json={"data": MINIMAL_KEY})
    with pytest.raises(OpenRouterOutcomeUnknown):
        await client.create_key(name="n")


@respx.mock
async def test_a_read_without_a_hash_is_an_invalid_response(client: OpenRouterClient) -> None:
    respx.get(f"{BASE}/keys/h1").respond(200, json={"data": {"name": "no hash"}})
    with pytest.raises(OpenRouterInvalidResponse):
        await client.get_key("h1")


@respx.mock
async def test_retry_after_ms_and_http_dates(
    client: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    route = respx.get(f"{BASE}/credits")
    route.side_effect = [
        httpx.Response(429, headers={"retry-after-ms": "1500"}, json={"error": {"code": 429}}),
        httpx.Response(200, json={"data": {"total_credits": 1, "total_usage": 0}}),
    ]
    await client.get_credits()
    assert recording_sleep.waits == [1.5]


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(httpx.Headers({"retry-after": "60"})) == 60
    assert (
        parse_retry_after(httpx.Headers({"retry-after": "Thu, 26 Nov 2026 12:00:30 GMT"}), now=now)
        == 30
    )
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


@respx.mock
async def test_error_bodies_become_typed_errors_with_metadata(client: OpenRouterClient) -> None:
    from shared.openrouter.errors import OpenRouterPaymentRequired

    respx.get(f"{BASE}/key").respond(
        402,
        json={
            "error": {
                "code": 402,
                "message": "can only afford 0",
                "metadata": {"limit_source": "openrouter_key_limit"},
            }
        },
    )
    with pytest.raises(OpenRouterPaymentRequired) as refused:
        await client.get_current_key()
    assert refused.value.metadata == {"limit_source": "openrouter_key_limit"}
    assert refused.value.message == "can only afford 0"


@respx.mock
async def test_expires_at_with_an_offset_is_sent_as_the_same_instant_in_utc(
    client: OpenRouterClient,
) -> None:
    """GIVEN an expiry of 12:00 at UTC+02:00 (10:00 UTC)
    WHEN a key is created with it
    THEN OpenRouter, which takes UTC only, is sent 10:00:00Z: the same instant, not 12:00Z."""
    route = respx.post(f"{BASE}/keys").respond(201, json={"data": MINIMAL_KEY, "key": SECRET})

    await client.create_key(
        name="n", expires_at=datetime(2030, 1, 2, 12, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    )

    assert json.loads(route.calls.last.request.content)["expires_at"] == "2030-01-02T10:00:00Z"


@respx.mock
async def test_a_naive_expires_at_is_refused_before_anything_is_sent(
    client: OpenRouterClient,
) -> None:
    """GIVEN an expiry without a timezone (which instant it means is anybody's guess)
    WHEN a key is created with it
    THEN the client refuses it with a ValueError and sends nothing."""
    route = respx.post(f"{BASE}/keys").respond(201, json={"data": MINIMAL_KEY, "key": SECRET})

    with pytest.raises(ValueError, match="timezone"):
        await client.create_key(name="n", expires_at=datetime(2030, 1, 2, 12, 0, 0))

    assert not route.called


@respx.mock
async def test_activity_sends_its_filters_and_parses_rows_leniently(
    client: OpenRouterClient,
) -> None:
    """GIVEN OpenRouter answering /activity with a row holding an unknown field, a timestamp
    where a date is documented (seen from some clients) and no token counts
    WHEN the client asks for one key's activity on one day
    THEN it sends api_key_hash and date=YYYY-MM-DD, and reads the row with exact Decimal money,
    the unknown field ignored and the missing counts as zero."""
    route = respx.get(f"{BASE}/activity").respond(
        200,
        json={
            "data": [
                {
                    "date": "2026-11-24 00:00:00",
                    "model": "openai/gpt-4.1",
                    "usage": 0.004,
                    "byok_usage_inference": 1e-7,
                    "requests": 2,
                    "brand_new_field": [1],
                }
            ]
        },
    )

    [row] = await client.get_activity("h1", date(2026, 11, 24))

    assert dict(route.calls.last.request.url.params) == {
        "api_key_hash": "h1",
        "date": "2026-11-24",
    }
    assert row.date == date(2026, 11, 24)
    assert (row.usage, row.byok_usage_inference) == (Decimal("0.004"), Decimal("1E-7"))
    assert (row.requests, row.prompt_tokens, row.cached_tokens) == (2, 0, 0)
    assert row.workspace_id is None


@respx.mock
async def test_activity_for_the_whole_account_sends_no_filter(client: OpenRouterClient) -> None:
    """GIVEN no key and no day
    WHEN the client asks for activity
    THEN no query parameter is sent (OpenRouter's default: every key, the 30 days)."""
    route = respx.get(f"{BASE}/activity").respond(200, json={"data": []})
    assert await client.get_activity() == []
    assert dict(route.calls.last.request.url.params) == {}


@pytest.mark.parametrize(
    "row",
    [{"model": "no date"}, {"date": "24/11/2026"}, {"date": "2026-11-24", "requests": "2"}],
)
@respx.mock
async def test_an_activity_row_without_a_usable_date_or_count_is_an_invalid_response(
    client: OpenRouterClient, row: dict[str, object]
) -> None:
    """GIVEN a row without a date, with a malformed one, or with a count that is no number
    WHEN the client reads it
    THEN it raises OpenRouterInvalidResponse rather than guessing."""
    respx.get(f"{BASE}/activity").respond(200, json={"data": [row]})
    with pytest.raises(OpenRouterInvalidResponse):
        await client.get_activity()


@respx.mock
async def test_a_generation_is_parsed_leniently_but_never_without_its_cost(
    client: OpenRouterClient,
) -> None:
    """GIVEN generation answers with unknown and missing optional fields, and one without
    total_cost
    WHEN the client reads them
    THEN the first parses (id as query parameter, exact Decimal money, missing optional fields
    None) and the second raises OpenRouterInvalidResponse: a generation without its cost is
    of no use to a ledger."""
    route = respx.get(f"{BASE}/generation")
    route.side_effect = [
        httpx.Response(
            200,
            json={"data": {"id": "gen-1", "total_cost": 0.004, "usage": 0.004, "new": {"x": 1}}},
        ),
        httpx.Response(200, json={"data": {"id": "gen-2", "usage": 0.004}}),
    ]

    generation = await client.get_generation("gen-1")
    with pytest.raises(OpenRouterInvalidResponse, match="total_cost"):
        await client.get_generation("gen-2")

    assert dict(route.calls[0].request.url.params) == {"id": "gen-1"}
    assert generation.total_cost == Decimal("0.004")
    assert generation.upstream_inference_cost is None
    assert generation.external_user is None and generation.created_at is None
