"""Row-level security as a Supabase user meets it: the supabase Python client, holding a user's
JWT, talking to Supabase's REST API (the real PostgREST behind a gateway that checks the
apikey as Supabase's does) on the real schema. A user reads their own rows only, and writes
nothing; an anonymous caller reads nothing; a wrong apikey gets nowhere."""

from __future__ import annotations

import uuid

import httpx
import pytest
from postgrest.exceptions import APIError
from supabase import Client, create_client

from shared.keys.service import KeyLifecycleService, Owner
from shared.runtime import Runtime
from shared.usage.service import UsageService
from tests.db.supabase_stack import ANON_KEY, PUBLISHABLE_KEY, SupabaseGateway, user_token

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

USER_A = str(uuid.uuid4())
USER_B = str(uuid.uuid4())


@pytest.fixture
async def seeded(runtime: Runtime, supabase_rest: SupabaseGateway) -> SupabaseGateway:
    keys = KeyLifecycleService(runtime)
    usage = UsageService(runtime)
    for user, tier in ((USER_A, "standard"), (USER_B, "micro")):
        await keys.create_key(Owner.user(user), actor="t", tier=tier)
        await usage.log(
            [{"user_id": user, "generation_id": f"g-{user}", "model": "m", "cost_usd": "1.5"}],
            actor="t",
        )
    return supabase_rest


@pytest.fixture
def as_user_a(seeded: SupabaseGateway) -> Client:
    client = create_client(seeded.url, ANON_KEY)
    client.postgrest.auth(user_token(USER_A))
    return client


def _refused(call: object) -> str:
    with pytest.raises(APIError) as refused:
        call.execute()  # type: ignore[attr-defined]
    return str(refused.value.code)


def test_a_user_reads_their_own_rows_only(as_user_a: Client) -> None:
    users = as_user_a.table("users").select("user_id, tier").execute().data
    keys = as_user_a.table("api_keys").select("user_id, state, limit_usd").execute().data
    books = as_user_a.table("usage_totals").select("user_id, spent_usd").execute().data
    events = as_user_a.table("usage_events").select("user_id, generation_id").execute().data
    assert users == [{"user_id": USER_A, "tier": "standard"}]
    assert keys == [{"user_id": USER_A, "state": "current", "limit_usd": 50.0}]
    assert books == [{"user_id": USER_A, "spent_usd": 1.5}]
    assert events == [{"user_id": USER_A, "generation_id": f"g-{USER_A}"}]
    tiers = as_user_a.table("subscription_tiers").select("tier").execute().data
    assert len(tiers) == 8  # the tier table is for everyone signed in


def test_a_user_never_reads_key_material(as_user_a: Client) -> None:
    # column privileges leave out the sealed secret, its nonce and its wrapped data key
    for column in ("secret_ciphertext", "wrapped_data_key", "secret_nonce", "*"):
        assert _refused(as_user_a.table("api_keys").select(column)) == "42501"


@pytest.mark.parametrize(
    "write",
    [
        lambda c: c.table("users").update({"tier": "admin"}).eq("user_id", USER_A),
        lambda c: c.table("users").insert({"user_id": str(uuid.uuid4()), "updated_by": "me"}),
        lambda c: c.table("api_keys").delete().eq("user_id", USER_A),
        lambda c: c.table("usage_events").insert({"user_id": USER_A}),
        lambda c: c.table("usage_adjustments").insert({"user_id": USER_A}),
        lambda c: (
            c.table("subscription_tiers").update({"monthly_budget_usd": None}).eq("tier", "free")
        ),
        lambda c: c.table("service_tokens").select("name"),
        lambda c: c.table("audit_log").select("seq"),
        lambda c: c.table("owner_leases").select("owner"),
        lambda c: c.rpc("store_usage_month", {"user_id": USER_A}),
        lambda c: c.rpc(
            "reset_usage",
            {"p_user_id": USER_A, "p_period": "2026-12-01", "p_reason": "me", "p_actor": "me"},
        ),
    ],
)
def test_a_user_writes_nothing_and_calls_no_store_function(
    as_user_a: Client, write: object
) -> None:
    assert _refused(write(as_user_a)) == "42501"  # type: ignore[operator]


@pytest.mark.parametrize("key", [ANON_KEY, PUBLISHABLE_KEY])
def test_an_anonymous_caller_reads_nothing(seeded: SupabaseGateway, key: str) -> None:
    client = create_client(seeded.url, ANON_KEY)
    client.postgrest.session.headers["apikey"] = key
    for table in ("users", "api_keys", "usage_totals", "subscription_tiers", "service_tokens"):
        assert _refused(client.table(table).select("*")) == "42501", table


def test_the_gateway_wants_the_projects_apikey(seeded: SupabaseGateway) -> None:
    missing = httpx.get(f"{seeded.url}/rest/v1/users")
    wrong = httpx.get(f"{seeded.url}/rest/v1/users", headers={"apikey": "not-ours"})
    assert (missing.status_code, missing.json()["message"]) == (
        401,
        "No API key found in request",
    )
    assert (wrong.status_code, wrong.json()["message"]) == (401, "Invalid API key")
