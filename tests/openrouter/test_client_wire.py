"""Exact wire checks with respx: what the client sends, and how leniently it reads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
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
