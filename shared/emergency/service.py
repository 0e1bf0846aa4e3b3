"""Emergency rotation: block every key in scope at OpenRouter first, confirm it, then replace it.

Revoke-first is the point: a leaked key stops working before anything else happens. Each key is
an item of a persisted job, processed with bounded concurrency until the invocation's time
budget is spent; the rest is picked up by the next invocation (the job route or schedule).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
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
from shared.keys.repository import KeyRecord, KeyRepository
from shared.keys.service import KeyLifecycleService, Owner
from shared.observability import logger
from shared.openrouter.errors import OpenRouterError, OpenRouterNotFound
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
        """Work on the rotation's items until none is left or the time budget is spent."""
        settings = self._runtime.settings
        deadline = time.monotonic() + time_budget_s
        rotation = (await self.status(rotation_id)).rotation
        semaphore = asyncio.Semaphore(settings.emergency_concurrency)

        async def handle(item: EmergencyItemRecord) -> None:
            async with semaphore:
                await self._handle_item(rotation, item)

        while time.monotonic() < deadline:
            async with self._repository() as emergencies:
                batch = await emergencies.claim_items(
                    rotation_id, limit=settings.emergency_concurrency * 4, lease_s=_ITEM_LEASE_S
                )
            if not batch:
                break
            await asyncio.gather(*(handle(item) for item in batch))
        async with self._repository() as emergencies:
            await emergencies.complete_if_done(rotation_id)

    async def _handle_item(
        self, rotation: EmergencyRotationRecord, item: EmergencyItemRecord
    ) -> None:
        keys = KeyLifecycleService(self._runtime)
        try:
            key = await keys.get_key(item.key_id)
            if item.status == "pending":
                if key.state == "current" and key.openrouter_hash is not None:
                    revoke_ms = await self._block(key)
                    await self._record(
                        rotation,
                        item,
                        status="disabled",
                        revoke_ms=revoke_ms,
                        action="emergency.key_disabled",
                        key=key,
                    )
                    item = replace(item, status="disabled")
                else:
                    # Replaced or revoked since the job started: nothing left to block.
                    await self._record(rotation, item, status="replaced", action=None, key=key)
                    return
            if item.status == "disabled":
                issued = await keys.rotate_key(
                    Owner.parse(item.owner),
                    actor=f"emergency:{rotation.id}",
                    grace_seconds=0,
                    reason=rotation.reason,
                )
                await self._record(
                    rotation,
                    item,
                    status="replaced",
                    replacement_key_id=issued.key.id,
                    action=None,
                    key=key,
                )
        except (AppError, OpenRouterError) as exc:
            code = getattr(exc, "code", None) or type(exc).__name__
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
                    retry_after_s=None if final else min(2**item.attempts, 600),
                )

    async def _block(self, key: KeyRecord) -> Decimal:
        """Disable the key at OpenRouter and read it back; the measured time to revoke, in ms."""
        assert key.openrouter_hash is not None
        client = self._runtime.openrouter()
        started = time.perf_counter()
        try:
            await client.update_key(key.openrouter_hash, disabled=True)
            confirmed = await client.get_key(key.openrouter_hash)
        except OpenRouterNotFound:
            return Decimal(round((time.perf_counter() - started) * 1000, 3))  # already gone
        if not confirmed.disabled:
            raise OpenRouterError("OpenRouter did not confirm the key is disabled")
        return Decimal(str(round((time.perf_counter() - started) * 1000, 3)))

    async def _record(
        self,
        rotation: EmergencyRotationRecord,
        item: EmergencyItemRecord,
        *,
        status: str,
        action: str | None,
        key: KeyRecord,
        revoke_ms: Decimal | None = None,
        replacement_key_id: UUID | None = None,
    ) -> None:
        async with self._runtime.database().connection() as conn, conn.transaction():
            await EmergencyRepository(conn).mark_item(
                item, status=status, revoke_ms=revoke_ms, replacement_key_id=replacement_key_id
            )
            if action is not None:
                await KeyRepository(conn).set_disabled(key.id, disabled=True)
                await AuditRepository(conn).append(
                    actor=f"emergency:{rotation.id}",
                    action=action,
                    target=f"key:{key.id}",
                    reason=rotation.reason,
                    request_id=rotation.request_id,
                    fingerprint=key.fingerprint,
                    details={"revoke_ms": None if revoke_ms is None else str(revoke_ms)},
                )
