"""CORS is denied unless configured; credentials are never taken from query strings."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from shared.config import Settings
from shared.runtime import Runtime
from shared.web.app_factory import create_app
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

PREFLIGHT = {
    "Origin": "https://app.formul8.ai",
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization",
}


async def _preflight(runtime: Runtime) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(runtime=runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.options("/api/auth/whoami", headers=PREFLIGHT)


async def test_cors_is_denied_by_default(runtime: Runtime) -> None:
    response = await _preflight(runtime)
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_only_configured_origins(settings: Settings, runtime: Runtime) -> None:
    allowed = Runtime(
        settings.model_copy(update={"cors_allowed_origins": ["https://app.formul8.ai"]}),
        openrouter=runtime.openrouter(),
    )
    elsewhere = Runtime(
        settings.model_copy(update={"cors_allowed_origins": ["https://other.example"]}),
        openrouter=runtime.openrouter(),
    )
    assert (await _preflight(allowed)).headers["access-control-allow-origin"] == (
        "https://app.formul8.ai"
    )
    assert "access-control-allow-origin" not in (await _preflight(elsewhere)).headers


async def test_credentials_in_the_query_string_are_refused(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/api/admin/tokens",
        params={"access_token": BOOTSTRAP_ADMIN_TOKEN},
        headers={"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "credentials_in_query"
    assert BOOTSTRAP_ADMIN_TOKEN not in response.text


def test_short_cron_secrets_are_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="CRON_SECRET must be at least 16"):
        Settings(app_env="test", cron_secret=SecretStr("short"))
