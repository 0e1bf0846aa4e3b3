"""The usage ledger's hot path over the store functions: log events, read a user's books.

Runs on either transport (shared/db/rpc.py); the admin side of the ledger (resets, tiers,
reports) keeps its SQL in repository.py, on the direct connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from shared.db.rpc import StoreRpc
from shared.usage.repository import BreakdownRow, PeriodTotal, RecordedEvent


@dataclass(frozen=True, slots=True)
class PeriodBook:
    total: PeriodTotal
    breakdown: list[BreakdownRow]
    crossed: list[int]


@dataclass(frozen=True, slots=True)
class UserBooks:
    tier: str
    budget_usd: Decimal | None
    months: list[PeriodBook]
    last_7_days_usd: Decimal | None = None  # what events cost in the 7 days to as_of (month())


def _period_book(raw: dict[str, Any]) -> PeriodBook:
    period = date.fromisoformat(raw["period"])
    return PeriodBook(
        total=PeriodTotal(
            period=period,
            spent_usd=Decimal(raw["spent_usd"]),
            adjusted_usd=Decimal(raw["adjusted_usd"]),
            events=int(raw["events"]),
            counted_usd=Decimal(raw.get("counted_usd", 0)),
            corrected_usd=Decimal(raw.get("corrected_usd", 0)),
        ),
        breakdown=[
            BreakdownRow(
                model=row["model"],
                agent_name=row["agent_name"],
                cost_usd=Decimal(row["cost_usd"]),
                events=int(row["events"]),
                prompt_tokens=int(row["prompt_tokens"]),
                completion_tokens=int(row["completion_tokens"]),
            )
            for row in raw["breakdown"]
        ],
        crossed=[int(threshold) for threshold in raw["crossed"]],
    )


def _books(raw: dict[str, Any] | None) -> UserBooks | None:
    if raw is None:
        return None
    budget = raw["budget_usd"]
    pace = raw.get("last_7_days_usd")
    return UserBooks(
        tier=str(raw["tier"]),
        budget_usd=None if budget is None else Decimal(budget),
        months=[_period_book(month) for month in raw["months"]],
        last_7_days_usd=None if pace is None else Decimal(str(pace)),
    )


class UsageStore:
    def __init__(self, rpc: StoreRpc) -> None:
        self._rpc = rpc

    async def record_events(
        self, events: list[dict[str, Any]], *, recorded_by: str
    ) -> list[RecordedEvent]:
        """All events in one transaction; raises StoreRefused if the database refuses any."""
        rows = await self._rpc.call(
            "store_record_usage_events", {"events": events, "recorded_by": recorded_by}
        )
        return [
            RecordedEvent(
                index=int(row["idx"]),
                status=str(row["status"]),
                reason=None,
                user_id=row["user_id"],
                period=None if row["period"] is None else date.fromisoformat(row["period"]),
                spent_usd=None if row["spent_usd"] is None else Decimal(row["spent_usd"]),
                budget_usd=None if row["budget_usd"] is None else Decimal(row["budget_usd"]),
                crossed=[int(t) for t in row["crossed"] or []],
            )
            for row in rows
        ]

    async def month(self, user_id: str, period: date, *, as_of: datetime) -> UserBooks | None:
        """The user's book of one period (empty if nothing was logged) and their spend of the
        7 days to `as_of`; None: no such user."""
        return _books(
            await self._rpc.call(
                "store_usage_month",
                {"user_id": user_id, "period": period, "as_of": as_of.isoformat()},
            )
        )

    async def history(self, user_id: str, *, limit: int, before: date | None) -> UserBooks | None:
        """Up to `limit` periods with a book, newest first; None: no such user."""
        return _books(
            await self._rpc.call(
                "store_usage_history", {"user_id": user_id, "limit": limit, "before": before}
            )
        )
