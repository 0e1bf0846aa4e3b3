"""Admin reports: the month system-wide, and every key by cursor."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from shared.keys.schemas import KeyInfo
from shared.runtime import Runtime
from shared.usage.reports import KeyPageCursor, ReportRepository
from shared.usage.schemas import (
    AdminKeyInfo,
    Breakdown,
    DriftRow,
    KeyPage,
    SystemUsage,
    UserShare,
)
from shared.usage.service import percent_used


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


async def system_usage(runtime: Runtime, month: date) -> SystemUsage:
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


async def keys_page(
    runtime: Runtime,
    *,
    cursor: str | None,
    limit: int,
    status: str | None,
    tier: str | None,
    user_id: str | None,
) -> KeyPage:
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
