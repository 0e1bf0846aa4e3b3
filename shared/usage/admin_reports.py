"""GET /api/admin/usage, GET /api/admin/keys and its counts by state."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from shared.access.rules import AdminCaller
from shared.keys.domain import current_period, parse_period
from shared.keys.schemas import TierName, UserId
from shared.usage import report_service
from shared.usage.schemas import KeyPage, KeyStateCounts, SystemUsage
from shared.web.deps import RuntimeDep

router = APIRouter(tags=["reports (admin)"])


@router.get("/api/admin/usage", response_model=SystemUsage)
async def system_usage(
    _: AdminCaller,
    runtime: RuntimeDep,
    period: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM")] = None,
) -> SystemUsage:
    """The month system-wide: totals by tier, model and agent; top users; users over 80% and
    100% of their budget; drift against OpenRouter."""
    month = current_period() if period is None else parse_period(period)
    return await report_service.system_usage(runtime, month)


@router.get("/api/admin/keys", response_model=KeyPage)
async def list_keys(
    _: AdminCaller,
    runtime: RuntimeDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    status: Literal["pending", "current", "previous", "revoked", "failed"] | None = None,
    tier: TierName | None = None,
    user_id: UserId | None = None,
) -> KeyPage:
    """Every key, newest first, by cursor; filter by status, tier and user."""
    return await report_service.keys_page(
        runtime, cursor=cursor, limit=limit, status=status, tier=tier, user_id=user_id
    )


@router.get("/api/admin/keys/by-state", response_model=KeyStateCounts)
async def keys_by_state(_: AdminCaller, runtime: RuntimeDep) -> KeyStateCounts:
    """How many keys are pending, current, previous (in their grace period), revoked, failed."""
    return KeyStateCounts(counts=await report_service.keys_by_state(runtime))
