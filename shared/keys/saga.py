"""Key operations (a create or a rotation) as resumable sagas, run under the owner's lease.

An operation moves through persisted states, one step at a time:

    started      plan: freeze the old key (its grace allowance, or disabled for no grace),
                 then measure what no other key can still spend: the new key's limit
    planned      create the new key at OpenRouter
    key_created  the new secret is sealed in the database
    completed    the new key is current; the old one is in its grace period, or revoked
                 (or: failed)

Every step is idempotent and is committed with its audit row before the next begins, so any
later invocation (the same request retried, the next request for that owner, the job) picks up
where a crashed one stopped. The new key's OpenRouter name carries its id: a create whose
response was lost is found by name and replaced, never duplicated. Only the holder of the
owner's lease advances an operation. What happens to the old key afterwards (its grace period
ending, its settlement) belongs to the key, not to the operation: shared/keys/limits.py.
"""

from __future__ import annotations

from decimal import Decimal

from shared.crypto.envelope import fingerprint, secret_context
from shared.db import sql_errors
from shared.errors import BadGateway, ServiceUnavailable
from shared.keys.domain import (
    Checkpoint,
    Owner,
    no_checkpoint,
    openrouter_failure,
)
from shared.keys.limits import KeyLimits, KeyVanished, OwnerLease, down_to_micro
from shared.keys.repository import KeyRecord, OperationRecord
from shared.keys.store import KeyStore
from shared.metrics import KEYS_CREATED, KEYS_ROTATED, count
from shared.observability import logger
from shared.openrouter.errors import (
    OpenRouterError,
    OpenRouterOutcomeUnknown,
    OpenRouterRateLimited,
    OpenRouterUnavailable,
)
from shared.runtime import Runtime
from shared.usage.tier_policies import TierPolicyService

_ROUNDS = 3  # re-plans after a key vanished under us, before giving the error back


