"""GET /api/admin/usage and GET /api/admin/keys."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from shared.access.rules import AdminCaller
from shared.keys.domain import current_period
from shared.keys.schemas import KeyInfo, TierName, UserId
from shared.usage.reports import KeyPageCursor, ReportRepository
from shared.usage.schemas import Breakdown
from shared.usage.service import percent_used
from shared.web.deps import RuntimeDep

router = APIRouter(tags=["reports (admin)"])


class AdminKeyInfo(KeyInfo):
    tier: str | None


class KeyPage(BaseModel):
    data: list[AdminKeyInfo]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class UserShare(BaseModel):
    user_id: str
    tier: str
    spent_usd: Decimal
    limit_usd: Decimal | None
    percent_used: Decimal | None


class DriftRow(BaseModel):
    user_id: str
    openrouter_usd: Decimal
    ledger_usd: Decimal
    drift_usd: Decimal
    measured_at: datetime


class SystemUsage(BaseModel):
    period: date
    spent_usd: Decimal
    events: int
    users: int
    by_tier: list[Breakdown]
    by_model: list[Breakdown]
    by_agent: list[Breakdown]
    top_users: list[UserShare]
    over_80_percent: list[UserShare]
    over_100_percent: list[UserShare]
    drift: list[DriftRow]


def _breakdown(rows: list[dict[str, Any]]) -> list[Breakdown]:
    return [
        Breakdown(name=r["name"] or "(none)", cost_usd=r["cost_usd"], events=r["events"])
        for r in rows
    ]


def _shares(rows: list[dict[str, Any]]) -> list[UserShare]:
    return [
        UserShare(
            user_id=r["user_id"],
            tier=r["tier"],
            spent_usd=r["spent_usd"],
            limit_usd=r["limit_usd"],
            percent_used=percent_used(r["spent_usd"], r["limit_usd"]),
        )
        for r in rows
    ]


@router.get("/api/admin/usage", response_model=SystemUsage)
async def system_usage(
    _: AdminCaller,
    runtime: RuntimeDep,
    period: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM")] = None,
) -> SystemUsage:
    """The month system-wide: totals by tier, model and agent; top users; users over 80% and
    100% of their budget; drift against OpenRouter."""
    month = current_period() if period is None else date.fromisoformat(f"{period}-01")
    async with runtime.database().connection() as conn:
        reports = ReportRepository(conn)
        totals = await reports.month_totals(month)
        return SystemUsage(
            period=month,
            spent_usd=totals["spent"],
            events=totals["events"],
            users=totals["users"],
            by_tier=_breakdown(await reports.by_tier(month)),
            by_model=_breakdown(await reports.by_model(month)),
            by_agent=_breakdown(await reports.by_agent(month)),
            top_users=_shares(await reports.users_by_share(month, min_percent=None, limit=10)),
            over_80_percent=_shares(
                await reports.users_by_share(month, min_percent=Decimal(80), limit=1000)
            ),
            over_100_percent=_shares(
                await reports.users_by_share(month, min_percent=Decimal(100), limit=1000)
            ),
            drift=[DriftRow(**row) for row in await reports.drift(month)],
        )


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
    after = None if cursor is None else KeyPageCursor.decode(cursor)
    async with runtime.database().connection() as conn:
        rows = await ReportRepository(conn).keys_page(
            after=after, limit=limit, state=status, tier=tier, user_id=user_id
        )
    data = [AdminKeyInfo(**KeyInfo.of(key).model_dump(), tier=t) for key, t in rows]
    next_cursor = None
    if len(rows) == limit:
        last = rows[-1][0]
        next_cursor = KeyPageCursor(last.created_at, last.id).encode()
    return KeyPage(data=data, next_cursor=next_cursor)
