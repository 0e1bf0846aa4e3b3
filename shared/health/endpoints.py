"""GET /health, /health/database, /health/keys: 200 when healthy, 503 with the failing check."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from shared import __version__
from shared.access.rules import PublicCaller
from shared.health import service
from shared.health.schemas import DatabaseHealth, KeysHealth, Liveness
from shared.observability import SERVICE_NAME
from shared.web.deps import RuntimeDep

# Every function serves liveness (so each can be probed on its own); only the health function
# serves the dependency checks.
liveness_router = APIRouter(prefix="/health", tags=["health"])
router = APIRouter(prefix="/health", tags=["health"])

_UNHEALTHY: dict[int | str, dict[str, Any]] = {
    503: {"description": "A check failed; the error names the check and the reason."}
}


@liveness_router.get("", response_model=Liveness)
async def liveness(request: Request, runtime: RuntimeDep, _: PublicCaller) -> Liveness:
    """Liveness: the process answers; no dependency is touched."""
    return Liveness(
        service=SERVICE_NAME,
        version=__version__,
        group=request.app.state.group,
        started_at=runtime.started_at,
        uptime_s=round(runtime.uptime_s, 3),
    )


@router.get("/database", response_model=DatabaseHealth, responses=_UNHEALTHY)
async def database_health(runtime: RuntimeDep, _: PublicCaller) -> DatabaseHealth:
    """Database round trip, server version and applied migration version."""
    return await service.check_database(service.store_of(runtime))


@router.get("/keys", response_model=KeysHealth, responses=_UNHEALTHY)
async def keys_health(runtime: RuntimeDep, _: PublicCaller) -> KeysHealth:
    """The OpenRouter management key is valid and is a management key; credits when available."""
    return await service.check_openrouter_keys(runtime)
