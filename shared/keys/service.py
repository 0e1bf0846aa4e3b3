"""The key lifecycle's public operations: create, rotate, revoke, reveal, budgets, reconcile.

Every change of an owner's keys at OpenRouter happens under the owner's lease (`hold`): one
invocation at a time per owner, whatever the route. Creates and rotations run as sagas
(shared/keys/saga.py); limits, grace periods and settlements are shared/keys/limits.py. A
budget change that finds the owner held is flagged for the holder, who applies it before
letting go: it is never lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID, uuid4

from shared.crypto.envelope import secret_context
from shared.db import sql_errors
from shared.errors import BadGateway, Conflict, IdempotencyKeyReused, NotFound, ValidationFailed
from shared.keys.domain import (
    Checkpoint,
    IssuedKey,
    Owner,
    ReconcileReport,
    current_period,
    no_checkpoint,
    openrouter_answer,
)
from shared.keys.limits import KeyLimits, KeyVanished, OwnerLease
from shared.keys.repository import KeyRecord, OperationRecord
from shared.keys.saga import KeyOperationSaga, discard_by_name
from shared.keys.store import KeyStore
from shared.metrics import KEY_REVEALS, KEYS_REVOKED, count
from shared.money import usd_text
from shared.observability import logger
from shared.openrouter.errors import OpenRouterError
from shared.runtime import Runtime
from shared.users.domain import write_user
from shared.users.repository import UserRepository

__all__ = [
    "BudgetApplied",
    "IssuedKey",
    "KeyLifecycleService",
    "Owner",
    "OwnerKeys",
    "current_period",
]

# A change flagged while we held the owner is applied before we let go; if changes keep
# arriving, the job applies the rest.
_RELEASE_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class BudgetApplied:
    """What became of a budget change for the owner's key."""

    status: Literal["applied", "pending", "no_key"]
    key: KeyRecord | None = None


@dataclass(frozen=True, slots=True)
class OwnerKeys:
    current: KeyRecord
    operation: OperationRecord | None
    in_grace: list[KeyRecord]
    tier: str | None
    rotation_policy: str | None


@dataclass
class OwnerRepair:
    """What reconciling one owner did."""

    revoked_missing: list[UUID] = field(default_factory=list)
    reprovisioned: list[UUID] = field(default_factory=list)


class OwnerBusy(Conflict):
    code = "operation_in_progress"


class KeyMissingAtOpenRouter(Conflict):
    code = "key_missing_at_openrouter"


