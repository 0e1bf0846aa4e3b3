"""All SQL of users: who they are, their tier, their rotation policy."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from shared.db.database import Connection

DEFAULT_TIER = "free"
DEFAULT_ROTATION_POLICY = "on_demand"


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    tier: str
    rotation_policy: str
    created_at: datetime
    updated_at: datetime
    updated_by: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UserRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class UserChange:
    """A user before and after a write; `before` is None when the write created them."""

    before: UserRecord | None
    after: UserRecord

    @property
    def created(self) -> bool:
        return self.before is None

    @property
    def tier_changed(self) -> bool:
        return self.before is not None and self.before.tier != self.after.tier

    @property
    def policy_changed(self) -> bool:
        return self.before is not None and self.before.rotation_policy != self.after.rotation_policy


class UserRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def get(self, user_id: str) -> UserRecord | None:
        cursor = await self._conn.execute("select * from users where user_id = %s", (user_id,))
        row = await cursor.fetchone()
        return None if row is None else UserRecord.from_row(row)

    async def lock(self, user_id: str) -> UserRecord | None:
        """The user, held for this transaction, or None; writers of a user not yet created
        are serialised too (on a lock of the id), so only the first of them creates it."""
        await self._conn.execute(
            "select pg_advisory_xact_lock(hashtextextended('users:' || %s, 0))", (user_id,)
        )
        cursor = await self._conn.execute(
            "select * from users where user_id = %s for update", (user_id,)
        )
        row = await cursor.fetchone()
        return None if row is None else UserRecord.from_row(row)

    async def upsert(
        self, user_id: str, *, tier: str | None, rotation_policy: str | None, actor: str
    ) -> UserChange:
        """Create the user (free tier, on-demand rotation unless told) or change what is given.
        Call within a transaction that holds the user (lock), so `before` is exact."""
        before = await self.lock(user_id)
        cursor = await self._conn.execute(
            "insert into users as u (user_id, tier, rotation_policy, updated_by)"
            " values (%(user)s, coalesce(%(tier)s::text, %(default_tier)s),"
            "  coalesce(%(policy)s::text, %(default_policy)s), %(actor)s)"
            " on conflict (user_id) do update set"
            "  tier = coalesce(%(tier)s::text, u.tier),"
            "  rotation_policy = coalesce(%(policy)s::text, u.rotation_policy),"
            "  updated_at = case when (coalesce(%(tier)s::text, u.tier), coalesce(%(policy)s::text,"
            "   u.rotation_policy)) is distinct from (u.tier, u.rotation_policy)"
            "   then now() else u.updated_at end,"
            "  updated_by = case when (coalesce(%(tier)s::text, u.tier), coalesce(%(policy)s::text,"
            "   u.rotation_policy)) is distinct from (u.tier, u.rotation_policy)"
            "   then excluded.updated_by else u.updated_by end"
            " returning *",
            {
                "user": user_id,
                "tier": tier,
                "policy": rotation_policy,
                "actor": actor,
                "default_tier": DEFAULT_TIER,
                "default_policy": DEFAULT_ROTATION_POLICY,
            },
        )
        row = await cursor.fetchone()
        assert row is not None
        return UserChange(before, UserRecord.from_row(row))


@dataclass(frozen=True, slots=True)
class BudgetIncrease:
    id: int
    user_id: str
    amount_usd: Decimal
    starts_period: date
    ends_at: datetime
    reason: str
    granted_by: str
    granted_at: datetime
    lapse_applied_at: datetime | None
    idempotency_key: str | None = None


class BudgetIncreaseRepository:
    """Grants of extra budget (0023): rows are added, never edited, but for the mark that the
    lapse reached the user's keys."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def grant(
        self,
        user_id: str,
        amount_usd: Decimal,
        ends_at: datetime,
        reason: str,
        granted_by: str,
        idempotency_key: str | None = None,
    ) -> tuple[BudgetIncrease, bool]:
        """The grant, and whether this call made it (False: the caller's earlier grant with
        this idempotency key)."""
        cursor = await self._conn.execute(
            "insert into budget_increases (user_id, amount_usd, starts_period, ends_at, reason,"
            " granted_by, idempotency_key) values (%s, %s,"
            " date_trunc('month', now() at time zone 'UTC')::date, %s, %s, %s, %s)"
            " on conflict (granted_by, idempotency_key) where idempotency_key is not null"
            " do nothing returning *",
            (user_id, amount_usd, ends_at, reason, granted_by, idempotency_key),
        )
        row = await cursor.fetchone()
        if row is not None:
            return BudgetIncrease(**row), True  # type: ignore[arg-type]
        cursor = await self._conn.execute(
            "select * from budget_increases where granted_by = %s and idempotency_key = %s",
            (granted_by, idempotency_key),
        )
        row = await cursor.fetchone()
        assert row is not None
        return BudgetIncrease(**row), False  # type: ignore[arg-type]

    async def of_user(self, user_id: str) -> list[BudgetIncrease]:
        cursor = await self._conn.execute(
            "select * from budget_increases where user_id = %s order by granted_at desc, id desc",
            (user_id,),
        )
        return [BudgetIncrease(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]

    async def lapsed(self, *, limit: int) -> list[BudgetIncrease]:
        """Grants that ended and whose end has not reached the user's keys yet."""
        cursor = await self._conn.execute(
            "select * from budget_increases where lapse_applied_at is null and ends_at <= now()"
            " order by ends_at, id limit %s",
            (limit,),
        )
        return [BudgetIncrease(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]

    async def mark_lapse_applied(self, increase_id: int) -> None:
        await self._conn.execute(
            "update budget_increases set lapse_applied_at = now() where id = %s", (increase_id,)
        )
