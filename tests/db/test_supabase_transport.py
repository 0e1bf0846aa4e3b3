"""The functions on the Supabase transport: chosen by configuration, and serving the hot path
end to end through Supabase's REST API (the real PostgREST behind an apikey gateway)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.config import Environment, Settings
from shared.db.database import DatabaseUnavailable
from shared.db.rpc import PostgrestRpc
from shared.runtime import Runtime
from shared.web.app_factory import create_app
from tests.access.signing import AuthServer
from tests.db.supabase_stack import SERVICE_ROLE_KEY, SupabaseGateway
from tests.db.test_store_contract import SUPABASE_URL

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

ALICE = "0b7c9a2e-6f7d-4c1e-9a3b-5d2f8e4a1c6b"


def test_supabase_settings_choose_the_rest_transport(tmp_path: Path) -> None:
    # GIVEN a function configured with the Supabase URL and service-role key only
    settings = Settings(
        app_env=Environment.TEST,
        local_data_dir=tmp_path,
        supabase_url=SUPABASE_URL,
        supabase_service_role_key=SecretStr(SERVICE_ROLE_KEY),
    )
    runtime = Runtime(settings)

    # THEN its store goes through the gateway, and what needs a connection says what to set
    assert runtime.store().transport == "supabase"
    with pytest.raises(DatabaseUnavailable, match="DATABASE_URL") as refused:
        runtime.database()
    assert refused.value.code == "database_not_configured"


def test_without_supabase_the_store_is_the_direct_connection(settings: Settings) -> None:
    assert Runtime(settings).store().transport == "postgres"


@pytest.fixture
async def supabase_api(
    runtime: Runtime, supabase_rest: SupabaseGateway
) -> AsyncIterator[tuple[httpx.AsyncClient, SupabaseGateway]]:
    """Every group of the app, its store calls going through Supabase's REST API."""
    gateway = supabase_rest
    store = PostgrestRpc(gateway.url, SERVICE_ROLE_KEY)
    on_supabase = Runtime(
        runtime.settings,
        database=runtime.database(),  # key lifecycle and admin still connect directly
        openrouter=runtime.openrouter(),
        store=store,
    )
    transport = httpx.ASGITransport(app=create_app(runtime=on_supabase))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client, gateway
    await store.aclose()


async def test_usage_is_logged_and_read_through_the_gateway(
    supabase_api: tuple[httpx.AsyncClient, SupabaseGateway],
    runtime: Runtime,
    auth_server: AuthServer,
) -> None:
    api, gateway = supabase_api
    # GIVEN a user with a key, and an agent platform's service token
    backend = await AccessService(runtime).issue_token(
        issued_by="t", name="backend", scopes=[Scope.KEYS_WRITE, Scope.USAGE_WRITE], expires_at=None
    )
    headers = {"Authorization": f"Bearer {backend.token}"}
    created = await api.post("/api/keys/create", headers=headers, json={"user_id": ALICE})
    assert created.status_code == 201, created.text

    # WHEN usage is logged and the user reads their month
    logged = await api.post(
        "/api/usage/log",
        headers=headers,
        json={
            "events": [{"user_id": ALICE, "generation_id": "g-1", "model": "m", "cost_usd": "5"}]
        },
    )
    user = {"Authorization": f"Bearer {auth_server.token(user_id=ALICE)}"}
    month = await api.get(f"/api/usage/{ALICE}", headers=user)
    health = await api.get("/health/database")

    # THEN the answers are the ledger's, and they came through the gateway as service_role
    assert logged.status_code == 200 and logged.json()["stored"] == 1
    assert month.status_code == 200 and month.json()["spent_usd"] == "5"
    assert health.json()["transport"] == "supabase"
    called = {path.removeprefix("rpc/") for path, role in gateway.calls if role == "service_role"}
    assert {
        "store_authenticate_service_token",
        "store_consume_rate_limit",
        "store_record_usage_events",
        "store_usage_month",
        "store_probe",
    } <= called
