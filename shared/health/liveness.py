"""GET /health, the liveness probe every function serves (so each can be probed on its own).

Apart from the dependency checks in endpoints.py, which only the health function serves and
which would otherwise load the database probe and the migrations into every function.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from shared import __version__
from shared.access.rules import PublicCaller
from shared.health.schemas import Liveness
from shared.observability import SERVICE_NAME
from shared.web.deps import RuntimeDep

liveness_router = APIRouter(prefix="/health", tags=["health"])


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
