"""All SQL of the key lifecycle: keys, key operations, users' budgets."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from shared.crypto.envelope import SealedSecret
from shared.db.database import Connection

OPEN_STATUSES = ("started", "planned", "key_created", "activated")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: UUID
    owner: str
    user_id: str | None
    state: str
    openrouter_name: str
    openrouter_hash: str | None
    label: str | None
    limit_usd: Decimal | None
    limit_period: date
    spent_before_usd: Decimal
    final_usage_usd: Decimal | None
    fingerprint: str | None
    disabled: bool
    created_at: datetime
    activated_at: datetime | None
    superseded_at: datetime | None
    grace_until: datetime | None
    revoked_at: datetime | None
    sealed: SealedSecret | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> KeyRecord:
        sealed = None
        if row["secret_ciphertext"] is not None:
            sealed = SealedSecret(
                ciphertext=bytes(row["secret_ciphertext"]),
                nonce=bytes(row["secret_nonce"]),
                wrapped_data_key=bytes(row["wrapped_data_key"]),
                provider=row["key_provider"],
            )
        return cls(
            **{f.name: row[f.name] for f in fields(cls) if f.name != "sealed"}, sealed=sealed
        )


@dataclass(frozen=True, slots=True)
class OperationRecord:
    id: UUID
    kind: str
    owner: str
    status: str
    old_key_id: UUID | None
    new_key_id: UUID | None
    grace_seconds: int
    budget_usd: Decimal | None
    spent_at_plan_usd: Decimal | None
    old_usage_at_plan_usd: Decimal | None
    grace_allowance_usd: Decimal | None
    requested_by: str
    idempotency_key: str | None
    reason: str | None
    request_id: str | None
    error_code: str | None
    error_message: str | None
    attempts: int
    lease_until: datetime | None
    create_sent_at: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> OperationRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


Record = TypeVar("Record", KeyRecord, OperationRecord)


class KeyRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def _one(self, record: type[Record], query: str, params: tuple[Any, ...]) -> Record:
        found = await self._maybe(record, query, params)
        if found is None:
            raise LookupError("expected a row")
        return found

    async def _maybe(
        self, record: type[Record], query: str, params: tuple[Any, ...]
    ) -> Record | None:
        cursor = await self._conn.execute(query.encode(), params)
        row = await cursor.fetchone()
        return None if row is None else record.from_row(row)

    async def _many(
        self, record: type[Record], query: str, params: tuple[Any, ...]
    ) -> list[Record]:
        cursor = await self._conn.execute(query.encode(), params)
        return [record.from_row(row) for row in await cursor.fetchall()]

    # ----- users and budgets -----

    async def ensure_user(
        self, user_id: str, *, tier: str | None, rotation_policy: str | None, actor: str
    ) -> str:
        """Create the user (free tier, on-demand rotation unless told) or update what is given;
        their tier."""
        cursor = await self._conn.execute(
            "insert into users as u (user_id, tier, rotation_policy, updated_by)"
            " values (%(user)s, coalesce(%(tier)s::text, 'free'),"
            "  coalesce(%(policy)s::text, 'on_demand'), %(actor)s)"
            " on conflict (user_id) do update set"
            "  tier = coalesce(%(tier)s::text, u.tier),"
            "  rotation_policy = coalesce(%(policy)s::text, u.rotation_policy),"
            "  updated_at = case when coalesce(%(tier)s, %(policy)s) is null"
            "   then u.updated_at else now() end,"
            "  updated_by = case when coalesce(%(tier)s, %(policy)s) is null"
            "   then u.updated_by else excluded.updated_by end"
            " returning tier",
            {"user": user_id, "tier": tier, "policy": rotation_policy, "actor": actor},
        )
        row = await cursor.fetchone()
        assert row is not None
        return str(row["tier"])

    async def monthly_budget_of_user(self, user_id: str) -> Decimal | None:
        cursor = await self._conn.execute(
            "select t.monthly_budget_usd from users u"
            " join subscription_tiers t on t.tier = u.tier where u.user_id = %s",
            (user_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            raise LookupError(f"unknown user {user_id}")
        budget = row["monthly_budget_usd"]
        return None if budget is None else Decimal(budget)  # type: ignore[arg-type]

    async def adjustments_of(self, user_id: str | None, period: date) -> Decimal:
        """Resets and corrections of the owner's usage this period (negative: budget given
        back). System keys have none."""
        if user_id is None:
            return Decimal(0)
        cursor = await self._conn.execute(
            "select coalesce(sum(amount_usd), 0) as total from usage_adjustments"
            " where user_id = %s and period = %s",
            (user_id, period),
        )
        row = await cursor.fetchone()
        assert row is not None
        return Decimal(row["total"])  # type: ignore[arg-type]

    # ----- keys -----

    async def insert_pending_key(
        self, *, key_id: UUID, owner: str, user_id: str | None, name: str, period: date
    ) -> KeyRecord:
        return await self._one(
            KeyRecord,
            "insert into api_keys (id, owner, user_id, state, openrouter_name, limit_period)"
            " values (%s, %s, %s, 'pending', %s, %s) returning *",
            (key_id, owner, user_id, name, period),
        )

    async def get_key(self, key_id: UUID) -> KeyRecord | None:
        return await self._maybe(KeyRecord, "select * from api_keys where id = %s", (key_id,))

    async def current_key(self, owner: str) -> KeyRecord | None:
        return await self._maybe(
            KeyRecord, "select * from api_keys where owner = %s and state = 'current'", (owner,)
        )

    async def keys_of(self, owner: str) -> list[KeyRecord]:
        return await self._many(
            KeyRecord,
            "select * from api_keys where owner = %s order by created_at desc, id",
            (owner,),
        )

    async def last_spent_in_period(self, owner: str, period: date) -> Decimal:
        """What the owner spent this period through keys already revoked (0 if none)."""
        cursor = await self._conn.execute(
            "select coalesce(max(spent_before_usd + final_usage_usd), 0) as spent"
            " from api_keys where owner = %s and limit_period = %s"
            " and final_usage_usd is not null",
            (owner, period),
        )
        row = await cursor.fetchone()
        assert row is not None
        return Decimal(row["spent"])  # type: ignore[arg-type]

    async def set_key_limit(
        self,
        key_id: UUID,
        *,
        limit_usd: Decimal | None,
        spent_before_usd: Decimal,
        period: date | None = None,
    ) -> KeyRecord:
        return await self._one(
            KeyRecord,
            "update api_keys set limit_usd = %s, spent_before_usd = %s,"
            " limit_period = coalesce(%s, limit_period) where id = %s returning *",
            (limit_usd, spent_before_usd, period, key_id),
        )

    async def record_created_key(
        self,
        key_id: UUID,
        *,
        openrouter_hash: str,
        label: str,
        sealed: SealedSecret,
        fingerprint: str,
    ) -> KeyRecord:
        return await self._one(
            KeyRecord,
            "update api_keys set openrouter_hash = %s, label = %s, secret_ciphertext = %s,"
            " secret_nonce = %s, wrapped_data_key = %s, key_provider = %s, fingerprint = %s"
            " where id = %s and state = 'pending' returning *",
            (
                openrouter_hash,
                label,
                sealed.ciphertext,
                sealed.nonce,
                sealed.wrapped_data_key,
                sealed.provider,
                fingerprint,
                key_id,
            ),
        )

    async def supersede(self, key_id: UUID, *, grace_seconds: int) -> None:
        await self._conn.execute(
            "update api_keys set state = 'previous', superseded_at = now(),"
            " grace_until = now() + make_interval(secs => %s)"
            " where id = %s and state = 'current'",
            (grace_seconds, key_id),
        )

    async def make_current(self, key_id: UUID) -> KeyRecord:
        return await self._one(
            KeyRecord,
            "update api_keys set state = 'current', activated_at = now()"
            " where id = %s and state = 'pending' returning *",
            (key_id,),
        )

    async def mark_revoked(self, key_id: UUID, *, final_usage_usd: Decimal | None) -> KeyRecord:
        return await self._one(
            KeyRecord,
            "update api_keys set state = 'revoked', revoked_at = coalesce(revoked_at, now()),"
            " final_usage_usd = coalesce(final_usage_usd, %s), grace_until = null"
            " where id = %s returning *",
            (final_usage_usd, key_id),
        )

    async def mark_failed(self, key_id: UUID) -> None:
        await self._conn.execute(
            "update api_keys set state = 'failed' where id = %s and state = 'pending'", (key_id,)
        )

    async def set_disabled(self, key_id: UUID, *, disabled: bool) -> KeyRecord:
        return await self._one(
            KeyRecord,
            "update api_keys set disabled = %s where id = %s returning *",
            (disabled, key_id),
        )

    async def replace_sealed(self, key_id: UUID, sealed: SealedSecret) -> None:
        await self._conn.execute(
            "update api_keys set wrapped_data_key = %s, key_provider = %s where id = %s",
            (sealed.wrapped_data_key, sealed.provider, key_id),
        )

    async def sealed_not_under(self, provider: str, *, limit: int) -> list[KeyRecord]:
        return await self._many(
            KeyRecord,
            "select * from api_keys where key_provider is not null and key_provider <> %s"
            " order by id limit %s",
            (provider, limit),
        )

    async def enqueue_due_for_scheduled_rotation(self, job_id: UUID, period: date) -> int:
        """Put every owner whose current key the monthly schedule covers (system keys, users
        on the monthly policy) and that was activated before `period` into the job, in one
        statement however many there are. The number added."""
        cursor = await self._conn.execute(
            "insert into work_items (job_id, item)"
            " select %s, k.owner from api_keys k left join users u on u.user_id = k.user_id"
            " where k.state = 'current' and k.activated_at < %s"
            " and (k.owner like 'system:%%' or u.rotation_policy = 'monthly')"
            " on conflict do nothing",
            (job_id, period),
        )
        return cursor.rowcount

    async def roll_over_unchanged_limits(
        self, period: date, *, system_budget_usd: Decimal | None
    ) -> int:
        """Move every current key whose OpenRouter limit is already its full budget for
        `period` into that period, in one statement: OpenRouter resets the key's usage each
        month by itself, so these keys need no call. Keys with an operation in progress, or
        whose owner has resets in `period`, are left to the per-key restore."""
        cursor = await self._conn.execute(
            "update api_keys k set limit_period = %(period)s, spent_before_usd = 0"
            " where k.state = 'current' and k.limit_period < %(period)s"
            " and k.limit_usd is not distinct from (case when k.user_id is null"
            "  then %(system)s::numeric else (select t.monthly_budget_usd from users u"
            "  join subscription_tiers t on t.tier = u.tier where u.user_id = k.user_id) end)"
            " and not exists (select 1 from key_operations o where o.owner = k.owner"
            "  and o.status in ('started', 'planned', 'key_created', 'activated'))"
            " and not exists (select 1 from usage_adjustments a"
            "  where a.user_id = k.user_id and a.period = %(period)s)",
            {"period": period, "system": system_budget_usd},
        )
        return cursor.rowcount

    async def enqueue_limits_to_restore(self, job_id: UUID, period: date) -> int:
        """Put every owner whose current key is not yet in `period` into the job."""
        cursor = await self._conn.execute(
            "insert into work_items (job_id, item)"
            " select %s, owner from api_keys where state = 'current' and limit_period < %s"
            " on conflict do nothing",
            (job_id, period),
        )
        return cursor.rowcount

    async def known_openrouter_names(self) -> dict[str, KeyRecord]:
        keys = await self._many(KeyRecord, "select * from api_keys", ())
        return {key.openrouter_name: key for key in keys}

    async def live_keys(self) -> list[KeyRecord]:
        return await self._many(
            KeyRecord,
            "select * from api_keys where state in ('current', 'previous')"
            " and openrouter_hash is not null",
            (),
        )

    # ----- operations -----

    async def insert_operation(
        self,
        *,
        kind: str,
        owner: str,
        old_key_id: UUID | None,
        new_key_id: UUID,
        grace_seconds: int,
        requested_by: str,
        idempotency_key: str | None,
        reason: str | None,
        request_id: str | None,
    ) -> OperationRecord:
        return await self._one(
            OperationRecord,
            "insert into key_operations (kind, owner, status, old_key_id, new_key_id,"
            " grace_seconds, requested_by, idempotency_key, reason, request_id)"
            " values (%s, %s, 'started', %s, %s, %s, %s, %s, %s, %s) returning *",
            (
                kind,
                owner,
                old_key_id,
                new_key_id,
                grace_seconds,
                requested_by,
                idempotency_key,
                reason,
                request_id,
            ),
        )

    async def get_operation(self, operation_id: UUID) -> OperationRecord | None:
        return await self._maybe(
            OperationRecord, "select * from key_operations where id = %s", (operation_id,)
        )

    async def operation_by_idempotency_key(
        self, requested_by: str, idempotency_key: str
    ) -> OperationRecord | None:
        return await self._maybe(
            OperationRecord,
            "select * from key_operations where requested_by = %s and idempotency_key = %s",
            (requested_by, idempotency_key),
        )

    async def open_operation_of(self, owner: str) -> OperationRecord | None:
        return await self._maybe(
            OperationRecord,
            "select * from key_operations where owner = %s"
            " and status in ('started', 'planned', 'key_created', 'activated')",
            (owner,),
        )

    async def claim_operation(self, operation_id: UUID, *, lease_s: int) -> OperationRecord | None:
        """Take the operation's lease, if no one holds it; the single point of exclusion."""
        return await self._maybe(
            OperationRecord,
            "update key_operations set lease_until = now() + make_interval(secs => %s),"
            " attempts = attempts + 1, updated_at = now()"
            " where id = %s and status in ('started', 'planned', 'key_created', 'activated')"
            " and (lease_until is null or lease_until < now()) returning *",
            (lease_s, operation_id),
        )

    async def release_operation(self, operation_id: UUID) -> None:
        await self._conn.execute(
            "update key_operations set lease_until = null where id = %s", (operation_id,)
        )

    async def plan_operation(
        self,
        operation_id: UUID,
        *,
        budget_usd: Decimal | None,
        spent_at_plan_usd: Decimal,
        old_usage_at_plan_usd: Decimal | None,
        grace_allowance_usd: Decimal,
    ) -> OperationRecord:
        return await self._one(
            OperationRecord,
            "update key_operations set status = 'planned', budget_usd = %s,"
            " spent_at_plan_usd = %s, old_usage_at_plan_usd = %s, grace_allowance_usd = %s,"
            " updated_at = now() where id = %s and status = 'started' returning *",
            (
                budget_usd,
                spent_at_plan_usd,
                old_usage_at_plan_usd,
                grace_allowance_usd,
                operation_id,
            ),
        )

    async def mark_create_sent(self, operation_id: UUID) -> None:
        await self._conn.execute(
            "update key_operations set create_sent_at = coalesce(create_sent_at, now()),"
            " updated_at = now() where id = %s",
            (operation_id,),
        )

    async def set_status(
        self, operation_id: UUID, *, expected: str, status: str
    ) -> OperationRecord:
        return await self._one(
            OperationRecord,
            "update key_operations set status = %s, updated_at = now(),"
            " completed_at = case when %s::text in ('completed', 'failed') then now() end"
            " where id = %s and status = %s returning *",
            (status, status, operation_id, expected),
        )

    async def fail_operation(
        self, operation_id: UUID, *, error_code: str, error_message: str
    ) -> OperationRecord:
        return await self._one(
            OperationRecord,
            "update key_operations set status = 'failed', error_code = %s, error_message = %s,"
            " completed_at = now(), updated_at = now(), lease_until = null"
            " where id = %s returning *",
            (error_code, error_message, operation_id),
        )

    async def operations_to_advance(self, *, limit: int) -> list[OperationRecord]:
        """Open operations no one is working on whose next step is due."""
        return await self._many(
            OperationRecord,
            "select o.* from key_operations o left join api_keys old on old.id = o.old_key_id"
            " where o.status in ('started', 'planned', 'key_created', 'activated')"
            " and (o.lease_until is null or o.lease_until < now())"
            " and (o.status <> 'activated' or old.grace_until is null"
            "      or old.grace_until <= now())"
            " order by o.updated_at limit %s",
            (limit,),
        )
