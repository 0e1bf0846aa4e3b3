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
    ceiling_usd: Decimal | None
    ceiling_until: datetime | None
    openrouter_sync_pending: bool
    observed_usage_usd: Decimal | None
    observed_period: date | None
    final_usage_period: date | None
    final_usage_source: str | None
    disabled_at: datetime | None
    deleted_at: datetime | None
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

    async def _one(
        self, record: type[Record], query: str, params: tuple[Any, ...] | dict[str, Any]
    ) -> Record:
        found = await self._maybe(record, query, params)
        if found is None:
            raise LookupError("expected a row")
        return found

    async def _maybe(
        self, record: type[Record], query: str, params: tuple[Any, ...] | dict[str, Any]
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

    async def monthly_budget_of_user(self, user_id: str) -> Decimal | None:
        """The user's budget this month: their tier's and the grants in force (0023)."""
        cursor = await self._conn.execute(
            "select user_budget_usd(u.user_id, t.monthly_budget_usd,"
            " date_trunc('month', now() at time zone 'UTC')::date) as budget from users u"
            " join subscription_tiers t on t.tier = u.tier where u.user_id = %s",
            (user_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            raise LookupError(f"unknown user {user_id}")
        budget = row["budget"]
        return None if budget is None else Decimal(budget)  # type: ignore[arg-type]

    async def adjustments_of(self, user_id: str | None, period: date) -> Decimal:
        """What resets and corrections do to the owner's budget this period (negative: budget
        given back). A reset not yet weighed against what OpenRouter counted gives nothing
        back yet. System keys have none."""
        if user_id is None:
            return Decimal(0)
        cursor = await self._conn.execute(
            "select coalesce(sum(coalesce(budget_effect_usd, greatest(amount_usd, 0))), 0)"
            " as total from usage_adjustments where user_id = %s and period = %s",
            (user_id, period),
        )
        row = await cursor.fetchone()
        assert row is not None
        return Decimal(row["total"])  # type: ignore[arg-type]

    async def unweighed_adjustments(self, user_id: str, period: date) -> list[tuple[int, Decimal]]:
        """Adjustments whose effect on the budget is not set yet: (id, amount), in order."""
        cursor = await self._conn.execute(
            "select id, amount_usd from usage_adjustments where user_id = %s and period = %s"
            " and budget_effect_usd is null order by id",
            (user_id, period),
        )
        return [(int(r["id"]), Decimal(r["amount_usd"])) for r in await cursor.fetchall()]  # type: ignore[call-overload, arg-type]

    async def weigh_adjustment(self, adjustment_id: int, effect: Decimal) -> None:
        await self._conn.execute(
            "update usage_adjustments set budget_effect_usd = %s"
            " where id = %s and budget_effect_usd is null",
            (effect, adjustment_id),
        )

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

    async def keys_in_play(self, owner: str) -> list[KeyRecord]:
        """The owner's keys that may still spend, or still be billed (revoked, not yet
        settled), oldest first."""
        return await self._many(
            KeyRecord,
            "select * from api_keys where owner = %s and (state in ('current', 'previous',"
            " 'pending') or (state = 'revoked' and deleted_at is null"
            " and openrouter_hash is not null)) order by created_at, id",
            (owner,),
        )

    async def settled_spend(self, owner: str, period: date) -> Decimal:
        """What the owner's settled keys (revoked, final usage read) spent in `period`."""
        cursor = await self._conn.execute(
            "select coalesce(sum(final_usage_usd), 0) as spent from api_keys"
            " where owner = %s and final_usage_period = %s and final_usage_usd is not null",
            (owner, period),
        )
        row = await cursor.fetchone()
        assert row is not None
        return Decimal(row["spent"])  # type: ignore[arg-type]

    async def ledger_spent(self, user_id: str, period: date) -> Decimal:
        """What services reported the user spent in `period` (events only, before resets)."""
        cursor = await self._conn.execute(
            "select coalesce(sum(spent_usd), 0) as spent from usage_totals"
            " where user_id = %s and period = %s",
            (user_id, period),
        )
        row = await cursor.fetchone()
        assert row is not None
        return Decimal(row["spent"])  # type: ignore[arg-type]

    async def record_lowered(
        self,
        key_id: UUID,
        *,
        settle_s: float,
        limit_usd: Decimal | None = None,
        set_limit: bool = False,
        disable: bool = False,
        period: date | None = None,
        usage_usd: Decimal | None = None,
    ) -> KeyRecord:
        """After OpenRouter confirmed a lower limit (or a disable): record it, keeping what the
        key was allowed before as its ceiling for settle_s, since requests admitted under it
        are billed when they complete; and never below what it had already been billed when
        OpenRouter confirmed (usage_usd), which earlier requests may have pushed past its
        limit. A ceiling still running is never shortened."""
        return await self._one(
            KeyRecord,
            "update api_keys k set ceiling_usd = n.ceiling,"
            " ceiling_until = case when n.ceiling is null then k.ceiling_until"
            "  else greatest(k.ceiling_until, now() + make_interval(secs => %(settle)s)) end,"
            " limit_usd = case when %(set_limit)s then %(limit)s else k.limit_usd end,"
            " limit_period = coalesce(%(period)s, k.limit_period),"
            " disabled_at = case when %(disable)s and not k.disabled then now()"
            "  else k.disabled_at end,"
            " disabled = k.disabled or %(disable)s"
            " from (select id, greatest(case when ceiling_until > now() then ceiling_usd end,"
            "   case when not disabled then coalesce(limit_usd, 'Infinity'::numeric) end,"
            "   %(usage)s::numeric) as ceiling from api_keys where id = %(id)s for update) n"
            " where k.id = n.id returning k.*",
            {
                "settle": settle_s,
                "set_limit": set_limit,
                "limit": limit_usd,
                "period": period,
                "disable": disable,
                "usage": usage_usd,
                "id": key_id,
            },
        )

    async def record_raise(
        self,
        key_id: UUID,
        *,
        limit_usd: Decimal | None,
        enable: bool = False,
        period: date | None = None,
    ) -> KeyRecord:
        """Before OpenRouter is told: a higher limit (or an enable), pending until confirmed."""
        return await self._one(
            KeyRecord,
            "update api_keys set limit_usd = %s, limit_period = coalesce(%s, limit_period),"
            " disabled = case when %s then false else disabled end,"
            " disabled_at = case when %s then null else disabled_at end,"
            " openrouter_sync_pending = true where id = %s returning *",
            (limit_usd, period, enable, enable, key_id),
        )

    async def mark_synced(self, key_id: UUID) -> None:
        await self._conn.execute(
            "update api_keys set openrouter_sync_pending = false where id = %s", (key_id,)
        )

    async def set_limit_period(self, key_id: UUID, period: date) -> None:
        await self._conn.execute(
            "update api_keys set limit_period = %s where id = %s", (period, key_id)
        )

    async def observe(self, key_id: UUID, *, usage_usd: Decimal, period: date) -> None:
        """The key's usage this month as OpenRouter just reported it: evidence of its spend
        should it vanish. Usage only grows within a month, so an older reading never wins."""
        await self._conn.execute(
            "update api_keys set observed_usage_usd = case when observed_period = %(period)s"
            "  then greatest(observed_usage_usd, %(usage)s) else %(usage)s end,"
            " observed_period = %(period)s, observed_at = now() where id = %(id)s",
            {"usage": usage_usd, "period": period, "id": key_id},
        )

    async def observe_many(self, usage_by_hash: dict[str, Decimal], period: date) -> int:
        """Record many keys' usage this month at once (from a listing of every key)."""
        if not usage_by_hash:
            return 0
        # Rows locked elsewhere (an operation writing the key) are skipped, not waited for: an
        # observation is evidence, not a change, and waiting in no fixed order can deadlock.
        cursor = await self._conn.execute(
            "with seen as (select k.id, o.usage from api_keys k"
            "  join unnest(%s::text[], %s::numeric[]) as o(hash, usage)"
            "  on k.openrouter_hash = o.hash order by k.id for update of k skip locked)"
            " update api_keys k set observed_usage_usd = case when k.observed_period = %s"
            "  then greatest(k.observed_usage_usd, seen.usage) else seen.usage end,"
            " observed_period = %s, observed_at = now() from seen where k.id = seen.id",
            (list(usage_by_hash), list(usage_by_hash.values()), period, period),
        )
        return cursor.rowcount

    async def record_final(
        self, key_id: UUID, *, usage_usd: Decimal, period: date, source: str
    ) -> KeyRecord:
        """The key's settled spend in `period`; set once."""
        return await self._one(
            KeyRecord,
            "update api_keys set final_usage_usd = coalesce(final_usage_usd, %s),"
            " final_usage_period = coalesce(final_usage_period, %s),"
            " final_usage_source = coalesce(final_usage_source, %s) where id = %s returning *",
            (usage_usd, period, source, key_id),
        )

    async def mark_deleted(self, key_id: UUID) -> KeyRecord:
        return await self._one(
            KeyRecord,
            "update api_keys set deleted_at = coalesce(deleted_at, now()),"
            " openrouter_sync_pending = false where id = %s returning *",
            (key_id,),
        )

    async def plan_key_limit(self, key_id: UUID, *, limit_usd: Decimal | None) -> KeyRecord:
        """The limit a key not yet made will be created with."""
        return await self._one(
            KeyRecord,
            "update api_keys set limit_usd = %s where id = %s and state = 'pending' returning *",
            (limit_usd, key_id),
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
        """The current key steps down: in its grace period, or (no grace) revoked at once."""
        await self._conn.execute(
            "update api_keys set superseded_at = now(),"
            " state = case when %(grace)s > 0 then 'previous' else 'revoked' end,"
            " grace_until = case when %(grace)s > 0"
            "  then now() + make_interval(secs => %(grace)s) end,"
            " revoked_at = case when %(grace)s > 0 then null else now() end"
            " where id = %(id)s and state = 'current'",
            {"grace": grace_seconds, "id": key_id},
        )

    async def make_current(self, key_id: UUID) -> KeyRecord:
        return await self._one(
            KeyRecord,
            "update api_keys set state = 'current', activated_at = now()"
            " where id = %s and state = 'pending' returning *",
            (key_id,),
        )

    async def mark_revoked(self, key_id: UUID) -> KeyRecord:
        """No longer usable; its settlement (final usage, deletion at OpenRouter) follows."""
        return await self._one(
            KeyRecord,
            "update api_keys set state = 'revoked', revoked_at = coalesce(revoked_at, now()),"
            " grace_until = null where id = %s returning *",
            (key_id,),
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
        month by itself, so these keys need no call. Keys with an operation in progress, other
        keys still in play (a grace period, a settlement), or resets in `period` are left to
        the per-owner restore."""
        cursor = await self._conn.execute(
            "update api_keys k set limit_period = %(period)s, spent_before_usd = 0"
            " where k.state = 'current' and k.limit_period < %(period)s"
            " and not k.disabled and not k.openrouter_sync_pending"
            " and not exists (select 1 from api_keys o where o.owner = k.owner and o.id <> k.id"
            "  and (o.state in ('previous', 'pending') or (o.state = 'revoked'"
            "   and o.deleted_at is null and o.openrouter_hash is not null)))"
            " and k.limit_usd is not distinct from (case when k.user_id is null"
            "  then %(system)s::numeric else (select user_budget_usd(u.user_id,"
            "  t.monthly_budget_usd, %(period)s) from users u"
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

    async def enqueue_owners_of_tier(self, job_id: UUID, tier: str) -> int:
        """Put every user of the tier who has a current key into the job."""
        cursor = await self._conn.execute(
            "insert into work_items (job_id, item)"
            " select %s, k.owner from api_keys k join users u on u.user_id = k.user_id"
            " where k.state = 'current' and u.tier = %s on conflict do nothing",
            (job_id, tier),
        )
        return cursor.rowcount

    async def known_openrouter_names(self) -> dict[str, KeyRecord]:
        keys = await self._many(KeyRecord, "select * from api_keys", ())
        return {key.openrouter_name: key for key in keys}

    async def count_at_openrouter(self) -> int:
        """Keys that may exist at OpenRouter under our names: what a listing will hold."""
        cursor = await self._conn.execute(
            "select count(*) as n from api_keys where openrouter_hash is not null"
            " and deleted_at is null"
        )
        row = await cursor.fetchone()
        return int(row["n"]) if row else 0  # type: ignore[call-overload]

    async def by_openrouter_names(self, names: list[str]) -> dict[str, KeyRecord]:
        keys = await self._many(
            KeyRecord, "select * from api_keys where openrouter_name = any(%s)", (names,)
        )
        return {key.openrouter_name: key for key in keys}

    async def live_keys_not_listed(self, job_id: UUID, *, before: datetime) -> list[KeyRecord]:
        """Keys the database calls live, made before `before`, that no page of the reconcile
        job `job_id` listed (each page's result holds the hashes it saw)."""
        return await self._many(
            KeyRecord,
            "with seen as (select distinct h.hash from work_items w"
            "  cross join lateral jsonb_array_elements_text(w.result -> 'hashes') as h(hash)"
            "  where w.job_id = %s and w.status = 'done' and starts_with(w.item, 'page/'))"
            " select k.* from api_keys k left join seen on seen.hash = k.openrouter_hash"
            " where seen.hash is null and k.state in ('current', 'previous', 'pending')"
            " and k.openrouter_hash is not null and k.created_at < %s"
            " order by k.owner, k.created_at",
            (job_id, before),
        )

    async def live_keys(self) -> list[KeyRecord]:
        """Keys the database says exist at OpenRouter and may spend."""
        return await self._many(
            KeyRecord,
            "select * from api_keys where state in ('current', 'previous', 'pending')"
            " and openrouter_hash is not null order by owner, created_at",
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

    async def count_attempt(self, operation_id: UUID) -> OperationRecord | None:
        """One more invocation works on the operation (its owner's lease is held)."""
        return await self._maybe(
            OperationRecord,
            "update key_operations set attempts = attempts + 1, updated_at = now()"
            " where id = %s and status in ('started', 'planned', 'key_created', 'activated')"
            " returning *",
            (operation_id,),
        )

    # ----- owner leases -----

    async def claim_owner(self, owner: str, holder: UUID, *, lease_s: int) -> bool:
        """Take the owner's lease if no one holds it. Whoever takes it applies everything
        current, so a change flagged before (dirty) is covered and the flag is cleared."""
        cursor = await self._conn.execute(
            "insert into owner_leases as l (owner, holder, lease_until)"
            " values (%(owner)s, %(holder)s, now() + make_interval(secs => %(lease)s))"
            " on conflict (owner) do update set holder = excluded.holder,"
            "  lease_until = excluded.lease_until, dirty = false, updated_at = now()"
            "  where l.lease_until is null or l.lease_until < now()"
            " returning holder",
            {"owner": owner, "holder": holder, "lease": lease_s},
        )
        return await cursor.fetchone() is not None

    async def claim_or_flag_owner(self, owner: str, holder: UUID, *, lease_s: int) -> bool:
        """Take the owner's lease, or, in the same statement, tell its holder that something
        changed (dirty): the holder applies it before releasing. True when taken."""
        cursor = await self._conn.execute(
            "insert into owner_leases as l (owner, holder, lease_until)"
            " values (%(owner)s, %(holder)s, now() + make_interval(secs => %(lease)s))"
            " on conflict (owner) do update set"
            "  holder = case when l.lease_until is null or l.lease_until < now()"
            "   then excluded.holder else l.holder end,"
            "  lease_until = case when l.lease_until is null or l.lease_until < now()"
            "   then excluded.lease_until else l.lease_until end,"
            "  dirty = not (l.lease_until is null or l.lease_until < now()),"
            "  updated_at = now()"
            " returning holder = %(holder)s as claimed",
            {"owner": owner, "holder": holder, "lease": lease_s},
        )
        row = await cursor.fetchone()
        assert row is not None
        return bool(row["claimed"])

    async def renew_owner(self, owner: str, holder: UUID, *, lease_s: int) -> bool:
        """Extend the lease if it is still ours: checked before every raise at OpenRouter."""
        cursor = await self._conn.execute(
            "update owner_leases set lease_until = now() + make_interval(secs => %s)"
            " where owner = %s and holder = %s and lease_until > now() returning owner",
            (lease_s, owner, holder),
        )
        return await cursor.fetchone() is not None

    async def release_owner(
        self, owner: str, holder: UUID, *, tend_at: datetime | None, lease_s: int
    ) -> bool:
        """Let go of the owner, unless a change arrived meanwhile (dirty): then keep the lease,
        clear the flag and answer False, so the holder applies that change first."""
        cursor = await self._conn.execute(
            "with prior as (select owner, dirty from owner_leases"
            "  where owner = %(owner)s and holder = %(holder)s for update)"
            " update owner_leases l set dirty = false, tend_at = %(tend_at)s,"
            "  lease_until = case when prior.dirty"
            "   then now() + make_interval(secs => %(lease)s) end,"
            "  holder = case when prior.dirty then l.holder end, updated_at = now()"
            " from prior where l.owner = prior.owner returning prior.dirty",
            {"owner": owner, "holder": holder, "tend_at": tend_at, "lease": lease_s},
        )
        row = await cursor.fetchone()
        return row is None or not row["dirty"]

    async def abandon_owner(self, owner: str, holder: UUID) -> None:
        """Release after a failure: a flagged change stays flagged for the next run."""
        await self._conn.execute(
            "update owner_leases set lease_until = null, holder = null,"
            " tend_at = least(coalesce(tend_at, now()), now() + interval '1 minute'),"
            " updated_at = now() where owner = %s and holder = %s",
            (owner, holder),
        )

    async def owner_flagged(self, owner: str) -> bool:
        cursor = await self._conn.execute(
            "select dirty from owner_leases where owner = %s", (owner,)
        )
        row = await cursor.fetchone()
        return row is not None and bool(row["dirty"])

    async def owners_to_tend(self, *, limit: int) -> list[str]:
        """Owners whose keys need attention now (a grace or settlement ended, a change was
        flagged) and whom no one holds."""
        cursor = await self._conn.execute(
            "select due.owner from ("
            "  select owner, tend_at as due_at from owner_leases where tend_at <= now() or dirty"
            "  union all select owner, grace_until from api_keys"
            "   where state = 'previous' and grace_until <= now()"
            "  union all select owner, coalesce(ceiling_until, revoked_at) from api_keys"
            "   where state = 'revoked' and deleted_at is null and openrouter_hash is not null"
            "   and (ceiling_until is null or ceiling_until <= now())"
            " ) due left join owner_leases l on l.owner = due.owner"
            " where l.lease_until is null or l.lease_until < now()"
            " group by due.owner order by min(due.due_at) nulls first limit %s",
            (limit,),
        )
        return [str(row["owner"]) for row in await cursor.fetchall()]

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
        """Open operations whose owner no one holds: an invocation died in the middle."""
        return await self._many(
            OperationRecord,
            "select o.* from key_operations o left join owner_leases l on l.owner = o.owner"
            " where o.status in ('started', 'planned', 'key_created', 'activated')"
            " and (l.lease_until is null or l.lease_until < now())"
            " order by o.updated_at limit %s",
            (limit,),
        )
