"""System-wide reports for admins: the month's books, the key list, drift against OpenRouter."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from shared.db.database import Connection
from shared.errors import BadRequest
from shared.keys.repository import KeyRecord


@dataclass(frozen=True, slots=True)
class KeyPageCursor:
    created_at: datetime
    id: UUID

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode()

    @classmethod
    def decode(cls, cursor: str) -> KeyPageCursor:
        try:
            created_at, _, key_id = base64.urlsafe_b64decode(cursor).decode().partition("|")
            return cls(datetime.fromisoformat(created_at), UUID(key_id))
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise BadRequest("this cursor is not one we issued", code="invalid_cursor") from exc


class ReportRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def _rows(
        self, query: str, params: tuple[Any, ...] | dict[str, Any]
    ) -> list[dict[str, Any]]:
        cursor = await self._conn.execute(query.encode(), params)
        return list(await cursor.fetchall())

    async def keys_page(
        self,
        *,
        after: KeyPageCursor | None,
        limit: int,
        state: str | None,
        tier: str | None,
        user_id: str | None,
    ) -> list[tuple[KeyRecord, str | None]]:
        """Keys newest first, by keyset (created_at, id): stable under inserts, no offsets."""
        rows = await self._rows(
            "select k.*, u.tier from api_keys k left join users u on u.user_id = k.user_id"
            " where (%s::text is null or k.state = %s::text)"
            " and (%s::text is null or u.tier = %s::text)"
            " and (%s::text is null or k.user_id = %s::text)"
            " and (%s::timestamptz is null or (k.created_at, k.id) < (%s::timestamptz, %s::uuid))"
            " order by k.created_at desc, k.id desc limit %s",
            (
                state,
                state,
                tier,
                tier,
                user_id,
                user_id,
                None if after is None else after.created_at,
                None if after is None else after.created_at,
                None if after is None else after.id,
                limit,
            ),
        )
        return [(KeyRecord.from_row(row), row["tier"]) for row in rows]

    async def keys_by_state(self) -> dict[str, int]:
        rows = await self._rows("select state, count(*) as n from api_keys group by state", ())
        return {str(row["state"]): int(row["n"]) for row in rows}

    async def tier_totals(self, period: date) -> list[dict[str, Any]]:
        """What events cost, what adjustments took off, what counts (net), events and the users
        with an event, per tier and (name null) for all tiers: one pass."""
        return await self._rows(
            "select u.tier as name, coalesce(sum(t.spent_usd), 0) as cost_usd,"
            " coalesce(sum(t.adjusted_usd), 0) as adjusted_usd,"
            " coalesce(sum(t.unreported_usd), 0) as unreported_usd,"
            " coalesce(sum(t.corrected_usd), 0) as corrected_usd,"
            " coalesce(sum(t.net_usd), 0) as net_usd,"
            " coalesce(sum(t.events), 0) as events,"
            " count(t.user_id) filter (where t.events > 0) as users"
            " from usage_totals t join users u on u.user_id = t.user_id where t.period = %s"
            " group by rollup (u.tier) order by cost_usd desc, name",
            (period,),
        )

    async def model_and_agent_totals(self, period: date) -> list[dict[str, Any]]:
        """Spend and events per model and per agent (`kind` says which): one pass."""
        return await self._rows(
            "select case when grouping(model) = 0 then 'model' else 'agent' end as kind,"
            " coalesce(model, agent_name) as name, sum(cost_usd) as cost_usd,"
            " sum(events) as events from usage_breakdown where period = %s"
            " group by grouping sets ((model), (agent_name)) order by kind, cost_usd desc, name",
            (period,),
        )

    async def top_users(self, period: date, *, limit: int) -> list[dict[str, Any]]:
        """Users by spend this period, highest first (an index walk, not a sort)."""
        return await self._rows(
            "select t.user_id, u.tier, t.net_usd as spent_usd,"
            " user_budget_usd(t.user_id, s.monthly_budget_usd, t.period) as limit_usd,"
            " k.limit_usd as key_limit_usd, k.id is not null as has_key from usage_totals t"
            " join users u on u.user_id = t.user_id"
            " join subscription_tiers s on s.tier = u.tier"
            " left join api_keys k on k.owner = 'user:' || t.user_id and k.state = 'current'"
            " where t.period = %s"
            " order by t.net_usd desc, t.user_id limit %s",
            (period, limit),
        )

    async def users_over(
        self, period: date, *, percent: Decimal, limit: int
    ) -> list[dict[str, Any]]:
        """Users at or over `percent` of their budget, highest spend first. Only books at or
        over that share of the smallest budget are read (an index range), then each is held
        to its own tier's budget."""
        return await self._rows(
            "select t.user_id, u.tier, t.net_usd as spent_usd,"
            " user_budget_usd(t.user_id, s.monthly_budget_usd, t.period) as limit_usd,"
            " k.limit_usd as key_limit_usd, k.id is not null as has_key from usage_totals t"
            " join users u on u.user_id = t.user_id"
            " join subscription_tiers s on s.tier = u.tier"
            " left join api_keys k on k.owner = 'user:' || t.user_id and k.state = 'current'"
            " where t.period = %(period)s"
            " and t.net_usd * 100 >= %(percent)s *"
            "  (select min(monthly_budget_usd) from subscription_tiers)"
            " and s.monthly_budget_usd is not null"
            " and t.net_usd * 100"
            "  >= user_budget_usd(t.user_id, s.monthly_budget_usd, t.period) * %(percent)s"
            " order by t.net_usd desc, t.user_id"
            " limit %(limit)s",
            {"period": period, "percent": percent, "limit": limit},
        )

    async def verification(self, period: date) -> dict[str, Any]:
        """The month's corrections of reported costs (count, sum) and its events flagged
        foreign or given up as unverifiable (schema/migrations/0021_verified_costs.sql)."""
        [row] = await self._rows(
            "select (select count(*) from usage_corrections where period = %(p)s) as corrections,"
            " (select coalesce(sum(correction_usd), 0) from usage_corrections"
            "   where period = %(p)s) as corrections_usd,"
            " (select count(*) filter (where verify_state = 'foreign') from usage_events"
            "   where period = %(p)s and verify_state in ('foreign', 'unverifiable'))"
            "   as foreign_events,"
            " (select count(*) filter (where verify_state = 'unverifiable') from usage_events"
            "   where period = %(p)s and verify_state in ('foreign', 'unverifiable'))"
            "   as unverifiable_events",
            {"p": period},
        )
        return row

    async def drift(self, period: date) -> list[dict[str, Any]]:
        return await self._rows(
            "select user_id, openrouter_usd, ledger_usd, drift_usd, measured_at from usage_drift"
            " where period = %s order by abs(drift_usd) desc, user_id limit 100",
            (period,),
        )

    async def record_drift(self, period: date, *, tolerance: Decimal) -> int:
        """Each user's drift this month, OpenRouter's count (as the sync last read it) against
        what was reported, corrected: kept where beyond the tolerance, forgotten where not, in
        two statements whatever the number of users; how many drift."""
        await self._conn.execute(
            "delete from usage_drift d using usage_totals t"
            " where d.period = %(p)s and t.period = %(p)s and t.user_id = d.user_id"
            " and abs(t.counted_usd - t.spent_usd - t.corrected_usd) <= %(tolerance)s",
            {"p": period, "tolerance": tolerance},
        )
        cursor = await self._conn.execute(
            "insert into usage_drift (user_id, period, openrouter_usd, ledger_usd, drift_usd)"
            " select user_id, period, counted_usd, spent_usd + corrected_usd,"
            "  counted_usd - spent_usd - corrected_usd from usage_totals"
            " where period = %(p)s"
            "  and abs(counted_usd - spent_usd - corrected_usd) > %(tolerance)s"
            " on conflict (user_id, period) do update set"
            " openrouter_usd = excluded.openrouter_usd, ledger_usd = excluded.ledger_usd,"
            " drift_usd = excluded.drift_usd, measured_at = now()",
            {"p": period, "tolerance": tolerance},
        )
        return cursor.rowcount
