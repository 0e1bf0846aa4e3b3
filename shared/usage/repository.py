"""All SQL of the usage ledger."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from shared.db.database import Connection


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    index: int
    status: str  # stored, duplicate, unknown_user, or rejected (by the fallback)
    reason: str | None
    user_id: str | None
    period: date | None
    spent_usd: Decimal | None
    budget_usd: Decimal | None
    crossed: list[int]


@dataclass(frozen=True, slots=True)
class PeriodTotal:
    period: date
    spent_usd: Decimal  # events
    adjusted_usd: Decimal  # resets (negative)
    events: int

    @property
    def effective_usd(self) -> Decimal:
        return max(self.spent_usd + self.adjusted_usd, Decimal(0))


@dataclass(frozen=True, slots=True)
class BreakdownRow:
    model: str
    agent_name: str
    cost_usd: Decimal
    events: int
    prompt_tokens: int
    completion_tokens: int


class UsageRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def record_events(
        self, events: list[dict[str, Any]], *, recorded_by: str
    ) -> list[RecordedEvent]:
        cursor = await self._conn.execute(
            "select * from record_usage_events(%s::jsonb, %s)",
            (json.dumps(events), recorded_by),
        )
        return [
            RecordedEvent(
                index=int(row["idx"]),  # type: ignore[call-overload]
                status=str(row["status"]),
                reason=None,
                user_id=None if row["user_id"] is None else str(row["user_id"]),
                period=row["period"],  # type: ignore[arg-type]
                spent_usd=row["spent_usd"],  # type: ignore[arg-type]
                budget_usd=row["budget_usd"],  # type: ignore[arg-type]
                crossed=list(row["crossed"] or []),  # type: ignore[call-overload]
            )
            for row in await cursor.fetchall()
        ]

    async def budget_of(self, user_id: str) -> tuple[bool, Decimal | None, str | None]:
        """Whether the user exists, their monthly budget (None: unlimited) and tier."""
        cursor = await self._conn.execute(
            "select u.tier, t.monthly_budget_usd from users u"
            " join subscription_tiers t on t.tier = u.tier where u.user_id = %s",
            (user_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            return False, None, None
        budget = row["monthly_budget_usd"]
        return True, None if budget is None else Decimal(budget), str(row["tier"])  # type: ignore[arg-type]

    async def totals(self, user_id: str, *, limit: int, before: date | None) -> list[PeriodTotal]:
        cursor = await self._conn.execute(
            "select period, spent_usd, adjusted_usd, events from usage_totals"
            " where user_id = %s and (%s::date is null or period < %s::date)"
            " order by period desc limit %s",
            (user_id, before, before, limit),
        )
        return [PeriodTotal(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]

    async def total(self, user_id: str, period: date) -> PeriodTotal:
        cursor = await self._conn.execute(
            "select period, spent_usd, adjusted_usd, events from usage_totals"
            " where user_id = %s and period = %s",
            (user_id, period),
        )
        row = await cursor.fetchone()
        if row is None:
            return PeriodTotal(period, Decimal(0), Decimal(0), 0)
        return PeriodTotal(**row)  # type: ignore[arg-type]

    async def breakdown(self, user_id: str, periods: list[date]) -> dict[date, list[BreakdownRow]]:
        cursor = await self._conn.execute(
            "select period, model, agent_name, cost_usd, events, prompt_tokens,"
            " completion_tokens from usage_breakdown where user_id = %s and period = any(%s)"
            " order by period, cost_usd desc, model, agent_name",
            (user_id, periods),
        )
        by_period: dict[date, list[BreakdownRow]] = {p: [] for p in periods}
        for row in await cursor.fetchall():
            period = row.pop("period")
            by_period[period].append(BreakdownRow(**row))  # type: ignore[arg-type, index]
        return by_period

    async def thresholds_crossed(self, user_id: str, period: date) -> list[int]:
        cursor = await self._conn.execute(
            "select threshold from usage_threshold_crossings where user_id = %s and period = %s"
            " order by threshold",
            (user_id, period),
        )
        return [int(row["threshold"]) for row in await cursor.fetchall()]  # type: ignore[call-overload]

    async def reset(self, user_id: str, period: date, *, reason: str, actor: str) -> Decimal:
        cursor = await self._conn.execute(
            "select reset_usage(%s, %s, %s, %s) as amount", (user_id, period, reason, actor)
        )
        row = await cursor.fetchone()
        assert row is not None
        return Decimal(row["amount"])  # type: ignore[arg-type]

    async def users_in_scope(
        self, *, user_id: str | None, tier: str | None, everyone: bool
    ) -> list[str]:
        cursor = await self._conn.execute(
            "select user_id from users where %s or user_id = %s or tier = %s order by user_id",
            (everyone, user_id, tier),
        )
        return [str(row["user_id"]) for row in await cursor.fetchall()]

    async def set_tier(self, user_id: str, tier: str, *, actor: str) -> tuple[str, str] | None:
        """(previous tier, new tier), or None for an unknown user."""
        cursor = await self._conn.execute(
            "update users u set tier = %s, updated_at = now(), updated_by = %s"
            " from (select user_id, tier as previous from users where user_id = %s for update) p"
            " where u.user_id = p.user_id returning p.previous, u.tier",
            (tier, actor, user_id),
        )
        row = await cursor.fetchone()
        return None if row is None else (str(row["previous"]), str(row["tier"]))

    async def tiers(self) -> list[tuple[str, Decimal | None, str]]:
        cursor = await self._conn.execute(
            "select tier, monthly_budget_usd, description from subscription_tiers order by"
            " monthly_budget_usd nulls last, tier"
        )
        return [
            (str(r["tier"]), r["monthly_budget_usd"], str(r["description"]))  # type: ignore[misc]
            for r in await cursor.fetchall()
        ]

    async def set_tier_budget(self, tier: str, budget: Decimal | None) -> bool:
        cursor = await self._conn.execute(
            "update subscription_tiers set monthly_budget_usd = %s, updated_at = now()"
            " where tier = %s returning tier",
            (budget, tier),
        )
        return await cursor.fetchone() is not None
