"""The health group: 200 when healthy, 503 naming the failing check, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from shared.config import Environment, Settings
from shared.db.database import Database
from shared.db.migrations import load_migrations
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import Runtime
from shared.web.app_factory import create_app


async def _client_for(runtime: Runtime) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app("health", runtime=runtime)),
        base_url="http://testserver",
    )


async def test_liveness(api: httpx.AsyncClient) -> None:
    response = await api.get("/health")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "ok"
    assert body["service"] == "openrouter-agent"
    assert body["uptime_s"] >= 0


async def test_database_health_reports_round_trip_and_migration_version(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/health/database")
    body = response.json()
    latest = load_migrations()[-1].version
    assert response.status_code == 200
    assert body["migration_version"] == latest
    assert body["expected_migration_version"] == latest
    assert body["latency_ms"] > 0
    assert body["server_version"].startswith("18")


async def test_keys_health_checks_the_management_key_and_reads_credits(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/health/keys")
    body = response.json()
    assert response.status_code == 200
    assert body["provider"] == "emulator"
    assert body["is_management_key"] is True
    credits = {name: Decimal(value) for name, value in body["credits"].items()}
    assert credits == {"total_credits": 1000, "total_usage": 0, "balance": 1000}


async def test_credits_failing_does_not_fail_the_keys_check(
    api: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.inject(Fault("status", method="GET", path="/credits", status=403))
    response = await api.get("/health/keys")
    assert response.status_code == 200
    assert response.json()["credits"] is None
    assert response.json()["credits_error"] == "Upstream error"


async def test_an_unmigrated_database_is_503_schema_outdated(
    empty_database_dsn: str, tmp_path: Path, runtime: Runtime
) -> None:
    settings = Settings(app_env=Environment.TEST, local_data_dir=tmp_path)
    bare = Runtime(settings, database=Database(empty_database_dsn), openrouter=runtime.openrouter())
    async with await _client_for(bare) as client:
        response = await client.get("/health/database")
    await bare.database().close()
    error = response.json()["error"]
    assert response.status_code == 503
    assert error["code"] == "database_schema_outdated"
    assert error["details"]["check"] == "database"


@pytest.fixture
async def unreachable_database_client(
    tmp_path: Path, openrouter: OpenRouterClient
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        app_env=Environment.TEST,
        local_data_dir=tmp_path,
        database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        database_connect_timeout_s=0.5,
    )
    async with await _client_for(Runtime(settings, openrouter=openrouter)) as client:
        yield client


async def test_an_unreachable_database_is_503_and_other_checks_still_answer(
    unreachable_database_client: httpx.AsyncClient,
) -> None:
    database = await unreachable_database_client.get("/health/database")
    liveness = await unreachable_database_client.get("/health")
    keys = await unreachable_database_client.get("/health/keys")

    assert database.status_code == 503
    assert database.json()["error"]["code"] == "database_unavailable"
    assert database.json()["error"]["details"]["check"] == "database"
    assert liveness.status_code == 200
    assert keys.status_code == 200


async def test_a_supabase_only_configuration_is_503_not_configured(tmp_path: Path) -> None:
    settings = Settings(
        app_env=Environment.TEST, local_data_dir=tmp_path, supabase_url="https://x.supabase.co"
    )
    async with await _client_for(Runtime(settings)) as client:
        response = await client.get("/health/database")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_not_configured"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (
            Fault("status", method="GET", path="/key", status=401, times=None),
            "openrouter_key_invalid",
        ),
        (
            Fault("status", method="GET", path="/key", status=503, times=None),
            "openrouter_unavailable",
        ),
        (Fault("timeout", method="GET", path="/key", times=None), "openrouter_unavailable"),
    ],
)
async def test_openrouter_failures_are_503_with_a_reason(
    api: httpx.AsyncClient, emulator: Emulator, fault: Fault, code: str
) -> None:
    emulator.inject(fault)
    response = await api.get("/health/keys")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["details"]["check"] == "keys"


async def test_a_non_management_key_is_503(tmp_path: Path, emulator: Emulator) -> None:
    user_key = emulator.add_key(name="not-management")
    client = OpenRouterClient(
        management_key=SecretStr(user_key.secret),
        base_url="http://emulator/api/v1",
        transport=emulator.transport(),
    )
    settings = Settings(app_env=Environment.TEST, local_data_dir=tmp_path)
    async with await _client_for(Runtime(settings, openrouter=client)) as http:
        response = await http.get("/health/keys")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "openrouter_key_not_management"
    assert user_key.secret not in response.text
