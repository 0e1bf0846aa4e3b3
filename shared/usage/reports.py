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

    async def _rows(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
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

    async def month_totals(self, period: date) -> dict[str, Any]:
        [row] = await self._rows(
            "select coalesce(sum(usage_effective(t)), 0) as spent, coalesce(sum(t.events), 0)"
            " as events, count(*) as users from usage_totals t where t.period = %s",
            (period,),
        )
        return row

    async def by_tier(self, period: date) -> list[dict[str, Any]]:
        return await self._rows(
            "select u.tier as name, sum(usage_effective(t)) as cost_usd, sum(t.events) as events"
            " from usage_totals t join users u on u.user_id = t.user_id where t.period = %s"
            " group by u.tier order by cost_usd desc, name",
            (period,),
        )

    async def by_model(self, period: date) -> list[dict[str, Any]]:
        return await self._rows(
            "select model as name, sum(cost_usd) as cost_usd, sum(events) as events"
            " from usage_breakdown where period = %s group by 1 order by 2 desc, 1 limit 50",
            (period,),
        )

    async def by_agent(self, period: date) -> list[dict[str, Any]]:
        return await self._rows(
            "select agent_name as name, sum(cost_usd) as cost_usd, sum(events) as events"
            " from usage_breakdown where period = %s group by 1 order by 2 desc, 1 limit 50",
            (period,),
        )

    async def users_by_share(
        self, period: date, *, min_percent: Decimal | None, limit: int
    ) -> list[dict[str, Any]]:
        """Users by spend (desc); with min_percent, only those at or over that share."""
        return await self._rows(
            "select t.user_id, u.tier, usage_effective(t) as spent_usd,"
            " s.monthly_budget_usd as limit_usd from usage_totals t"
            " join users u on u.user_id = t.user_id"
            " join subscription_tiers s on s.tier = u.tier"
            " where t.period = %s and (%s::numeric is null or (s.monthly_budget_usd is not null"
            "  and usage_effective(t) * 100 >= s.monthly_budget_usd * %s::numeric))"
            " order by usage_effective(t) desc, t.user_id limit %s",
            (period, min_percent, min_percent, limit),
        )

    async def drift(self, period: date) -> list[dict[str, Any]]:
        return await self._rows(
            "select user_id, openrouter_usd, ledger_usd, drift_usd, measured_at from usage_drift"
            " where period = %s order by abs(drift_usd) desc, user_id limit 100",
            (period,),
        )

    async def record_drift(
        self,
        user_id: str,
        period: date,
        *,
        openrouter: Decimal,
        ledger: Decimal,
        tolerance: Decimal,
    ) -> bool:
        """Keep the user's drift if beyond the tolerance, forget it otherwise; True if kept."""
        drift = openrouter - ledger
        if abs(drift) <= tolerance:
            await self._conn.execute(
                "delete from usage_drift where user_id = %s and period = %s", (user_id, period)
            )
            return False
        await self._conn.execute(
            "insert into usage_drift (user_id, period, openrouter_usd, ledger_usd, drift_usd)"
            " values (%s, %s, %s, %s, %s) on conflict (user_id, period) do update set"
            " openrouter_usd = excluded.openrouter_usd, ledger_usd = excluded.ledger_usd,"
            " drift_usd = excluded.drift_usd, measured_at = now()",
            (user_id, period, openrouter, ledger, drift),
        )
        return True

    async def ledger_spend(self, period: date) -> dict[str, Decimal]:
        rows = await self._rows(
            "select user_id, spent_usd from usage_totals where period = %s", (period,)
        )
        return {str(r["user_id"]): Decimal(r["spent_usd"]) for r in rows}

    async def user_keys_in_period(self, period: date) -> list[KeyRecord]:
        rows = await self._rows(
            "select * from api_keys where user_id is not null and openrouter_hash is not null"
            " and (state in ('current', 'previous') or limit_period = %s)",
            (period,),
        )
        return [KeyRecord.from_row(row) for row in rows]


async def measure_drift(
    conn: Connection, remote_usage: dict[str, Decimal], period: date, *, tolerance: Decimal
) -> int:
    """Compare, per user, OpenRouter's spend this month (live keys' monthly usage, plus what
    revoked keys had spent) with the ledger; keep what differs beyond the tolerance."""
    reports = ReportRepository(conn)
    openrouter: dict[str, Decimal] = {}
    for key in await reports.user_keys_in_period(period):
        assert key.user_id is not None
        assert key.openrouter_hash is not None
        if key.openrouter_hash in remote_usage:
            spent = remote_usage[key.openrouter_hash]
        elif key.final_usage_usd is not None and key.limit_period == period:
            spent = key.final_usage_usd
        else:
            continue
        openrouter[key.user_id] = openrouter.get(key.user_id, Decimal(0)) + spent
    ledger = await reports.ledger_spend(period)
    drifting = 0
    for user_id in sorted(set(openrouter) | set(ledger)):
        kept = await reports.record_drift(
            user_id,
            period,
            openrouter=openrouter.get(user_id, Decimal(0)),
            ledger=ledger.get(user_id, Decimal(0)),
            tolerance=tolerance,
        )
        drifting += kept
    return drifting
