"""GET /health, /health/database, /health/keys: 200 when healthy, 503 with the failing check."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from shared.access.rules import PublicCaller
from shared.health import service
from shared.health.schemas import DatabaseHealth, KeysHealth
from shared.web.deps import RuntimeDep
from shared.web.openapi import ErrorEnvelope

# The dependency checks; every function also serves liveness (shared/health/liveness.py).
router = APIRouter(prefix="/health", tags=["health"])

_UNHEALTHY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "A check failed; the error names the check and the reason.",
        "model": ErrorEnvelope,
    }
}


@router.get("/database", response_model=DatabaseHealth, responses=_UNHEALTHY)
async def database_health(runtime: RuntimeDep, _: PublicCaller) -> DatabaseHealth:
    """Database round trip, server version and applied migration version."""
    return await service.check_database(service.store_of(runtime))


@router.get("/keys", response_model=KeysHealth, responses=_UNHEALTHY)
async def keys_health(runtime: RuntimeDep, _: PublicCaller) -> KeysHealth:
    """The OpenRouter management key is valid and is a management key; credits when available."""
    return await service.check_openrouter_keys(runtime)