class KeyOperationSaga:
    """Advances key operations step by step; every step is idempotent and committed."""

    def __init__(
        self,
        runtime: Runtime,
        store: KeyStore,
        limits: KeyLimits,
        *,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._limits = limits
        # Production: steps run straight through. Tests inject crashes at named checkpoints.
        self._checkpoint = checkpoint

    async def run(self, operation: OperationRecord, lease: OwnerLease) -> OperationRecord:
        """Run the operation's remaining steps; the caller holds the owner's lease."""
        async with self._store.read() as keys:
            counted = await keys.count_attempt(operation.id)
        if counted is None:
            return await self._store.get_operation(operation.id)
        operation = counted
        while operation.is_open:
            if operation.status == "started":
                operation = await self._plan(operation, lease)
            elif operation.status == "planned":
                operation = await self._create_at_openrouter(operation, lease)
            elif operation.status == "key_created":
                operation = await self._activate(operation)
            else:
                # 'activated' (an operation of an earlier version, waiting for its grace):
                # the old key's grace period is the key's own business now.
                operation = await self._complete(operation)
        return operation

    # ----- started -> planned -----

    async def _plan(self, operation: OperationRecord, lease: OwnerLease) -> OperationRecord:
        for round_ in range(_ROUNDS):
            try:
                return await self._plan_once(operation, lease)
            except KeyVanished as gone:
                if round_ == _ROUNDS - 1:
                    raise ServiceUnavailable(
                        "keys keep vanishing at OpenRouter while planning",
                        code="openrouter_unavailable",
                        details={"operation_id": str(operation.id)},
                    ) from gone
                await self._limits.vanished(lease, gone.key)
        raise AssertionError("unreachable")

    async def _plan_once(self, operation: OperationRecord, lease: OwnerLease) -> OperationRecord:
        owner = Owner.parse(operation.owner)
        assert operation.new_key_id is not None
        async with self._store.read() as keys:
            in_play = await keys.keys_in_play(owner.key)
            old = None if operation.old_key_id is None else await keys.get_key(operation.old_key_id)
        budget = await self._limits.budget(owner)
        allowance = Decimal(0)
        old_usage: Decimal | None = None
        in_force = old is not None and old.state == "current" and old.openrouter_hash is not None
        if old is not None and in_force:
            elsewhere = {operation.new_key_id, old.id}
            if operation.grace_seconds > 0 and budget.budget is not None and not old.disabled:
                # The old key keeps working for its grace period, on a share of what is left.
                old_usage = await self._limits.usage(old)
                others = await self._limits.committed_elsewhere(budget, in_play, besides=elsewhere)
                headroom = max(budget.room(others) - old_usage, Decimal(0))
                fraction = self._runtime.settings.rotation_grace_budget_fraction
                allowance = down_to_micro(headroom * fraction)
                frozen_at = old_usage + allowance
                self._checkpoint("before_freeze_old")
                if old.limit_usd is None or frozen_at < old.limit_usd:
                    old = await self._limits.lower(
                        old, limit=frozen_at, lease=lease, action="key.frozen_for_grace"
                    )
                self._checkpoint("after_freeze_old")
            elif operation.grace_seconds == 0 and not old.disabled:
                self._checkpoint("before_freeze_old")
                old = await self._limits.lower(
                    old, disable=True, lease=lease, action="key.disabled_for_rotation"
                )
                self._checkpoint("after_freeze_old")
        # Measured after the freeze: what the old key, and every other, may still spend.
        async with self._store.read() as keys:
            in_play = await keys.keys_in_play(owner.key)
        elsewhere_total = await self._limits.committed_elsewhere(
            budget, in_play, besides={operation.new_key_id}
        )
        new_limit = None if budget.budget is None else budget.room(elsewhere_total)
        async with self._store.transaction() as (keys, audit):
            await keys.plan_key_limit(operation.new_key_id, limit_usd=new_limit)
            planned = await keys.plan_operation(
                operation.id,
                budget_usd=budget.budget,
                spent_at_plan_usd=elsewhere_total,
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
                    "budget_usd": budget.budget,
                    "adjustments_usd": budget.adjustments,
                    "committed_elsewhere_usd": elsewhere_total,
                    "new_limit_usd": new_limit,
                    "grace_allowance_usd": allowance,
                },
            )
        self._checkpoint("after_plan")
        return planned

    # ----- planned -> key_created -----

    async def _create_at_openrouter(
        self, operation: OperationRecord, lease: OwnerLease
    ) -> OperationRecord:
        client = self._runtime.openrouter()
        assert operation.new_key_id is not None
        new = await self._store.get_key(operation.new_key_id)
        if operation.create_sent_at is not None:
            await self._discard_unconfirmed_create(operation, new)
        async with self._store.read() as keys:
            await keys.mark_create_sent(operation.id)
        self._checkpoint("before_openrouter_create")
        try:
            created = await client.create_key(
                name=new.openrouter_name,
                limit=new.limit_usd,
                limit_reset="monthly",
                include_byok_in_limit=False,
                # OpenRouter's records (its keys, every generation) then name our user.
                external_user=new.user_id,
            )
        except OpenRouterOutcomeUnknown as unknown:
            raise openrouter_failure(unknown, operation.id) from unknown
        except (OpenRouterRateLimited, OpenRouterUnavailable) as transient:
            raise openrouter_failure(transient, operation.id) from transient
        except OpenRouterError as refused:
            await self._abandon(operation, new, lease, refused)
            raise BadGateway(
                f"OpenRouter refused the new key: {refused.message}",
                code="openrouter_refused",
                details={"operation_id": str(operation.id)},
            ) from refused
        self._checkpoint("after_openrouter_create")
        secret = created.secret.get_secret_value()
        sealed = self._runtime.sealer().seal(secret, secret_context(new.owner, new.id))
        key_fingerprint = fingerprint(secret)
        async with self._store.transaction() as (keys, audit):
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
                    "limit_usd": new.limit_usd,
                },
            )
        self._checkpoint("after_record_secret")
        return advanced

    async def _discard_unconfirmed_create(self, operation: OperationRecord, new: KeyRecord) -> None:
        """A previous attempt sent POST /keys and never recorded the answer. If the key exists,
        its secret is lost with that answer: delete it, then create again (§3.5)."""
        await discard_by_name(self._runtime, self._store, operation, new)

    async def _abandon(
        self,
        operation: OperationRecord,
        new: KeyRecord,
        lease: OwnerLease,
        error: OpenRouterError,
    ) -> None:
        """OpenRouter definitely refused the create: record the failure, and give the old key
        back what the freeze took (the owner's next tend does)."""
        async with self._store.transaction() as (keys, audit):
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
        old = None
        if operation.old_key_id is not None:
            old = await self._store.get_key(operation.old_key_id)
        if (
            old is not None
            and old.state == "current"
            and old.disabled
            and old.openrouter_hash is not None
            and operation.grace_seconds == 0
            and old.disabled_at is not None
            and old.disabled_at >= operation.created_at
        ):
            # This rotation disabled it; the failed rotation must not leave the owner keyless.
            try:
                await self._limits.raise_(
                    lease, old, limit=old.limit_usd, enable=True, send=False, action="key.enabled"
                )
                await self._limits.tend(lease)
                await self._limits.sync(await self._store.get_key(old.id), enable=True)
            except (OpenRouterError, KeyVanished):
                logger.warning("could not re-enable the old key", extra={"key": str(old.id)})
            return
        try:
            await self._limits.tend(lease)
        except (OpenRouterError, KeyVanished):
            logger.warning(
                "could not restore the old key's limit", extra={"operation": str(operation.id)}
            )

    # ----- key_created -> completed -----

    async def _activate(self, operation: OperationRecord) -> OperationRecord:
        # The tier's policy holds the new key before it is handed out (repeated safely if an
        # interruption leaves the operation here).
        await TierPolicyService(self._runtime).guard_owner(Owner.parse(operation.owner))
        assert operation.new_key_id is not None
        try:
            async with self._store.transaction() as (keys, audit):
                if operation.old_key_id is not None:
                    await keys.supersede(
                        operation.old_key_id, grace_seconds=operation.grace_seconds
                    )
                new = await keys.make_current(operation.new_key_id)
                activated = await keys.set_status(
                    operation.id, expected="key_created", status="completed"
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
        except sql_errors.UniqueViolation:
            # A create raced another create of the same owner and lost: its key must not live.
            return await self._discard_losing_create(operation)
        self._checkpoint("after_activate")
        count(KEYS_CREATED if operation.kind == "create" else KEYS_ROTATED)
        try:
            # Consumers need the new system key now, not after the grace period.
            await self._publish_system_key(new)
        except ServiceUnavailable:
            logger.warning("system key not published yet", extra={"key_id": str(new.id)})
        return activated

    async def _complete(self, operation: OperationRecord) -> OperationRecord:
        async with self._store.transaction() as (keys, audit):
            completed = await keys.set_status(
                operation.id, expected=operation.status, status="completed"
            )
            await audit.append(
                actor="service",
                action=f"key.{operation.kind}.completed",
                target=f"key:{operation.new_key_id}",
                request_id=operation.request_id,
                details={"operation_id": str(operation.id)},
            )
        return completed

    async def _discard_losing_create(self, operation: OperationRecord) -> OperationRecord:
        assert operation.new_key_id is not None
        new = await self._store.get_key(operation.new_key_id)
        if new.openrouter_hash is not None:
            await self._runtime.openrouter().delete_key(new.openrouter_hash)
        async with self._store.transaction() as (keys, audit):
            await keys.mark_revoked(new.id)
            await keys.record_final(
                new.id,
                usage_usd=Decimal(0),
                period=new.limit_period,
                source="openrouter",
            )
            await keys.mark_deleted(new.id)
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
        publisher = self._runtime.system_key_publisher()
        owner = Owner.parse(key.owner)
        if publisher is None or owner.kind != "system" or key.openrouter_hash is None:
            return
        try:
            await publisher.publish(
                owner.name,
                secret=self._store.open_secret(key),
                key_id=key.id,
                openrouter_hash=key.openrouter_hash,
            )
        except Exception as exc:  # boto errors are many; any of them means "retry later"
            raise ServiceUnavailable(
                "the system key could not be written to Secrets Manager",
                code="secrets_manager_unavailable",
                details={"key_id": str(key.id)},
            ) from exc


async def discard_by_name(
    runtime: Runtime, store: KeyStore, operation: OperationRecord, new: KeyRecord
) -> None:
    """Delete any key at OpenRouter bearing the new key's name: a create whose answer we never
    read made it, and its secret is lost with that answer."""
    client = runtime.openrouter()
    try:
        existing = [k for k in await client.list_all_keys() if k.name == new.openrouter_name]
        for key in existing:
            await client.delete_key(key.hash)
    except OpenRouterError as error:
        raise openrouter_failure(error, operation.id) from error
    if existing:
        async with store.transaction() as (_, audit):
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
