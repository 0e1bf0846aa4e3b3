"""The key lifecycle's public operations: create, rotate, revoke, reveal, reconcile, schedule.

Creates and rotations run as sagas (shared/keys/saga.py); this module starts them, replays them
for retried requests, and reports their results.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

from shared.crypto.envelope import secret_context
from shared.db import sql_errors
from shared.errors import BadGateway, Conflict, NotFound, ValidationFailed
from shared.keys.domain import (
    Checkpoint,
    IssuedKey,
    Owner,
    ReconcileReport,
    current_period,
    no_checkpoint,
    openrouter_failure,
)
from shared.keys.repository import KeyRecord, OperationRecord
from shared.keys.saga import KeyOperationSaga
from shared.keys.store import KeyStore
from shared.metrics import KEY_REVEALS, KEYS_REVOKED, count
from shared.openrouter.errors import OpenRouterError
from shared.runtime import Runtime

__all__ = ["IssuedKey", "KeyLifecycleService", "Owner", "current_period"]


class KeyLifecycleService:
    def __init__(self, runtime: Runtime, *, checkpoint: Checkpoint = no_checkpoint) -> None:
        self._runtime = runtime
        self._store = KeyStore(runtime)
        self._saga = KeyOperationSaga(runtime, self._store, checkpoint=checkpoint)

    def open_secret(self, key: KeyRecord) -> str:
        return self._store.open_secret(key)

    async def advance(self, operation_id: UUID) -> OperationRecord:
        """Run an operation's remaining steps (up to a grace period still running)."""
        return await self._saga.advance(operation_id)

    async def advance_due_operations(self, *, limit: int = 50) -> int:
        """The job: resume crashed operations and finish rotations whose grace has ended."""
        return await self._saga.advance_due_operations(limit=limit)

    # ----- reads -----

    async def get_key(self, key_id: UUID) -> KeyRecord:
        return await self._store.get_key(key_id)

    async def current_key(self, owner: Owner) -> KeyRecord:
        async with self._store.read() as keys:
            key = await keys.current_key(owner.key)
        if key is None:
            raise NotFound(f"{owner.key} has no current key", code="no_current_key")
        return key

    async def open_operation(self, owner: Owner) -> OperationRecord | None:
        async with self._store.read() as keys:
            return await keys.open_operation_of(owner.key)

    async def history(self, owner: Owner) -> list[KeyRecord]:
        async with self._store.read() as keys:
            return await keys.keys_of(owner.key)

    async def get_operation(self, operation_id: UUID) -> OperationRecord:
        return await self._store.get_operation(operation_id)

    async def reveal(
        self, key: KeyRecord, *, actor: str, request_id: str | None, reason: str | None = None
    ) -> str:
        secret = self._store.open_secret(key)
        async with self._store.transaction() as (_, audit):
            await audit.append(
                actor=actor,
                action="key.revealed",
                target=f"key:{key.id}",
                reason=reason,
                request_id=request_id,
                fingerprint=key.fingerprint,
            )
        count(KEY_REVEALS)
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
        async with self._store.read() as keys:
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
        async with self._store.read() as keys:
            operation = await keys.operation_by_idempotency_key(actor, idempotency_key)
        if operation is None:
            return None
        return await self._run_to_result(operation, actor)

    async def _resume_stalled_operation_of(self, owner: Owner) -> None:
        """An earlier invocation may have died mid-operation: finish it before starting anew."""
        async with self._store.read() as keys:
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
            async with self._store.transaction() as (keys, audit):
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
                    name=self._store.name_for(key_id),
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
        except sql_errors.ForeignKeyViolation as exc:
            raise ValidationFailed(
                f"unknown subscription tier {tier!r}", code="unknown_tier"
            ) from exc
        except sql_errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name
            async with self._store.read() as keys:
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
        async with self._store.read() as keys:
            key = await keys.get_key(operation.new_key_id)
            previous = (
                None if operation.old_key_id is None else await keys.get_key(operation.old_key_id)
            )
        assert key is not None
        # The secret goes back only to whoever asked for this operation (a retry after a lost
        # response); anyone else learns what happened, not the key.
        secret = self._store.open_secret(key) if operation.requested_by == actor else None
        return IssuedKey(key=key, operation=operation, secret=secret, previous_key=previous)

    # ----- advancing operations -----

    # ----- budgets -----

    async def apply_budget(
        self, owner: Owner, *, actor: str, reason: str, request_id: str | None
    ) -> KeyRecord | None:
        """Set the current key's OpenRouter limit to what the owner may spend this month now:
        the budget, less what earlier keys spent, plus what resets gave back. Used after a
        tier change, a reset, and at the start of a month. Absolute values: safe to repeat."""
        async with self._store.read() as keys:
            key = await keys.current_key(owner.key)
            operation = await keys.open_operation_of(owner.key)
            if key is None:
                return None
            budget = await self._store.budget_of(keys, owner)
            period = current_period()
            adjustments = await keys.adjustments_of(owner.user_id, period)
        if operation is not None:
            raise Conflict(
                f"a key operation for {owner.key} is in progress; retry when it is done",
                code="operation_in_progress",
                details={"operation_id": str(operation.id)},
                headers={"Retry-After": "1"},
            )
        before = key.spent_before_usd if key.limit_period == period else Decimal(0)
        limit = None if budget is None else max(budget - before - adjustments, Decimal(0))
        # A new period alone needs no call: OpenRouter resets the usage of a monthly limit.
        if key.openrouter_hash is not None and limit != key.limit_usd:
            try:
                await self._runtime.openrouter().update_key(key.openrouter_hash, limit=limit)
            except OpenRouterError as error:
                raise openrouter_failure(error, key.id) from error
        async with self._store.transaction() as (keys, audit):
            updated = await keys.set_key_limit(
                key.id, limit_usd=limit, spent_before_usd=before, period=period
            )
            await audit.append(
                actor=actor,
                action="key.limit_applied",
                target=f"key:{key.id}",
                reason=reason,
                request_id=request_id,
                fingerprint=key.fingerprint,
                details={
                    "limit_usd": None if limit is None else str(limit),
                    "previous_limit_usd": None if key.limit_usd is None else str(key.limit_usd),
                },
            )
        return updated

    # ----- master key rotation -----

    async def rewrap_all(self, *, actor: str, batch: int = 200) -> int:
        """Re-wrap every data key not wrapped by the current provider (after a master key
        rotation, or a move to KMS). The sealed secrets themselves are untouched."""
        sealer = self._runtime.sealer()
        rewrapped = 0
        while True:
            async with self._store.read() as keys:
                stale = await keys.sealed_not_under(sealer.current.name, limit=batch)
            if not stale:
                return rewrapped
            for key in stale:
                assert key.sealed is not None
                fresh = sealer.rewrap(key.sealed, secret_context(key.owner, key.id))
                async with self._store.transaction() as (keys, audit):
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
            raise openrouter_failure(error, uuid4()) from error
        async with self._store.read() as keys:
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
            async with self._store.transaction() as (_, audit):
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
            async with self._store.transaction() as (keys, audit):
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
        async with self._store.read() as keys:
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
            final_usage = await self._store.usage_this_month(key)
            await self._runtime.openrouter().delete_key(key.openrouter_hash)
        except OpenRouterError as error:
            raise openrouter_failure(error, key.id) from error
        async with self._store.transaction() as (keys, audit):
            revoked = await keys.mark_revoked(key.id, final_usage_usd=final_usage)
            await audit.append(
                actor=actor,
                action="key.revoked",
                target=f"key:{key.id}",
                reason=reason,
                request_id=request_id,
                fingerprint=key.fingerprint,
            )
        count(KEYS_REVOKED)
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
            raise openrouter_failure(error, key.id) from error
        async with self._store.transaction() as (keys, audit):
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
