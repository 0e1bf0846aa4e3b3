"""All SQL of the usage ledger."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

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
    spent_usd: Decimal  # the reported events
    adjusted_usd: Decimal  # resets (negative)
    events: int
    counted_usd: Decimal = Decimal(0)  # what OpenRouter counted on the user's keys (the sync)
    corrected_usd: Decimal = Decimal(0)  # corrections of reported costs found wrong

    @property
    def unreported_usd(self) -> Decimal:
        """What OpenRouter counted that no reported event explains (as the database derives)."""
        return max(self.counted_usd - self.spent_usd - self.corrected_usd, Decimal(0))

    @property
    def effective_usd(self) -> Decimal:
        """What counts against the budget: the books' gross less the resets (net_usd)."""
        gross = max(self.spent_usd + self.corrected_usd, self.counted_usd)
        return max(gross + self.adjusted_usd, Decimal(0))


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

    async def reset(self, user_id: str, period: date, *, reason: str, actor: str) -> Decimal:
        cursor = await self._conn.execute(
            "select reset_usage(%s, %s, %s, %s) as amount", (user_id, period, reason, actor)
        )
        row = await cursor.fetchone()
        assert row is not None
        return Decimal(row["amount"])  # type: ignore[arg-type]

    async def cross_thresholds(
        self, period: date, *, user_id: str | None = None, tier: str | None = None
    ) -> int:
        """Cross the thresholds a budget change put behind the users' spend (one user, or a
        tier's users), with their alerts; how many were crossed."""
        cursor = await self._conn.execute(
            "select cross_usage_thresholds(%s, %s, %s) as n", (period, user_id, tier)
        )
        row = await cursor.fetchone()
        return int(row["n"]) if row else 0  # type: ignore[call-overload]

    async def sync_counted(
        self, period: str, counters: list[dict[str, str]], *, users: list[str] | None = None
    ) -> int:
        """OpenRouter's monthly counters of some keys ({"hash", "usage_usd"}) into the books of
        their users (and of `users`), thresholds crossed; how many users' counts changed."""
        cursor = await self._conn.execute(
            "select sync_counted_usage(%s::date, %s::jsonb, %s::text[]) as changed",
            (period, json.dumps(counters), users or []),
        )
        row = await cursor.fetchone()
        return int(row["changed"]) if row else 0  # type: ignore[call-overload]

    async def users_on_no_page(self, period: str) -> list[str]:
        """Users with spend on keys deleted this month and no key left at OpenRouter: no page
        of the listing recomputes them (a user with a key left is recomputed with its page,
        deleted keys included)."""
        cursor = await self._conn.execute(
            "select distinct k.user_id from api_keys k where k.user_id is not null"
            " and k.final_usage_period = %s::date and k.final_usage_usd > 0"
            " and not exists (select 1 from api_keys o where o.user_id = k.user_id"
            "  and o.openrouter_hash is not null and o.deleted_at is null)",
            (period,),
        )
        return [str(row["user_id"]) for row in await cursor.fetchall()]

    async def users_in_scope(
        self, *, user_id: str | None, tier: str | None, everyone: bool
    ) -> list[str]:
        cursor = await self._conn.execute(
            "select user_id from users where %s or user_id = %s or tier = %s order by user_id",
            (everyone, user_id, tier),
        )
        return [str(row["user_id"]) for row in await cursor.fetchall()]

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


@dataclass(frozen=True, slots=True)
class DueVerification:
    """A reported event whose cost OpenRouter is to confirm (GET /generation)."""

    event_id: int
    generation_id: str
    user_id: str
    cost_usd: Decimal


class VerificationRepository:
    """The verification job's SQL (schema/migrations/0021_verified_costs.sql)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def claim_due(self, *, now: datetime, limit: int, lease_s: int) -> list[DueVerification]:
        """At most `limit` pending events due by `now`, oldest due first, leased for lease_s
        (SKIP LOCKED, and their next try moved past the lease: runs that overlap split them,
        and a run that dies leaves its events to be picked again once the lease ends)."""
        cursor = await self._conn.execute(
            "with due as (select id from usage_events where verify_state = 'pending'"
            " and verify_next_at <= %(now)s order by verify_next_at, id limit %(limit)s"
            " for update skip locked)"
            " update usage_events e set verify_next_at = %(now)s + make_interval(secs => %(lease)s)"
            " from due where e.id = due.id"
            " returning e.id as event_id, e.generation_id, e.user_id, e.cost_usd",
            {"now": now, "limit": limit, "lease": lease_s},
        )
        due = [DueVerification(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]
        return sorted(due, key=lambda d: d.event_id)

    async def record(
        self,
        event_id: int,
        *,
        openrouter_cost: Decimal | None,
        generation_user: str | None,
        now: datetime,
        retry_s: float,
        give_up_s: float,
        alert_usd: Decimal,
    ) -> str:
        """One outcome (openrouter_cost None: not found yet) and its correction, in one
        statement; the event's new state, 'not_ready', or 'unchanged' (verified before)."""
        cursor = await self._conn.execute(
            "select record_usage_verification(%s::bigint, %s::boolean, %s::numeric, %s::text,"
            " %s::timestamptz, %s::numeric, %s::numeric, %s::numeric) as state",
            (
                event_id,
                openrouter_cost is not None,
                openrouter_cost,
                generation_user,
                now,
                retry_s,
                give_up_s,
                alert_usd,
            ),
        )
        row = await cursor.fetchone()
        assert row is not None
        return str(row["state"])
