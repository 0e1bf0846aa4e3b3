"""Key operations (a create or a rotation) as resumable, leased sagas.

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

from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from uuid import UUID

from shared.crypto.envelope import fingerprint, secret_context
from shared.db import sql_errors
from shared.errors import BadGateway, Conflict, ServiceUnavailable
from shared.keys.domain import (
    MICRO_DOLLAR,
    Checkpoint,
    Owner,
    current_period,
    no_checkpoint,
    openrouter_failure,
)
from shared.keys.repository import KeyRecord, OperationRecord
from shared.keys.store import KeyStore
from shared.metrics import KEYS_CREATED, KEYS_ROTATED, count
from shared.observability import logger
from shared.openrouter.errors import (
    OpenRouterError,
    OpenRouterNotFound,
    OpenRouterOutcomeUnknown,
    OpenRouterRateLimited,
    OpenRouterUnavailable,
)
from shared.runtime import Runtime


class KeyOperationSaga:
    """Advances key operations step by step; every step is idempotent and committed."""

    def __init__(
        self, runtime: Runtime, store: KeyStore, *, checkpoint: Checkpoint = no_checkpoint
    ) -> None:
        self._runtime = runtime
        self._store = store
        # Production: steps run straight through. Tests inject crashes at named checkpoints.
        self._checkpoint = checkpoint

    async def advance(self, operation_id: UUID) -> OperationRecord:
        """Run an operation's remaining steps (up to a grace period still running)."""
        lease_s = self._runtime.settings.key_operation_lease_s
        async with self._store.read() as keys:
            operation = await keys.claim_operation(operation_id, lease_s=lease_s)
        if operation is None:
            existing = await self._store.get_operation(operation_id)
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
            async with self._store.read() as keys:
                await keys.release_operation(operation_id)

    async def advance_due_operations(self, *, limit: int = 50) -> int:
        """The job: resume crashed operations and finish rotations whose grace has ended."""
        async with self._store.read() as keys:
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
        async with self._store.read() as keys:
            budget = await self._store.budget_of(keys, owner)
            old = None if operation.old_key_id is None else await keys.get_key(operation.old_key_id)
            spent_through_revoked = await keys.last_spent_in_period(owner.key, period)
            adjustments = await keys.adjustments_of(owner.user_id, period)
        old_usage: Decimal | None = None
        spent = spent_through_revoked
        if old is not None and budget is not None and old.openrouter_hash is not None:
            old_usage = await self._store.usage_this_month(old)
            before = old.spent_before_usd if old.limit_period == period else Decimal(0)
            spent = max(spent, before + old_usage)
        allowance = Decimal(0)
        new_limit: Decimal | None = None
        if budget is not None:
            # Resets (negative adjustments) give budget back; `spent` stays OpenRouter's figure.
            remaining = max(budget - max(spent + adjustments, Decimal(0)), Decimal(0))
            if old is not None and operation.grace_seconds > 0:
                fraction = self._runtime.settings.rotation_grace_budget_fraction
                allowance = (remaining * fraction).quantize(MICRO_DOLLAR, rounding=ROUND_DOWN)
            new_limit = remaining - allowance
        assert operation.new_key_id is not None
        async with self._store.transaction() as (keys, audit):
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

    async def _create_at_openrouter(self, operation: OperationRecord) -> OperationRecord:
        client = self._runtime.openrouter()
        async with self._store.read() as keys:
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
                raise openrouter_failure(error, operation.id) from error
            self._checkpoint("after_freeze_old")
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
            )
        except OpenRouterOutcomeUnknown as unknown:
            raise openrouter_failure(unknown, operation.id) from unknown
        except (OpenRouterRateLimited, OpenRouterUnavailable) as transient:
            raise openrouter_failure(transient, operation.id) from transient
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
            raise openrouter_failure(error, operation.id) from error
        if existing:
            async with self._store.transaction() as (_, audit):
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

    async def _activate(self, operation: OperationRecord) -> OperationRecord:
        assert operation.new_key_id is not None
        try:
            async with self._store.transaction() as (keys, audit):
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
        except sql_errors.UniqueViolation:
            # A create raced another create of the same owner and lost: its key must not live.
            return await self._discard_losing_create(operation)
        self._checkpoint("after_activate")
        count(KEYS_CREATED if operation.kind == "create" else KEYS_ROTATED)
        try:
            # Consumers need the new system key now, not after the grace period; if this
            # fails, completing the operation publishes it again.
            await self._publish_system_key(new)
        except ServiceUnavailable:
            logger.warning("system key not published yet", extra={"key_id": str(new.id)})
        return activated

    async def _discard_losing_create(self, operation: OperationRecord) -> OperationRecord:
        assert operation.new_key_id is not None
        new = await self._store.get_key(operation.new_key_id)
        if new.openrouter_hash is not None:
            await self._runtime.openrouter().delete_key(new.openrouter_hash)
        async with self._store.transaction() as (keys, audit):
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

    async def _grace_over(self, operation: OperationRecord) -> bool:
        if operation.old_key_id is None:
            return True
        old = await self._store.get_key(operation.old_key_id)
        return old.grace_until is None or old.grace_until <= datetime.now(UTC)

    async def _finalize(self, operation: OperationRecord) -> OperationRecord:
        client = self._runtime.openrouter()
        assert operation.new_key_id is not None
        new = await self._store.get_key(operation.new_key_id)
        old = (
            None
            if operation.old_key_id is None
            else await self._store.get_key(operation.old_key_id)
        )
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
                    async with self._store.read() as keys:
                        adjustments = await keys.adjustments_of(
                            Owner.parse(new.owner).user_id, new.limit_period
                        )
                    new_limit = max(
                        operation.budget_usd - max(new_spent_before + adjustments, Decimal(0)),
                        Decimal(0),
                    )
                    await client.update_key(new.openrouter_hash, limit=new_limit)
        except OpenRouterError as error:
            raise openrouter_failure(error, operation.id) from error
        await self._publish_system_key(new)
        async with self._store.transaction() as (keys, audit):
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
