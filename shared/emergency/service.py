"""Emergency rotation: block every key in scope at OpenRouter first, confirm it, then replace it.

Revoke-first is the point: a leaked key stops working before anything else happens. The scope
is every key that can still spend: current, previous (in a grace period) and pending (being
made). Each key is an item of a persisted job, processed with bounded concurrency until the
invocation's time budget is spent; the rest is picked up by the next invocation. An operation
in progress for an owner does not stall it: the emergency supersedes it. The job always ends,
completed or failed with each key's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
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
from shared.errors import AppError, NotFound
from shared.keys.limits import KeyVanished, OwnerLease
from shared.keys.repository import KeyRecord, KeyRepository
from shared.keys.service import KeyLifecycleService, Owner
from shared.observability import logger
from shared.openrouter.errors import OpenRouterError
from shared.runtime import Runtime

# An outage at OpenRouter must not fail an emergency: retry with backoff for about an hour.
MAX_ATTEMPTS = 12
_ITEM_LEASE_S = 120


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
        async with self._repository() as emergencies:
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
        async with self._runtime.database().connection() as conn, conn.transaction():
            rotation = await EmergencyRepository(conn).insert_rotation(
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
        async with self._repository() as emergencies:
            running = await emergencies.running_rotations()
        deadline = time.monotonic() + time_budget_s
        for rotation in running:
            await self.process(rotation.id, time_budget_s=max(0.0, deadline - time.monotonic()))
        return len(running)

    async def process(self, rotation_id: UUID, *, time_budget_s: float) -> None:
        """Work on the rotation's items until none is left or the time budget is spent:
        every claimed key is blocked first, then each owner gets its replacement."""
        settings = self._runtime.settings
        deadline = time.monotonic() + time_budget_s
        rotation = (await self.status(rotation_id)).rotation
        semaphore = asyncio.Semaphore(settings.emergency_concurrency)

        async def bounded(work: Awaitable[None]) -> None:
            async with semaphore:
                await work

        while time.monotonic() < deadline:
            async with self._repository() as emergencies:
                batch = await emergencies.claim_items(
                    rotation_id, limit=settings.emergency_concurrency * 4, lease_s=_ITEM_LEASE_S
                )
            if not batch:
                break
            # Revoke first: nothing in the batch is replaced before everything in it is blocked.
            blocked = await asyncio.gather(
                *(self._block_item(rotation, item) for item in batch if item.status == "pending")
            )
            failed = {key_id for key_id, ok in blocked if not ok}
            owners = sorted({item.owner for item in batch if item.key_id not in failed})
            await asyncio.gather(*(bounded(self._replace(rotation, owner)) for owner in owners))
        async with self._repository() as emergencies:
            await emergencies.complete_if_done(rotation_id)

    async def _block_item(
        self, rotation: EmergencyRotationRecord, item: EmergencyItemRecord
    ) -> tuple[UUID, bool]:
        """Disable the key at OpenRouter and read it back; no lease needed, it only reduces."""
        keys = KeyLifecycleService(self._runtime)
        try:
            key = await keys.get_key(item.key_id)
            if key.openrouter_hash is None or key.deleted_at is not None:
                return item.key_id, True  # nothing at OpenRouter yet, or any more: the owner step
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
            return item.key_id, True
        except (AppError, OpenRouterError) as exc:
            await self._retry_later(rotation, item, exc)
            return item.key_id, False

    async def _replace(self, rotation: EmergencyRotationRecord, owner_key: str) -> None:
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
            for item in open_items:
                await self._retry_later(rotation, item, exc)
            return
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

    async def _retry_later(
        self, rotation: EmergencyRotationRecord, item: EmergencyItemRecord, exc: Exception
    ) -> None:
        code = getattr(exc, "code", None) or type(exc).__name__
        busy = code == "operation_in_progress"
        final = item.attempts >= MAX_ATTEMPTS
        logger.warning(
            "emergency item not done",
            extra={
                "rotation_id": str(rotation.id),
                "key_id": str(item.key_id),
                "error_code": code,
                "final": final,
            },
        )
        async with self._repository() as emergencies:
            await emergencies.mark_item(
                item,
                status="failed" if final else item.status,
                error=str(code),
                # Another invocation holds the owner for a moment: try again soon.
                retry_after_s=None if final else (1 if busy else min(2**item.attempts, 600)),
            )
