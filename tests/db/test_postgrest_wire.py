"""The Supabase transport's exact requests and its reading of every kind of answer (respx)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import httpx
import jwt
import pytest
import respx

from shared.db.rpc import PostgrestRpc, StoreRefused, SupabaseUnavailable

URL = "https://project-ref.supabase.co"
RPC = f"{URL}/rest/v1/rpc/store_usage_month"
LEGACY_KEY = jwt.encode({"role": "service_role"}, "project-jwt-secret-0123456789abcdef")
SECRET_KEY = "sb_secret_" + "s" * 32


@pytest.fixture
def supabase() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=True) as router:
        yield router


async def test_a_call_is_one_post_with_the_key_and_the_arguments_as_the_body(
    supabase: respx.MockRouter,
) -> None:
    # GIVEN Supabase answering the function
    route = supabase.post(RPC).mock(return_value=httpx.Response(200, json=None))
    rpc = PostgrestRpc(URL + "/", LEGACY_KEY)

    # WHEN the store calls it
    await rpc.call("store_usage_month", {"user_id": "u1", "period": "2026-11-01"})

    # THEN one POST under /rest/v1/rpc/, the key as apikey and as the bearer JWT, JSON both
    # ways, the arguments as the body, and no Prefer header: a function with one unnamed
    # jsonb parameter takes the body as it is (PostgREST >= 9; params=single-object is gone)
    [call] = route.calls
    request = call.request
    assert request.method == "POST" and str(request.url) == RPC
    assert request.headers["apikey"] == LEGACY_KEY
    assert request.headers["authorization"] == f"Bearer {LEGACY_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert "prefer" not in request.headers
    assert json.loads(request.content) == {"user_id": "u1", "period": "2026-11-01"}
    await rpc.aclose()


async def test_a_new_secret_key_is_sent_as_apikey_only(supabase: respx.MockRouter) -> None:
    # GIVEN a project using the new, non-JWT secret keys
    route = supabase.post(RPC).mock(return_value=httpx.Response(200, json=None))
    rpc = PostgrestRpc(URL, SECRET_KEY)

    # WHEN the store calls a function
    await rpc.call("store_usage_month", {"user_id": "u1"})

    # THEN no Authorization header carries it: PostgREST would refuse a non-JWT bearer
    request = route.calls.last.request
    assert request.headers["apikey"] == SECRET_KEY
    assert "authorization" not in request.headers
    await rpc.aclose()


async def test_money_arrives_exact_and_leaves_as_strings(supabase: respx.MockRouter) -> None:
    # GIVEN an answer with amounts no float holds exactly
    body = b'{"spent_usd": 0.30000000000000001, "budget_usd": 12345678901234.000001}'
    route = supabase.post(RPC).mock(return_value=httpx.Response(200, content=body))
    rpc = PostgrestRpc(URL, LEGACY_KEY)

    # WHEN it is read, after a call with a Decimal argument
    result = await rpc.call("store_usage_month", {"amount": Decimal("0.000001")})

    # THEN every digit survives both ways
    assert result == {
        "spent_usd": Decimal("0.30000000000000001"),
        "budget_usd": Decimal("12345678901234.000001"),
    }
    assert json.loads(route.calls.last.request.content) == {"amount": "0.000001"}
    await rpc.aclose()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # the database refused the call: the caller's data
        (400, {"code": "22P02", "message": "invalid input syntax for type numeric"}, StoreRefused),
        (409, {"code": "23505", "message": "duplicate key value"}, StoreRefused),
        # our configuration or Supabase's state: the store is unavailable
        (401, {"message": "Invalid API key"}, SupabaseUnavailable),
        (401, {"code": "PGRST301", "message": "JWT expired"}, SupabaseUnavailable),
        (403, {"code": "42501", "message": "permission denied"}, SupabaseUnavailable),
        (404, {"code": "PGRST202", "message": "Could not find the function"}, SupabaseUnavailable),
        (503, {"code": "08006", "message": "connection failure"}, SupabaseUnavailable),
        (502, None, SupabaseUnavailable),
    ],
)
async def test_each_refusal_becomes_the_right_error(
    supabase: respx.MockRouter,
    status: int,
    body: dict[str, str] | None,
    expected: type[Exception],
) -> None:
    response = (
        httpx.Response(status, json=body)
        if body is not None
        else httpx.Response(status, text="<html>Bad gateway</html>")
    )
    supabase.post(RPC).mock(return_value=response)
    rpc = PostgrestRpc(URL, LEGACY_KEY)
    with pytest.raises(expected) as raised:
        await rpc.call("store_usage_month", {})
    assert LEGACY_KEY not in str(raised.value)
    if isinstance(raised.value, StoreRefused):
        assert body is not None and raised.value.sqlstate == body["code"]
    await rpc.aclose()


async def test_an_unreachable_supabase_is_unavailable_and_the_call_is_not_retried(
    supabase: respx.MockRouter,
) -> None:
    route = supabase.post(RPC).mock(side_effect=httpx.ReadTimeout("no answer"))
    rpc = PostgrestRpc(URL, LEGACY_KEY)
    with pytest.raises(SupabaseUnavailable):
        await rpc.call("store_usage_month", {})
    assert route.call_count == 1  # a write may have happened; only the caller may retry
    await rpc.aclose()
