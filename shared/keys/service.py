"""The key lifecycle: creation and rotation as resumable sagas, revocation, reveal.

An operation (a create or a rotation) moves through persisted states, one step at a time:

    started      plan the budget: what the owner may still spend this UTC month
    planned      freeze the old key to its grace allowance; create the new key at OpenRouter
    key_created  the new secret is sealed in the database
    activated    the new key is current; the old one, if any, is in its grace period
    completed    the old key is deleted at OpenRouter and revoked here      (or: failed)

Every step is idempotent and is committed with its audit row before the next begins, so any
later invocation (the same request retried, the next request for that owner, the job) picks up
where a crashed one stopped. The new key's OpenRouter name carries its id: a create whose
response was lost is found by name and replaced, never duplicated. Only the holder of an
operation's lease advances it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal
from uuid import UUID, uuid4

import psycopg

from shared.audit.repository import AuditRepository
from shared.crypto.envelope import fingerprint, secret_context
from shared.errors import BadGateway, Conflict, NotFound, ServiceUnavailable, ValidationFailed
from shared.keys.repository import KeyRecord, KeyRepository, OperationRecord
from shared.observability import logger
from shared.openrouter.errors import (
    OpenRouterError,
    OpenRouterNotFound,
    OpenRouterOutcomeUnknown,
    OpenRouterRateLimited,
    OpenRouterUnavailable,
)
from shared.runtime import Runtime

Checkpoint = Callable[[str], None]
_MICRO_DOLLAR = Decimal("0.000001")


def _no_checkpoint(_: str) -> None:
    """Production: steps run straight through. Tests inject crashes at named checkpoints."""


def current_period(now: datetime | None = None) -> date:
    """The UTC calendar month, as OpenRouter's monthly limits count it."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return date(moment.year, moment.month, 1)


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose key: a user of the platform, or a named system consumer."""

    kind: str  # "user" or "system"
    name: str

    @classmethod
    def user(cls, user_id: str) -> Owner:
        return cls("user", user_id)

    @classmethod
    def system(cls, name: str) -> Owner:
        return cls("system", name)

    @classmethod
    def parse(cls, owner: str) -> Owner:
        kind, _, name = owner.partition(":")
        return cls(kind, name)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def user_id(self) -> str | None:
        return self.name if self.kind == "user" else None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: KeyRecord
    operation: OperationRecord
    secret: str | None  # only for the operation's own requester
    previous_key: KeyRecord | None = None


@dataclass
class ReconcileReport:
    deleted_at_openrouter: list[str] = field(default_factory=list)
    revoked_missing: list[UUID] = field(default_factory=list)
    reprovisioned: list[UUID] = field(default_factory=list)
    too_young_to_judge: int = 0


def _openrouter_failure(error: OpenRouterError, operation_id: UUID) -> ServiceUnavailable:
    details = {"operation_id": str(operation_id), "openrouter_status": error.status_code}
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    if isinstance(error, OpenRouterOutcomeUnknown):
        return ServiceUnavailable(
            "OpenRouter did not confirm the new key; the operation will be completed by a "
            "retry or the next job run",
            code="openrouter_outcome_unknown",
            details=details,
            headers=headers,
        )
    if isinstance(error, OpenRouterRateLimited):
        return ServiceUnavailable(
            "OpenRouter is rate-limiting us",
            code="openrouter_rate_limited",
            details=details,
            headers=headers,
        )
    return ServiceUnavailable(
        f"OpenRouter failed: {error.message}",
        code="openrouter_unavailable",
        details=details,
        headers=headers,
    )


class KeyLifecycleService:
    def __init__(self, runtime: Runtime, *, checkpoint: Checkpoint = _no_checkpoint) -> None:
        self._runtime = runtime
        self._checkpoint = checkpoint

    # ----- plumbing -----

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[tuple[KeyRepository, AuditRepository]]:
        async with self._runtime.database().connection() as conn, conn.transaction():
            yield KeyRepository(conn), AuditRepository(conn)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[KeyRepository]:
        async with self._runtime.database().connection() as conn:
            yield KeyRepository(conn)

    def _name_for(self, key_id: UUID) -> str:
        return f"{self._runtime.settings.openrouter_key_name_prefix}-{key_id}"

    async def _budget_of(self, keys: KeyRepository, owner: Owner) -> Decimal | None:
        if owner.user_id is not None:
            return await keys.monthly_budget_of_user(owner.user_id)
        return self._runtime.settings.system_key_monthly_budget_usd

    def open_secret(self, key: KeyRecord) -> str:
        if key.sealed is None:
            raise NotFound("this key has no secret", code="key_has_no_secret")
        return self._runtime.sealer().open(key.sealed, secret_context(key.owner, key.id))

    # ----- reads -----

    async def get_key(self, key_id: UUID) -> KeyRecord:
        async with self._read() as keys:
            key = await keys.get_key(key_id)
        if key is None:
            raise NotFound("no key has this id", code="key_not_found")
        return key

    async def current_key(self, owner: Owner) -> KeyRecord:
        async with self._read() as keys:
            key = await keys.current_key(owner.key)
        if key is None:
            raise NotFound(f"{owner.key} has no current key", code="no_current_key")
        return key

    async def open_operation(self, owner: Owner) -> OperationRecord | None:
        async with self._read() as keys:
            return await keys.open_operation_of(owner.key)

    async def history(self, owner: Owner) -> list[KeyRecord]:
        async with self._read() as keys:
            return await keys.keys_of(owner.key)

    async def get_operation(self, operation_id: UUID) -> OperationRecord:
        async with self._read() as keys:
            operation = await keys.get_operation(operation_id)
        if operation is None:
            raise NotFound("no key operation has this id", code="operation_not_found")
        return operation

    async def reveal(
        self, key: KeyRecord, *, actor: str, request_id: str | None, reason: str | None = None
    ) -> str:
        secret = self.open_secret(key)
        async with self._transaction() as (_, audit):
            await audit.append(
                actor=actor,
                action="key.revealed",
                target=f"key:{key.id}",
                reason=reason,
                request_id=request_id,
                fingerprint=key.fingerprint,
            )
        return secret

    # ----- starting operations -----

    async def create_key(
        self,
        owner: Owner,
        *,
        actor: str,
        tier: str | None = None,
        rotation_policy: str | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> IssuedKey:
        replay = await self._replay(actor, idempotency_key)
        if replay is not None:
            return replay
        async with self._read() as keys:
            current = await keys.current_key(owner.key)
        if current is not None:
            raise Conflict(
                f"{owner.key} already has a current key; rotate it instead",
                code="key_exists",
                details={"key_id": str(current.id)},
            )
        operation = await self._start(
            "create",
            owner,
            old_key=None,
            grace_seconds=0,
            actor=actor,
            tier=tier,
            rotation_policy=rotation_policy,
            idempotency_key=idempotency_key,
            reason=None,
            request_id=request_id,
        )
        return await self._run_to_result(operation, actor)

    async def rotate_key(
        self,
        owner: Owner,
        *,
        actor: str,
        grace_seconds: int | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> IssuedKey:
        replay = await self._replay(actor, idempotency_key)
        if replay is not None:
            return replay
        await self._resume_stalled_operation_of(owner)
        old = await self.current_key(owner)
        grace = (
            self._runtime.settings.rotation_grace_seconds
            if grace_seconds is None
            else grace_seconds
        )
        operation = await self._start(
            "rotate",
            owner,
            old_key=old,
            grace_seconds=grace,
            actor=actor,
            tier=None,
            rotation_policy=None,
            idempotency_key=idempotency_key,
            reason=reason,
            request_id=request_id,
        )
        return await self._run_to_result(operation, actor)

    async def _replay(self, actor: str, idempotency_key: str | None) -> IssuedKey | None:
        if idempotency_key is None:
            return None
        async with self._read() as keys:
            operation = await keys.operation_by_idempotency_key(actor, idempotency_key)
        if operation is None:
            return None
        return await self._run_to_result(operation, actor)

    async def _resume_stalled_operation_of(self, owner: Owner) -> None:
        """An earlier invocation may have died mid-operation: finish it before starting anew."""
        async with self._read() as keys:
            stalled = await keys.open_operation_of(owner.key)
        if stalled is not None:
            # If someone holds its lease, _start reports operation_in_progress.
            with contextlib.suppress(Conflict):
                await self.advance(stalled.id)

    async def _start(
        self,
        kind: str,
        owner: Owner,
        *,
        old_key: KeyRecord | None,
        grace_seconds: int,
        actor: str,
        tier: str | None,
        rotation_policy: str | None,
        idempotency_key: str | None,
        reason: str | None,
        request_id: str | None,
    ) -> OperationRecord:
        key_id = uuid4()
        try:
            async with self._transaction() as (keys, audit):
                if owner.user_id is not None:
                    await keys.ensure_user(
                        owner.user_id, tier=tier, rotation_policy=rotation_policy, actor=actor
                    )
                if kind == "create" and await keys.current_key(owner.key) is not None:
                    raise Conflict(
                        f"{owner.key} already has a current key; rotate it instead",
                        code="key_exists",
                    )
                await keys.insert_pending_key(
                    key_id=key_id,
                    owner=owner.key,
                    user_id=owner.user_id,
                    name=self._name_for(key_id),
                    period=current_period(),
                )
                operation = await keys.insert_operation(
                    kind=kind,
                    owner=owner.key,
                    old_key_id=None if old_key is None else old_key.id,
                    new_key_id=key_id,
                    grace_seconds=grace_seconds,
                    requested_by=actor,
                    idempotency_key=idempotency_key,
                    reason=reason,
                    request_id=request_id,
                )
                await audit.append(
                    actor=actor,
                    action=f"key.{kind}.requested",
                    target=f"key:{key_id}",
                    reason=reason,
                    request_id=request_id,
                    details={
                        "operation_id": str(operation.id),
                        "owner": owner.key,
                        "replaces": None if old_key is None else str(old_key.id),
                    },
                )
        except psycopg.errors.ForeignKeyViolation as exc:
            raise ValidationFailed(
                f"unknown subscription tier {tier!r}", code="unknown_tier"
            ) from exc
        except psycopg.errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name
            async with self._read() as keys:
                if constraint == "key_operations_idempotency" and idempotency_key is not None:
                    existing = await keys.operation_by_idempotency_key(actor, idempotency_key)
                    if existing is not None:
                        return existing
                open_operation = await keys.open_operation_of(owner.key)
            raise Conflict(
                f"a key operation for {owner.key} is already in progress",
                code="operation_in_progress",
                details={
                    "operation_id": None if open_operation is None else str(open_operation.id)
                },
                headers={"Retry-After": "1"},
            ) from exc
        return operation

    async def _run_to_result(self, operation: OperationRecord, actor: str) -> IssuedKey:
        if operation.is_open:
            operation = await self.advance(operation.id)
        if operation.status == "failed":
            raise BadGateway(
                operation.error_message or "the key operation failed",
                code=operation.error_code or "operation_failed",
                details={"operation_id": str(operation.id)},
            )
        assert operation.new_key_id is not None
        async with self._read() as keys:
            key = await keys.get_key(operation.new_key_id)
            previous = (
                None if operation.old_key_id is None else await keys.get_key(operation.old_key_id)
            )
        assert key is not None
        # The secret goes back only to whoever asked for this operation (a retry after a lost
        # response); anyone else learns what happened, not the key.
        secret = self.open_secret(key) if operation.requested_by == actor else None
        return IssuedKey(key=key, operation=operation, secret=secret, previous_key=previous)

    # ----- advancing operations -----

    async def advance(self, operation_id: UUID) -> OperationRecord:
        """Run an operation's remaining steps (up to a grace period still running)."""
        lease_s = self._runtime.settings.key_operation_lease_s
        async with self._read() as keys:
            operation = await keys.claim_operation(operation_id, lease_s=lease_s)
        if operation is None:
            existing = await self.get_operation(operation_id)
            if existing.is_open:
                raise Conflict(
                    "another invocation is working on this operation",
                    code="operation_in_progress",
                    details={"operation_id": str(operation_id)},
                    headers={"Retry-After": "1"},
                )
            return existing
        try:
            while operation.is_open:
                if operation.status == "started":
                    operation = await self._plan(operation)
                elif operation.status == "planned":
                    operation = await self._create_at_openrouter(operation)
                elif operation.status == "key_created":
                    operation = await self._activate(operation)
                elif await self._grace_over(operation):
                    operation = await self._finalize(operation)
                else:
                    break
            return operation
        finally:
            async with self._read() as keys:
                await keys.release_operation(operation_id)

    async def advance_due_operations(self, *, limit: int = 50) -> int:
        """The job: resume crashed operations and finish rotations whose grace has ended."""
        async with self._read() as keys:
            due = await keys.operations_to_advance(limit=limit)
        advanced = 0
        for operation in due:
            try:
                await self.advance(operation.id)
                advanced += 1
            except (Conflict, ServiceUnavailable, BadGateway) as exc:
                # One stuck operation must not stop the others; it is retried next run.
                logger.warning(
                    "key operation not advanced",
                    extra={"operation_id": str(operation.id), "error_code": exc.code},
                )
        return advanced

    async def _plan(self, operation: OperationRecord) -> OperationRecord:
        owner = Owner.parse(operation.owner)
        period = current_period()
        async with self._read() as keys:
            budget = await self._budget_of(keys, owner)
            old = None if operation.old_key_id is None else await keys.get_key(operation.old_key_id)
            spent_through_revoked = await keys.last_spent_in_period(owner.key, period)
        old_usage: Decimal | None = None
        spent = spent_through_revoked
        if old is not None and budget is not None and old.openrouter_hash is not None:
            old_usage = await self._usage_this_month(old)
            before = old.spent_before_usd if old.limit_period == period else Decimal(0)
            spent = max(spent, before + old_usage)
        allowance = Decimal(0)
        new_limit: Decimal | None = None
        if budget is not None:
            remaining = max(budget - spent, Decimal(0))
            if old is not None and operation.grace_seconds > 0:
                fraction = self._runtime.settings.rotation_grace_budget_fraction
                allowance = (remaining * fraction).quantize(_MICRO_DOLLAR, rounding=ROUND_DOWN)
            new_limit = remaining - allowance
        assert operation.new_key_id is not None
        async with self._transaction() as (keys, audit):
            await keys.set_key_limit(
                operation.new_key_id, limit_usd=new_limit, spent_before_usd=spent + allowance
            )
            planned = await keys.plan_operation(
                operation.id,
                budget_usd=budget,
                spent_at_plan_usd=spent,
                old_usage_at_plan_usd=old_usage,
                grace_allowance_usd=allowance,
            )
            await audit.append(
                actor="service",
                action=f"key.{operation.kind}.planned",
                target=f"key:{operation.new_key_id}",
                request_id=operation.request_id,
                details={
                    "operation_id": str(operation.id),
                    "budget_usd": None if budget is None else str(budget),
                    "spent_usd": str(spent),
                    "new_limit_usd": None if new_limit is None else str(new_limit),
                    "grace_allowance_usd": str(allowance),
                },
            )
        self._checkpoint("after_plan")
        return planned

    async def _usage_this_month(self, key: KeyRecord) -> Decimal:
        """The key's spend in the current UTC month, as OpenRouter counts it."""
        assert key.openrouter_hash is not None
        try:
            remote = await self._runtime.openrouter().get_key(key.openrouter_hash)
        except OpenRouterNotFound:
            # Gone from OpenRouter: assume it spent all it could, never less.
            return key.limit_usd if key.limit_usd is not None else Decimal(0)
        return remote.usage_monthly

    async def _create_at_openrouter(self, operation: OperationRecord) -> OperationRecord:
        client = self._runtime.openrouter()
        async with self._read() as keys:
            assert operation.new_key_id is not None
            new = await keys.get_key(operation.new_key_id)
            old = None if operation.old_key_id is None else await keys.get_key(operation.old_key_id)
        assert new is not None
        if (
            old is not None
            and old.openrouter_hash is not None
            and operation.budget_usd is not None
            and operation.old_usage_at_plan_usd is not None
        ):
            # From here the old key may spend only its grace allowance, so that old and new
            # together never exceed what is left of the month's budget.
            self._checkpoint("before_freeze_old")
            try:
                await client.update_key(
                    old.openrouter_hash,
                    limit=operation.old_usage_at_plan_usd + (operation.grace_allowance_usd or 0),
                )
            except OpenRouterNotFound:
                pass
            except OpenRouterError as error:
                raise _openrouter_failure(error, operation.id) from error
            self._checkpoint("after_freeze_old")
        if operation.create_sent_at is not None:
            await self._discard_unconfirmed_create(operation, new)
        async with self._read() as keys:
            await keys.mark_create_sent(operation.id)
        self._checkpoint("before_openrouter_create")
        try:
            created = await client.create_key(
                name=new.openrouter_name,
                limit=new.limit_usd,
                limit_reset="monthly",
                include_byok_in_limit=False,
            )
        except OpenRouterOutcomeUnknown as unknown:
            raise _openrouter_failure(unknown, operation.id) from unknown
        except (OpenRouterRateLimited, OpenRouterUnavailable) as transient:
            raise _openrouter_failure(transient, operation.id) from transient
        except OpenRouterError as refused:
            await self._abandon(operation, new, old, refused)
            raise BadGateway(
                f"OpenRouter refused the new key: {refused.message}",
                code="openrouter_refused",
                details={"operation_id": str(operation.id)},
            ) from refused
        self._checkpoint("after_openrouter_create")
        secret = created.secret.get_secret_value()
        sealed = self._runtime.sealer().seal(secret, secret_context(new.owner, new.id))
        key_fingerprint = fingerprint(secret)
        async with self._transaction() as (keys, audit):
            await keys.record_created_key(
                new.id,
                openrouter_hash=created.key.hash,
                label=created.key.label,
                sealed=sealed,
                fingerprint=key_fingerprint,
            )
            advanced = await keys.set_status(operation.id, expected="planned", status="key_created")
            await audit.append(
                actor="service",
                action="key.created_at_openrouter",
                target=f"key:{new.id}",
                request_id=operation.request_id,
                fingerprint=key_fingerprint,
                details={
                    "operation_id": str(operation.id),
                    "openrouter_hash": created.key.hash,
                    "limit_usd": None if new.limit_usd is None else str(new.limit_usd),
                },
            )
        self._checkpoint("after_record_secret")
        return advanced

    async def _discard_unconfirmed_create(self, operation: OperationRecord, new: KeyRecord) -> None:
        """A previous attempt sent POST /keys and never recorded the answer. If the key exists,
        its secret is lost with that answer: delete it, then create again (§3.5)."""
        client = self._runtime.openrouter()
        try:
            existing = [k for k in await client.list_all_keys() if k.name == new.openrouter_name]
            for key in existing:
                await client.delete_key(key.hash)
        except OpenRouterError as error:
            raise _openrouter_failure(error, operation.id) from error
        if existing:
            async with self._transaction() as (_, audit):
                await audit.append(
                    actor="service",
                    action="key.unconfirmed_create_discarded",
                    target=f"key:{new.id}",
                    request_id=operation.request_id,
                    details={
                        "operation_id": str(operation.id),
                        "openrouter_hashes": [k.hash for k in existing],
                    },
                )

    async def _abandon(
        self,
        operation: OperationRecord,
        new: KeyRecord,
        old: KeyRecord | None,
        error: OpenRouterError,
    ) -> None:
        """OpenRouter definitely refused the create: undo the freeze, record the failure."""
        if old is not None and old.openrouter_hash is not None and operation.budget_usd is not None:
            try:
                await self._runtime.openrouter().update_key(
                    old.openrouter_hash, limit=old.limit_usd
                )
            except OpenRouterError:
                logger.warning("could not restore the old key's limit", extra={"key": str(old.id)})
        async with self._transaction() as (keys, audit):
            await keys.mark_failed(new.id)
            await keys.fail_operation(
                operation.id, error_code="openrouter_refused", error_message=error.message
            )
            await audit.append(
                actor="service",
                action=f"key.{operation.kind}.failed",
                target=f"key:{new.id}",
                outcome="failed",
                request_id=operation.request_id,
                details={"operation_id": str(operation.id), "status": error.status_code},
            )

    async def _activate(self, operation: OperationRecord) -> OperationRecord:
        assert operation.new_key_id is not None
        try:
            async with self._transaction() as (keys, audit):
                if operation.old_key_id is not None:
                    await keys.supersede(
                        operation.old_key_id, grace_seconds=operation.grace_seconds
                    )
                new = await keys.make_current(operation.new_key_id)
                activated = await keys.set_status(
                    operation.id, expected="key_created", status="activated"
                )
                await audit.append(
                    actor="service",
                    action=f"key.{operation.kind}.activated",
                    target=f"key:{new.id}",
                    request_id=operation.request_id,
                    fingerprint=new.fingerprint,
                    details={
                        "operation_id": str(operation.id),
                        "superseded": None
                        if operation.old_key_id is None
                        else str(operation.old_key_id),
                        "grace_seconds": operation.grace_seconds,
                    },
                )
        except psycopg.errors.UniqueViolation:
            # A create raced another create of the same owner and lost: its key must not live.
            return await self._discard_losing_create(operation)
        self._checkpoint("after_activate")
        try:
            # Consumers need the new system key now, not after the grace period; if this
            # fails, completing the operation publishes it again.
            await self._publish_system_key(new)
        except ServiceUnavailable:
            logger.warning("system key not published yet", extra={"key_id": str(new.id)})
        return activated

    async def _discard_losing_create(self, operation: OperationRecord) -> OperationRecord:
        assert operation.new_key_id is not None
        new = await self.get_key(operation.new_key_id)
        if new.openrouter_hash is not None:
            await self._runtime.openrouter().delete_key(new.openrouter_hash)
        async with self._transaction() as (keys, audit):
            await keys.mark_revoked(new.id, final_usage_usd=Decimal(0))
            failed = await keys.fail_operation(
                operation.id,
                error_code="key_exists",
                error_message=f"{operation.owner} already has a current key",
            )
            await audit.append(
                actor="service",
                action="key.create.discarded",
                target=f"key:{new.id}",
                outcome="failed",
                request_id=operation.request_id,
                details={"operation_id": str(operation.id)},
            )
        return failed

    async def _publish_system_key(self, key: KeyRecord) -> None:
        """Before the operation completes, so that a failed write is retried with it."""
        publisher = self._runtime.system_key_publisher()
        owner = Owner.parse(key.owner)
        if publisher is None or owner.kind != "system" or key.openrouter_hash is None:
            return
        try:
            await publisher.publish(
                owner.name,
                secret=self.open_secret(key),
                key_id=key.id,
                openrouter_hash=key.openrouter_hash,
            )
        except Exception as exc:  # boto errors are many; any of them means "retry later"
            raise ServiceUnavailable(
                "the system key could not be written to Secrets Manager",
                code="secrets_manager_unavailable",
                details={"key_id": str(key.id)},
            ) from exc

    async def _grace_over(self, operation: OperationRecord) -> bool:
        if operation.old_key_id is None:
            return True
        old = await self.get_key(operation.old_key_id)
        return old.grace_until is None or old.grace_until <= datetime.now(UTC)

    async def _finalize(self, operation: OperationRecord) -> OperationRecord:
        client = self._runtime.openrouter()
        assert operation.new_key_id is not None
        new = await self.get_key(operation.new_key_id)
        old = None if operation.old_key_id is None else await self.get_key(operation.old_key_id)
        final_usage: Decimal | None = None
        new_limit = new.limit_usd
        new_spent_before = new.spent_before_usd
        try:
            if old is not None and old.openrouter_hash is not None and old.state != "revoked":
                self._checkpoint("before_revoke_old")
                if operation.budget_usd is not None:
                    # Stop it spending, then read what it spent during its grace period.
                    try:
                        await client.update_key(old.openrouter_hash, disabled=True)
                        final_usage = (await client.get_key(old.openrouter_hash)).usage_monthly
                    except OpenRouterNotFound:
                        final_usage = (operation.old_usage_at_plan_usd or Decimal(0)) + (
                            operation.grace_allowance_usd or Decimal(0)
                        )
                await client.delete_key(old.openrouter_hash)
                self._checkpoint("after_revoke_old")
                allowance = operation.grace_allowance_usd or Decimal(0)
                if (
                    operation.budget_usd is not None
                    and allowance > 0
                    and final_usage is not None
                    and new.openrouter_hash is not None
                ):
                    # The new key gets back whatever the old one did not spend of its allowance.
                    grace_spend = min(
                        max(final_usage - (operation.old_usage_at_plan_usd or 0), Decimal(0)),
                        allowance,
                    )
                    new_spent_before = (operation.spent_at_plan_usd or Decimal(0)) + grace_spend
                    new_limit = max(operation.budget_usd - new_spent_before, Decimal(0))
                    await client.update_key(new.openrouter_hash, limit=new_limit)
        except OpenRouterError as error:
            raise _openrouter_failure(error, operation.id) from error
        await self._publish_system_key(new)
        async with self._transaction() as (keys, audit):
            if old is not None and old.state != "revoked":
                await keys.mark_revoked(old.id, final_usage_usd=final_usage)
            await keys.set_key_limit(new.id, limit_usd=new_limit, spent_before_usd=new_spent_before)
            completed = await keys.set_status(
                operation.id, expected="activated", status="completed"
            )
            await audit.append(
                actor="service",
                action=f"key.{operation.kind}.completed",
                target=f"key:{new.id}",
                request_id=operation.request_id,
                fingerprint=None if old is None else old.fingerprint,
                details={
                    "operation_id": str(operation.id),
                    "revoked": None if old is None else str(old.id),
                    "new_limit_usd": None if new_limit is None else str(new_limit),
                },
            )
        self._checkpoint("after_complete")
        return completed

    # ----- scheduled rotation -----

    async def rotate_scheduled_keys(self, *, time_budget_s: float, batch: int = 50) -> int:
        """Rotate every key the monthly schedule covers (system keys, users on the monthly
        policy) that was not yet rotated this UTC month; stop when the time budget is spent.
        The next run continues: what is done is no longer selected."""
        deadline = time.monotonic() + time_budget_s
        rotated = 0
        while time.monotonic() < deadline:
            async with self._read() as keys:
                due = await keys.due_for_scheduled_rotation(current_period(), limit=batch)
            if not due:
                break
            progress = 0
            for key in due:
                if time.monotonic() >= deadline:
                    break
                try:
                    await self.rotate_key(
                        Owner.parse(key.owner),
                        actor="job:scheduled-rotation",
                        reason="scheduled monthly rotation",
                    )
                    rotated += 1
                    progress += 1
                except (Conflict, ServiceUnavailable, BadGateway, NotFound) as exc:
                    logger.warning(
                        "scheduled rotation skipped",
                        extra={"key_id": str(key.id), "error_code": exc.code},
                    )
            if progress == 0:
                break  # everything left failed this round; the next run retries
        return rotated

    # ----- master key rotation -----

    async def rewrap_all(self, *, actor: str, batch: int = 200) -> int:
        """Re-wrap every data key not wrapped by the current provider (after a master key
        rotation, or a move to KMS). The sealed secrets themselves are untouched."""
        sealer = self._runtime.sealer()
        rewrapped = 0
        while True:
            async with self._read() as keys:
                stale = await keys.sealed_not_under(sealer.current.name, limit=batch)
            if not stale:
                return rewrapped
            for key in stale:
                assert key.sealed is not None
                fresh = sealer.rewrap(key.sealed, secret_context(key.owner, key.id))
                async with self._transaction() as (keys, audit):
                    await keys.replace_sealed(key.id, fresh)
                    await audit.append(
                        actor=actor,
                        action="key.rewrapped",
                        target=f"key:{key.id}",
                        fingerprint=key.fingerprint,
                        details={"from": key.sealed.provider, "to": fresh.provider},
                    )
                rewrapped += 1

    # ----- reconciliation -----

    async def reconcile(self, *, actor: str, request_id: str | None) -> ReconcileReport:
        """Make OpenRouter and the database agree about every key under our name prefix.

        Keys at OpenRouter the database does not know (older than the safety age, since a
        create may be in flight) and keys the database already revoked are deleted there; keys
        the database calls live but OpenRouter no longer has are revoked here and, if they were
        an owner's current key, replaced.
        """
        settings = self._runtime.settings
        client = self._runtime.openrouter()
        prefix = f"{settings.openrouter_key_name_prefix}-"
        try:
            remote = [k for k in await client.list_all_keys() if k.name.startswith(prefix)]
        except OpenRouterError as error:
            raise _openrouter_failure(error, uuid4()) from error
        async with self._read() as keys:
            known = await keys.known_openrouter_names()
            live = await keys.live_keys()
        report = ReconcileReport()
        now = datetime.now(UTC)
        for key in remote:
            record = known.get(key.name)
            if record is not None and record.state in ("current", "previous", "pending"):
                continue
            if record is None and (
                key.created_at is None
                or (now - key.created_at).total_seconds() < settings.reconcile_orphan_min_age_s
            ):
                report.too_young_to_judge += 1
                continue
            await client.delete_key(key.hash)
            report.deleted_at_openrouter.append(key.hash)
            async with self._transaction() as (_, audit):
                await audit.append(
                    actor=actor,
                    action="reconcile.deleted_orphan",
                    target=f"openrouter:{key.hash}",
                    request_id=request_id,
                    details={
                        "name": key.name,
                        "database_state": None if record is None else record.state,
                    },
                )
        remote_hashes = {k.hash for k in remote}
        for record in live:
            if record.openrouter_hash in remote_hashes:
                continue
            async with self._transaction() as (keys, audit):
                await keys.mark_revoked(record.id, final_usage_usd=record.limit_usd)
                await audit.append(
                    actor=actor,
                    action="reconcile.missing_at_openrouter",
                    target=f"key:{record.id}",
                    request_id=request_id,
                    fingerprint=record.fingerprint,
                    details={"was": record.state},
                )
            report.revoked_missing.append(record.id)
            if record.state == "current":
                owner = Owner.parse(record.owner)
                replacement = await self.create_key(owner, actor=actor, request_id=request_id)
                report.reprovisioned.append(replacement.key.id)
        return report

    # ----- revocation and disabling -----

    async def revoke_key(
        self, key_id: UUID, *, actor: str, reason: str | None, request_id: str | None
    ) -> KeyRecord:
        """Delete at OpenRouter and mark revoked; revoking a revoked key changes nothing."""
        key = await self.get_key(key_id)
        if key.state in ("revoked", "failed"):
            return key
        if key.state == "pending":
            raise Conflict(
                "this key is still being created",
                code="operation_in_progress",
                headers={"Retry-After": "1"},
            )
        async with self._read() as keys:
            open_operation = await keys.open_operation_of(key.owner)
        if open_operation is not None and key.id in (
            open_operation.old_key_id,
            open_operation.new_key_id,
        ):
            raise Conflict(
                "this key is part of an operation in progress",
                code="operation_in_progress",
                details={"operation_id": str(open_operation.id)},
                headers={"Retry-After": "1"},
            )
        assert key.openrouter_hash is not None
        try:
            final_usage = await self._usage_this_month(key)
            await self._runtime.openrouter().delete_key(key.openrouter_hash)
        except OpenRouterError as error:
            raise _openrouter_failure(error, key.id) from error
        async with self._transaction() as (keys, audit):
            revoked = await keys.mark_revoked(key.id, final_usage_usd=final_usage)
            await audit.append(
                actor=actor,
                action="key.revoked",
                target=f"key:{key.id}",
                reason=reason,
                request_id=request_id,
                fingerprint=key.fingerprint,
            )
        return revoked

    async def set_disabled(
        self,
        key_id: UUID,
        *,
        disabled: bool,
        actor: str,
        reason: str | None,
        request_id: str | None,
    ) -> KeyRecord:
        key = await self.get_key(key_id)
        if key.state not in ("current", "previous") or key.openrouter_hash is None:
            raise Conflict(f"a {key.state} key cannot be changed", code="key_not_live")
        try:
            await self._runtime.openrouter().update_key(key.openrouter_hash, disabled=disabled)
        except OpenRouterError as error:
            raise _openrouter_failure(error, key.id) from error
        async with self._transaction() as (keys, audit):
            updated = await keys.set_disabled(key.id, disabled=disabled)
            await audit.append(
                actor=actor,
                action="key.disabled" if disabled else "key.enabled",
                target=f"key:{key.id}",
                reason=reason,
                request_id=request_id,
                fingerprint=key.fingerprint,
            )
        return updated