class KeyLifecycleService:
    def __init__(self, runtime: Runtime, *, checkpoint: Checkpoint = no_checkpoint) -> None:
        self._runtime = runtime
        self._store = KeyStore(runtime)
        self._limits = KeyLimits(runtime, self._store, checkpoint=checkpoint)
        self._saga = KeyOperationSaga(runtime, self._store, self._limits, checkpoint=checkpoint)

    @property
    def limits(self) -> KeyLimits:
        return self._limits

    def open_secret(self, key: KeyRecord) -> str:
        return self._store.open_secret(key)

    # ----- the owner's lease -----

    @asynccontextmanager
    async def hold(
        self,
        owner: Owner | str,
        *,
        actor: str,
        reason: str | None = None,
        request_id: str | None = None,
        flag_if_busy: bool = False,
    ) -> AsyncIterator[OwnerLease | None]:
        """Hold the owner's keys for this block. If someone else holds them: raise
        operation_in_progress, or with flag_if_busy tell the holder to apply what changed
        (and yield None)."""
        owner_key = owner if isinstance(owner, str) else owner.key
        holder = uuid4()
        lease_s = self._runtime.settings.key_operation_lease_s
        async with self._store.read() as keys:
            if flag_if_busy:
                claimed = await keys.claim_or_flag_owner(owner_key, holder, lease_s=lease_s)
            else:
                claimed = await keys.claim_owner(owner_key, holder, lease_s=lease_s)
        if not claimed:
            if flag_if_busy:
                yield None
                return
            async with self._store.read() as keys:
                operation = await keys.open_operation_of(owner_key)
            raise OwnerBusy(
                f"another invocation is changing the keys of {owner_key}; retry in a moment",
                details={"operation_id": None if operation is None else str(operation.id)},
                headers={"Retry-After": "1"},
            )
        lease = OwnerLease(owner_key, holder, actor=actor, reason=reason, request_id=request_id)
        try:
            yield lease
            for _ in range(_RELEASE_ROUNDS):
                next_attention = await self._limits.next_attention(owner_key)
                async with self._store.read() as keys:
                    released = await keys.release_owner(
                        owner_key, holder, tend_at=next_attention, lease_s=lease_s
                    )
                if released:
                    return
                # A budget change arrived while we held the owner: apply it before leaving.
                lease.reason = "a change that arrived meanwhile"
                await self.attend(lease)
        except BaseException:
            async with self._store.read() as keys:
                await keys.abandon_owner(owner_key, holder)
            raise
        async with self._store.read() as keys:
            await keys.abandon_owner(owner_key, holder)

    async def attend(self, lease: OwnerLease) -> KeyRecord | None:
        """Finish the owner's open operation, if an invocation died in it, then bring the
        owner's keys in line with the budget. The current key, if any."""
        async with self._store.read() as keys:
            stalled = await keys.open_operation_of(lease.owner)
        if stalled is not None:
            await self._saga.run(stalled, lease)
        current = await self._limits.tend(lease)
        if current is None and await self._replace_lost(lease) is not None:
            current = await self._limits.tend(lease)
        return current

    async def advance(self, operation_id: UUID) -> OperationRecord:
        """Run an operation's remaining steps."""
        operation = await self._store.get_operation(operation_id)
        if not operation.is_open:
            return operation
        async with self.hold(operation.owner, actor="service") as lease:
            assert lease is not None
            await self.attend(lease)
        return await self._store.get_operation(operation_id)

    async def advance_due_operations(self, *, limit: int = 50) -> int:
        """The job: resume crashed operations, end grace periods and settle keys that are due,
        apply budget changes flagged while an owner was held."""
        async with self._store.read() as keys:
            owners = [o.owner for o in await keys.operations_to_advance(limit=limit)]
            owners += [o for o in await keys.owners_to_tend(limit=limit) if o not in owners]
        advanced = 0
        for owner in owners:
            try:
                async with self.hold(owner, actor="job:advance-key-operations") as lease:
                    assert lease is not None
                    await self.attend(lease)
                advanced += 1
            except Exception as exc:  # one stuck owner must not stop the others
                logger.warning(
                    "owner's keys not advanced; tried again next run",
                    extra={"owner": owner, "error_code": getattr(exc, "code", type(exc).__name__)},
                )
        return advanced

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

    async def describe(self, owner: Owner) -> OwnerKeys:
        """The owner's current key and what surrounds it: an operation in progress, keys in
        their grace period, the tier and the rotation policy."""
        async with self._store.read() as keys:
            current = await keys.current_key(owner.key)
            if current is None:
                raise NotFound(f"{owner.key} has no current key", code="no_current_key")
            operation = await keys.open_operation_of(owner.key)
            in_grace = [k for k in await keys.keys_in_play(owner.key) if k.state == "previous"]
        tier, policy = None, "monthly"
        if owner.user_id is not None:
            async with self._runtime.database().connection() as conn:
                user = await UserRepository(conn).get(owner.user_id)
            if user is not None:
                tier, policy = user.tier, user.rotation_policy
        return OwnerKeys(current, operation, in_grace, tier, policy)

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
        lease: OwnerLease | None = None,
        may_change_tier: bool = True,
    ) -> IssuedKey:
        """A key for an owner who has none. `tier` sets the user's tier: only a caller who may
        change tiers (admins, users:write; the keys route says) may name another tier than
        the user's own (free for a new user)."""
        self._runtime.sealer()  # the secret can be sealed: checked before OpenRouter makes it
        replay = await self._replay(actor, idempotency_key, lease, owner, "create")
        if replay is not None:
            return replay
        async with self._held(owner, actor, request_id, lease) as held:
            await self._finish_stalled(held)
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
                may_change_tier=may_change_tier,
            )
            return await self._run_to_result(operation, actor, held)

    async def rotate_key(
        self,
        owner: Owner,
        *,
        actor: str,
        grace_seconds: int | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        lease: OwnerLease | None = None,
    ) -> IssuedKey:
        self._runtime.sealer()  # the secret can be sealed: checked before OpenRouter makes it
        replay = await self._replay(actor, idempotency_key, lease, owner, "rotate")
        if replay is not None:
            return replay
        async with self._held(owner, actor, request_id, lease) as held:
            await self._finish_stalled(held)
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
            return await self._run_to_result(operation, actor, held)

    @asynccontextmanager
    async def _held(
        self, owner: Owner, actor: str, request_id: str | None, lease: OwnerLease | None
    ) -> AsyncIterator[OwnerLease]:
        if lease is not None:
            yield lease
            return
        async with self.hold(owner, actor=actor, request_id=request_id) as held:
            assert held is not None
            yield held

    async def _finish_stalled(self, lease: OwnerLease) -> None:
        """An earlier invocation may have died mid-operation: finish it before starting anew."""
        async with self._store.read() as keys:
            stalled = await keys.open_operation_of(lease.owner)
        if stalled is not None:
            await self._saga.run(stalled, lease)

    async def _replay(
        self,
        actor: str,
        idempotency_key: str | None,
        lease: OwnerLease | None,
        owner: Owner,
        kind: str,
    ) -> IssuedKey | None:
        if idempotency_key is None:
            return None
        async with self._store.read() as keys:
            operation = await keys.operation_by_idempotency_key(actor, idempotency_key)
        if operation is None:
            return None
        if operation.owner != owner.key or operation.kind != kind:  # another request's key
            raise IdempotencyKeyReused(
                f"this Idempotency-Key already answered a {operation.kind} for another owner"
                if operation.owner != owner.key
                else f"this Idempotency-Key already answered a {operation.kind}",
                details={"operation_id": str(operation.id)},
            )
        if operation.is_open:
            if lease is not None:
                operation = await self._saga.run(operation, lease)
            else:
                operation = await self.advance(operation.id)
        return await self._result(operation, actor)

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
        may_change_tier: bool = True,
    ) -> OperationRecord:
        key_id = uuid4()
        try:
            async with self._store.transaction_with_users() as (keys, audit, users):
                if owner.user_id is not None:
                    await write_user(
                        users,
                        audit,
                        owner.user_id,
                        tier=tier,
                        rotation_policy=rotation_policy,
                        actor=actor,
                        may_change_tier=may_change_tier,
                        request_id=request_id,
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

    async def _run_to_result(
        self, operation: OperationRecord, actor: str, lease: OwnerLease
    ) -> IssuedKey:
        if operation.is_open:
            operation = await self._saga.run(operation, lease)
        if operation.status == "completed":
            await self._limits.tend(lease)
        return await self._result(operation, actor)

    async def _result(self, operation: OperationRecord, actor: str) -> IssuedKey:
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

    # ----- budgets -----

    async def apply_budget(
        self, owner: Owner, *, actor: str, reason: str, request_id: str | None
    ) -> BudgetApplied:
        """Bring the owner's keys in line with their budget now (after a tier change, a reset,
        at the start of a month). If another invocation holds the owner, the change is handed
        to it, in the same statement that finds it there, and applied before it lets go:
        'pending'. Absolute values: safe to repeat."""
        async with self.hold(
            owner, actor=actor, reason=reason, request_id=request_id, flag_if_busy=True
        ) as lease:
            if lease is None:
                return BudgetApplied("pending")
            try:
                current = await self.attend(lease)
            except KeyVanished as gone:
                await self._limits.vanished(lease, gone.key)
                current = await self.attend(lease)
            except OpenRouterError as error:
                raise openrouter_answer(error, {"owner": owner.key}) from error
        if current is None:
            return BudgetApplied("no_key")
        return BudgetApplied("applied", current)

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

    async def reconcile(
        self, *, actor: str, request_id: str | None, time_budget_s: float | None = None
    ) -> ReconcileReport:
        """Make OpenRouter and the database agree about every key under our name prefix, as a
        job on the work queue (shared/keys/reconcile.py), worked here until nothing more can be
        done now or the time budget is spent. Repeating it is harmless."""
        from shared.keys import reconcile

        _, report = await reconcile.reconcile(
            self._runtime, actor=actor, time_budget_s=time_budget_s
        )
        return report

    async def repair_owner(
        self, owner_key: str, missing: list[UUID], *, actor: str, request_id: str | None
    ) -> OwnerRepair:
        """Under the owner's lease: each key a listing did not show is read again, and written
        off (with the best evidence of its spend) only if OpenRouter really lost it; a lost
        current key is replaced. OwnerBusy if another invocation holds the owner."""
        owner = Owner.parse(owner_key)
        repair = OwnerRepair()
        async with self.hold(
            owner, actor=actor, reason="reconcile", request_id=request_id
        ) as lease:
            assert lease is not None
            # As they were before an operation left unfinished is finished: one that revokes
            # the lost current key must not leave the owner without a key.
            was_in_play = [
                key.state in ("current", "pending")
                for key in [await self._store.get_key(key_id) for key_id in missing]
            ]
            await self._finish_stalled(lease)
            for key_id in missing:
                fresh = await self._store.get_key(key_id)
                if fresh.state not in ("current", "previous", "pending"):
                    continue  # the operation we just finished took care of it
                try:
                    await self._limits.usage(fresh)
                    continue  # OpenRouter has it: the listing missed it, not OpenRouter
                except KeyVanished:
                    pass
                await self._limits.vanished(lease, fresh)
                repair.revoked_missing.append(fresh.id)
            async with self._store.read() as keys:
                current = await keys.current_key(owner_key)
            if current is None and any(was_in_play):
                replacement = await self.create_key(
                    owner, actor=actor, request_id=request_id, lease=lease
                )
                repair.reprovisioned.append(replacement.key.id)
            await self._limits.tend(lease)
        return repair

    # ----- revocation and disabling -----

    async def revoke_key(
        self, key_id: UUID, *, actor: str, reason: str | None, request_id: str | None
    ) -> KeyRecord:
        """Stop the key now (disabled at OpenRouter) and mark it revoked; once nothing more
        can be billed to it, it is settled and deleted there. Repeating it changes nothing."""
        key = await self.get_key(key_id)
        if key.state in ("revoked", "failed"):
            return key
        if key.state == "pending":
            raise Conflict(
                "this key is still being created",
                code="operation_in_progress",
                headers={"Retry-After": "1"},
            )
        async with self.hold(key.owner, actor=actor, reason=reason, request_id=request_id) as lease:
            assert lease is not None
            await self._finish_stalled(lease)
            key = await self.get_key(key_id)
            if key.state in ("revoked", "failed"):
                return key
            try:
                if not key.disabled:
                    key = await self._limits.lower(key, disable=True, lease=lease)
            except KeyVanished:
                gone = await self._limits.vanished(lease, key)
                raise self._missing(gone) from None
            except OpenRouterError as error:
                raise openrouter_answer(error, {"key_id": str(key.id)}) from error
            async with self._store.transaction() as (keys, audit):
                revoked = await keys.mark_revoked(key.id)
                await audit.append(
                    actor=actor,
                    action="key.revoked",
                    target=f"key:{key.id}",
                    reason=reason,
                    request_id=request_id,
                    fingerprint=key.fingerprint,
                )
            try:
                await self._limits.tend(lease)
            except (OpenRouterError, KeyVanished):
                # Revoked and disabled; the settlement is retried by the job.
                logger.warning("revoked key not settled yet", extra={"key_id": str(key.id)})
        count(KEYS_REVOKED)
        return await self.get_key(revoked.id)

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
        async with self.hold(key.owner, actor=actor, reason=reason, request_id=request_id) as lease:
            assert lease is not None
            key = await self.get_key(key_id)
            try:
                if disabled:
                    updated = await self._limits.lower(
                        key, disable=True, lease=lease, action="key.disabled"
                    )
                else:
                    await self._limits.usage(key)  # it must still exist to be enabled
                    # Recorded as enabled first (so the rest of the budget accounts for it),
                    # then the other keys are brought in line, then OpenRouter is told.
                    await self._limits.raise_(
                        lease,
                        key,
                        limit=key.limit_usd,
                        enable=True,
                        send=False,
                        action="key.enabled",
                    )
                    await self._limits.tend(lease)
                    updated = await self.get_key(key_id)
                    if updated.state in ("current", "previous") and not updated.disabled:
                        await self._limits.sync(updated, enable=True)
            except KeyVanished:
                gone = await self._limits.vanished(lease, key)
                # A disable asked for the key to stop, which it has; an enable asked for the
                # owner to spend again, which a new key allows.
                lease.lost_current = lease.lost_current and not disabled
                replacement = await self._replace_lost(lease)
                raise self._missing(gone, replaced_by=replacement) from None
            except OpenRouterError as error:
                raise openrouter_answer(error, {"key_id": str(key.id)}) from error
        return await self.get_key(updated.id)

    async def _replace_lost(self, lease: OwnerLease) -> KeyRecord | None:
        """The owner's current key that OpenRouter lost is replaced at once (under the lease
        that found it lost), so the owner is not left without a key."""
        if not lease.lost_current:
            return None
        lease.lost_current = False
        async with self._store.read() as keys:
            if await keys.current_key(lease.owner) is not None:
                return None
        replacement = await self.create_key(
            Owner.parse(lease.owner), actor=lease.actor, request_id=lease.request_id, lease=lease
        )
        return replacement.key

    @staticmethod
    def _missing(key: KeyRecord, *, replaced_by: KeyRecord | None = None) -> KeyMissingAtOpenRouter:
        return KeyMissingAtOpenRouter(
            "the key no longer exists at OpenRouter (deleted there); it is revoked here, "
            "charged with the best evidence of its spend"
            + ("" if replaced_by is None else "; a new key replaces it"),
            details={
                "replaced_by": None if replaced_by is None else str(replaced_by.id),
                "key_id": str(key.id),
                "state": key.state,
                "final_usage_usd": None
                if key.final_usage_usd is None
                else usd_text(key.final_usage_usd),
                "final_usage_source": key.final_usage_source,
            },
        )

    # ----- emergencies -----

    async def supersede_open_operation(self, lease: OwnerLease, *, by: str) -> None:
        """An emergency wins over an operation in progress: end it, with its new key, if any,
        made unusable. The emergency then makes the replacement itself."""
        async with self._store.read() as keys:
            operation = await keys.open_operation_of(lease.owner)
        if operation is None or operation.requested_by == by:
            return
        assert operation.new_key_id is not None
        new = await self._store.get_key(operation.new_key_id)
        try:
            if new.openrouter_hash is not None and not new.disabled:
                await self._limits.lower(new, disable=True, lease=lease)
            elif new.openrouter_hash is None and operation.create_sent_at is not None:
                await discard_by_name(self._runtime, self._store, operation, new)
        except KeyVanished:
            pass
        async with self._store.transaction() as (keys, audit):
            if new.openrouter_hash is None:
                await keys.mark_failed(new.id)
            else:
                await keys.mark_revoked(new.id)
            await keys.fail_operation(
                operation.id,
                error_code="superseded_by_emergency",
                error_message=f"superseded by {by}",
            )
            await audit.append(
                actor=by,
                action=f"key.{operation.kind}.superseded",
                target=f"key:{new.id}",
                outcome="failed",
                reason=lease.reason,
                request_id=lease.request_id,
                details={"operation_id": str(operation.id), "status": operation.status},
            )
