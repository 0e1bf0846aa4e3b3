"""Emergency rotation: block every key in scope at OpenRouter first, confirm it, then replace it.

Revoke-first is the point: a leaked key stops working before anything else happens. The scope
is every key that can still spend: current, previous (in a grace period) and pending (being
made). It runs on the one work queue, at the highest priority: a job whose first phase blocks
each key (one item a key: disable, read back, timed) and whose second replaces each owner's
keys (one item an owner), the second starting only once every key of the first was tried. The
request that starts it works it for EMERGENCY_REQUEST_BUDGET_S; the work lanes take it from
there, as many at once as the fan-out allows. An operation in progress for an owner does not
stall it: the emergency supersedes it. The job always ends, completed or failed with each key's
reason (emergency_rotation_items keeps every key's outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from shared.audit.repository import AuditRepository
from shared.emergency.repository import (
    EmergencyItemRecord,
    EmergencyRepository,
    EmergencyRotationRecord,
)
from shared.errors import AppError, NotFound, ValidationFailed
from shared.jobs.queue import ItemHandler, QueueSettings, RetryItemLater, work_through
from shared.jobs.repository import ClaimedItem, NewItem, WorkJob, WorkQueueRepository
from shared.keys.limits import KeyVanished, OwnerLease
from shared.keys.repository import KeyRecord, KeyRepository
from shared.keys.service import KeyLifecycleService, Owner
from shared.observability import logger
from shared.openrouter.errors import OpenRouterError
from shared.runtime import Runtime

KIND = "emergency_rotation"
PRIORITY = 9  # before every other bulk job
# An outage at OpenRouter must not fail an emergency: retry with backoff for about an hour.
MAX_ATTEMPTS = 12
BLOCK_PHASE, REPLACE_PHASE = 0, 1


@dataclass(frozen=True, slots=True)
class EmergencyScope:
    everything: bool = False
    user_ids: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    key_ids: tuple[UUID, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "all": self.everything,
            "user_ids": list(self.user_ids),
            "tiers": list(self.tiers),
            "key_ids": [str(k) for k in self.key_ids],
        }


@dataclass(frozen=True, slots=True)
class EmergencyStatus:
    rotation: EmergencyRotationRecord
    items: list[EmergencyItemRecord]

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)


class EmergencyRotationService:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @asynccontextmanager
    async def _repository(self) -> AsyncIterator[EmergencyRepository]:
        async with self._runtime.database().connection() as conn:
            yield EmergencyRepository(conn)

    async def keys_in_scope(self, scope: EmergencyScope) -> list[KeyRecord]:
        """The keys an emergency of this scope covers; a tier that does not exist is refused
        (it would cover nothing, and an admin would believe it covered their tier)."""
        async with self._repository() as emergencies:
            unknown = await emergencies.unknown_tiers(list(scope.tiers))
            if unknown:
                raise ValidationFailed(f"unknown tier {unknown[0]!r}", code="unknown_tier")
            return await emergencies.keys_in_scope(
                everything=scope.everything,
                user_ids=list(scope.user_ids),
                tiers=list(scope.tiers),
                key_ids=list(scope.key_ids),
            )

    async def start(
        self,
        scope: EmergencyScope,
        *,
        reason: str,
        actor: str,
        request_id: str | None,
        time_budget_s: float,
    ) -> EmergencyStatus:
        keys = await self.keys_in_scope(scope)
        rotation_id = uuid.uuid4()
        async with self._runtime.database().connection() as conn, conn.transaction():
            queue = WorkQueueRepository(conn)
            job, _ = await queue.ensure_job(
                KIND,
                str(rotation_id),
                created_by=actor,
                max_attempts=MAX_ATTEMPTS,
                priority=PRIORITY,
            )
            await queue.enqueue(
                job.id,
                [NewItem(f"revoke:{key.id}", BLOCK_PHASE) for key in keys]
                + [
                    NewItem(f"replace:{owner}", REPLACE_PHASE)
                    for owner in sorted({key.owner for key in keys})
                ],
            )
            rotation = await EmergencyRepository(conn).insert_rotation(
                rotation_id=rotation_id,
                job_id=job.id,
                requested_by=actor,
                reason=reason,
                scope=scope.as_json(),
                keys=keys,
                request_id=request_id,
            )
            await AuditRepository(conn).append(
                actor=actor,
                action="emergency.started",
                target=f"emergency:{rotation.id}",
                reason=reason,
                request_id=request_id,
                details={"scope": scope.as_json(), "keys": len(keys)},
            )
        await self.process(rotation.id, time_budget_s=time_budget_s)
        return await self.status(rotation.id)

    async def status(self, rotation_id: UUID) -> EmergencyStatus:
        async with self._repository() as emergencies:
            rotation = await emergencies.get_rotation(rotation_id)
            if rotation is None:
                raise NotFound("no emergency rotation has this id", code="emergency_not_found")
            return EmergencyStatus(rotation, await emergencies.items(rotation_id))

    async def recent(self, *, limit: int) -> list[tuple[EmergencyRotationRecord, int, int]]:
        async with self._repository() as emergencies:
            return await emergencies.recent_rotations(limit=limit)

    async def process_running(self, *, time_budget_s: float) -> int:
        """Work every running emergency rotation, oldest first, for the time budget."""
        async with self._repository() as emergencies:
            running = await emergencies.running_rotations()
        clock = asyncio.get_running_loop().time
        deadline = clock() + time_budget_s
        for rotation in running:
            await self.process(rotation.id, time_budget_s=max(0.0, deadline - clock()))
        return len(running)

    async def process(self, rotation_id: UUID, *, time_budget_s: float) -> None:
        """Work the rotation's job for the time budget (every key blocked before any is
        replaced), as any invocation of the work queue would."""
        rotation = (await self.status(rotation_id)).rotation
        if rotation.job_id is None:
            return
        async with self._runtime.database().connection() as conn:
            job = await WorkQueueRepository(conn).get_job(rotation.job_id)
        if job is not None:
            await work_through(
                self._runtime,
                job.id,
                self.handler(job),
                self.queue_settings(time_budget_s=time_budget_s),
            )
        async with self._repository() as emergencies:
            await emergencies.complete_if_done(rotation_id)

    def queue_settings(self, *, time_budget_s: float) -> QueueSettings:
        return QueueSettings(
            concurrency=self._runtime.settings.emergency_concurrency,
            time_budget_s=time_budget_s,
        )

    def handler(self, job: WorkJob) -> ItemHandler:
        """The items of an emergency's job: revoke:<key id>, then replace:<owner>."""
        rotation_id = UUID(job.name)
        rotation: EmergencyRotationRecord | None = None

        async def handle(claimed: ClaimedItem) -> None:
            nonlocal rotation
            if rotation is None:
                rotation = (await self.status(rotation_id)).rotation
            final = claimed.attempts >= job.max_attempts
            kind, _, ref = claimed.item.partition(":")
            try:
                if kind == "revoke":
                    await self._block_item(rotation, UUID(ref), claimed.attempts, final=final)
                else:
                    await self._replace(rotation, ref, claimed.attempts, final=final)
            finally:
                async with self._repository() as emergencies:
                    await emergencies.complete_if_done(rotation_id)

        return handle

    async def _block_item(
        self, rotation: EmergencyRotationRecord, key_id: UUID, attempts: int, *, final: bool
    ) -> None:
        """Disable the key at OpenRouter and read it back; no lease needed, it only reduces."""
        async with self._repository() as emergencies:
            item = await emergencies.item(rotation.id, key_id)
        if item is None or item.status != "pending":
            return  # its owner's replacement blocked it already, or it failed for good
        keys = KeyLifecycleService(self._runtime)
        try:
            key = await keys.get_key(item.key_id)
            if key.openrouter_hash is None or key.deleted_at is not None:
                return  # nothing at OpenRouter yet, or any more: the owner step records it
            started = time.perf_counter()
            with contextlib.suppress(KeyVanished):  # gone is blocked; the owner step records it
                key = await keys.limits.block(key)
            revoke_ms = Decimal(str(round((time.perf_counter() - started) * 1000, 3)))
            async with self._runtime.database().connection() as conn, conn.transaction():
                await EmergencyRepository(conn).mark_item(
                    item, status="disabled", revoke_ms=revoke_ms
                )
                await AuditRepository(conn).append(
                    actor=f"emergency:{rotation.id}",
                    action="emergency.key_disabled",
                    target=f"key:{key.id}",
                    reason=rotation.reason,
                    request_id=rotation.request_id,
                    fingerprint=key.fingerprint,
                    details={"revoke_ms": str(revoke_ms), "state": key.state},
                )
        except (AppError, OpenRouterError) as exc:
            raise await self._not_done(rotation, [item], exc, attempts, final=final) from exc

    async def _replace(
        self, rotation: EmergencyRotationRecord, owner_key: str, attempts: int, *, final: bool
    ) -> None:
        """Under the owner's lease: end any operation in progress, make sure every key of the
        owner in scope is blocked, revoke them, and give the owner one new key."""
        keys = KeyLifecycleService(self._runtime)
        actor = f"emergency:{rotation.id}"
        owner = Owner.parse(owner_key)
        async with self._repository() as emergencies:
            items = await emergencies.owner_items(rotation.id, owner_key)
        open_items = [i for i in items if i.status in ("pending", "disabled")]
        if not open_items:
            return
        try:
            async with keys.hold(
                owner, actor=actor, reason=rotation.reason, request_id=rotation.request_id
            ) as lease:
                assert lease is not None
                await keys.supersede_open_operation(lease, by=actor)
                in_scope = {i.key_id for i in items}
                for item in items:
                    key = await keys.get_key(item.key_id)
                    if key.state not in ("current", "previous", "pending"):
                        continue
                    if key.openrouter_hash is not None and not key.disabled:
                        try:
                            key = await keys.limits.block(key)
                        except KeyVanished:
                            await keys.limits.vanished(lease, key)
                            continue
                    if key.state == "previous":
                        await self._revoke_now(lease, key, actor)
                replacement = await self._replacement(keys, lease, owner, in_scope, actor)
                await keys.limits.tend(lease)
        except (AppError, OpenRouterError, KeyVanished) as exc:
            raise await self._not_done(rotation, open_items, exc, attempts, final=final) from exc
        async with self._runtime.database().connection() as conn, conn.transaction():
            for item in open_items:
                await EmergencyRepository(conn).mark_item(
                    item, status="replaced", replacement_key_id=replacement
                )

    async def _replacement(
        self,
        keys: KeyLifecycleService,
        lease: OwnerLease,
        owner: Owner,
        in_scope: set[UUID],
        actor: str,
    ) -> UUID | None:
        """The owner's key after the emergency: a new one if the current key was in scope."""
        idempotency_key = f"{actor}:{owner.key}"
        async with self._runtime.database().connection() as conn:
            repository = KeyRepository(conn)
            current = await repository.current_key(owner.key)
            made = await repository.operation_by_idempotency_key(actor, idempotency_key)
            while made is not None and made.status == "failed":
                # That attempt failed for good (OpenRouter refused the key): try afresh.
                idempotency_key = f"{actor}:{owner.key}:{made.id}"
                made = await repository.operation_by_idempotency_key(actor, idempotency_key)
        if made is not None and made.status == "completed":
            return made.new_key_id
        if current is None and made is None:
            return None
        if current is not None and current.id not in in_scope and made is None:
            return current.id  # its current key was not in scope: it stays
        issued = await keys.rotate_key(
            owner,
            actor=actor,
            grace_seconds=0,
            reason=lease.reason,
            idempotency_key=idempotency_key,
            request_id=lease.request_id,
            lease=lease,
        )
        return issued.key.id

    async def _revoke_now(self, lease: OwnerLease, key: KeyRecord, actor: str) -> None:
        """A key in its grace period that may have leaked: no grace left."""
        async with self._runtime.database().connection() as conn, conn.transaction():
            await KeyRepository(conn).mark_revoked(key.id)
            await AuditRepository(conn).append(
                actor=actor,
                action="emergency.key_revoked",
                target=f"key:{key.id}",
                reason=lease.reason,
                request_id=lease.request_id,
                fingerprint=key.fingerprint,
                details={"was": key.state},
            )

    async def _not_done(
        self,
        rotation: EmergencyRotationRecord,
        items: list[EmergencyItemRecord],
        exc: Exception,
        attempts: int,
        *,
        final: bool,
    ) -> RetryItemLater:
        """The keys' outcome when their item failed: failed for good on its last attempt, else
        tried again later."""
        code = str(getattr(exc, "code", None) or type(exc).__name__)
        logger.warning(
            "emergency item not done",
            extra={
                "rotation_id": str(rotation.id),
                "keys": [str(item.key_id) for item in items],
                "error_code": code,
                "final": final,
            },
        )
        if final:
            async with self._repository() as emergencies:
                for item in items:
                    await emergencies.mark_item(item, status="failed", error=code)
        if code == "operation_in_progress":
            # Another invocation holds the owner: a live one for a moment, a dead one (kill -9)
            # until its lease lapses. The first tries are quick; later ones wait half a lease,
            # so the item's attempts outlast a dead holder instead of failing within seconds.
            lease_s = self._runtime.settings.key_operation_lease_s
            return RetryItemLater(code, after_s=1 if attempts <= 3 else max(1, lease_s / 2))
        return RetryItemLater(code, after_s=min(2 ** max(attempts, 1), 600))
