"""Admin reports: the month system-wide, and every key by cursor."""

from __future__ import annotations

import asyncio
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
            key_limit_usd=r["key_limit_usd"],
            has_key=r["has_key"],
        )
        for r in rows
    ]


async def system_usage(runtime: Runtime, month: date) -> SystemUsage:
    database = runtime.database()

    async def totals() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        async with database.connection() as conn:
            reports = ReportRepository(conn)
            return (
                await reports.tier_totals(month),
                await reports.drift(month),
                await reports.verification(month),
            )

    async def shares() -> tuple[list[dict[str, Any]], ...]:
        async with database.connection() as conn:
            reports = ReportRepository(conn)
            return (
                await reports.model_and_agent_totals(month),
                await reports.top_users(month, limit=10),
                await reports.users_over(month, percent=Decimal(80), limit=1000),
                await reports.users_over(month, percent=Decimal(100), limit=1000),
            )

    # The two scans of the month's books run side by side, on two connections.
    (tiers, drift, verification), (breakdowns, top, over_80, over_100) = await asyncio.gather(
        totals(), shares()
    )
    [everyone] = [row for row in tiers if row["name"] is None]
    return SystemUsage(
        period=month,
        spent_usd=everyone["net_usd"],
        events_usd=everyone["cost_usd"],
        unreported_usd=everyone["unreported_usd"],
        corrected_usd=everyone["corrected_usd"],
        adjustments_usd=everyone["adjusted_usd"],
        events=everyone["events"],
        users=everyone["users"],
        corrections=verification["corrections"],
        corrections_usd=verification["corrections_usd"],
        foreign_events=verification["foreign_events"],
        unverifiable_events=verification["unverifiable_events"],
        by_tier=_breakdown([row for row in tiers if row["name"] is not None]),
        by_model=_breakdown([row for row in breakdowns if row["kind"] == "model"][:50]),
        by_agent=_breakdown([row for row in breakdowns if row["kind"] == "agent"][:50]),
        top_users=_shares(top),
        over_80_percent=_shares(over_80),
        over_100_percent=_shares(over_100),
        drift=[DriftRow(**row) for row in drift],
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


async def keys_by_state(runtime: Runtime) -> dict[str, int]:
    async with runtime.database().connection() as conn:
        return await ReportRepository(conn).keys_by_state()
