"""POST /api/admin/keys/reconcile: the admin function's one key route.

Apart from endpoints.py so that the admin function does not build the ten routes of the keys
function at its cold start.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from shared.access.rules import AdminCaller
from shared.keys.schemas import ReconcileResult
from shared.keys.service import KeyLifecycleService
from shared.observability import current_request_id
from shared.web.deps import RuntimeDep
from shared.web.openapi import answers

router = APIRouter(prefix="/api/admin/keys", tags=["keys (admin)"])


@router.post("/reconcile", response_model=ReconcileResult, responses=answers(409))
async def reconcile_keys(caller: AdminCaller, runtime: RuntimeDep) -> ReconcileResult:
    """Make OpenRouter and the database agree: delete orphans, replace keys gone missing."""
    report = await KeyLifecycleService(runtime).reconcile(
        actor=caller.actor, request_id=current_request_id.get()
    )
    return ReconcileResult(**asdict(report))
