"""All SQL of emergency rotations."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from shared.db.database import Connection
from shared.keys.repository import KeyRecord


@dataclass(frozen=True, slots=True)
class EmergencyRotationRecord:
    id: UUID
    requested_by: str
    reason: str
    scope: dict[str, Any]
    status: str
    total: int
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EmergencyRotationRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class EmergencyItemRecord:
    rotation_id: UUID
    key_id: UUID
    owner: str
    status: str
    revoke_ms: Decimal | None
    replacement_key_id: UUID | None
    error: str | None
    attempts: int
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EmergencyItemRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


class EmergencyRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def keys_in_scope(
        self,
        *,
        everything: bool,
        user_ids: list[str],
        tiers: list[str],
        key_ids: list[UUID],
    ) -> list[KeyRecord]:
        cursor = await self._conn.execute(
            "select k.* from api_keys k left join users u on u.user_id = k.user_id"
            " where k.state in ('current', 'previous', 'pending')"
            " and (%s or k.user_id = any(%s) or u.tier = any(%s)"
            " or k.id = any(%s)) order by k.owner, k.created_at",
            (everything, user_ids, tiers, key_ids),
        )
        return [KeyRecord.from_row(row) for row in await cursor.fetchall()]

    async def insert_rotation(
        self,
        *,
        requested_by: str,
        reason: str,
        scope: dict[str, Any],
        keys: list[KeyRecord],
        request_id: str | None,
    ) -> EmergencyRotationRecord:
        cursor = await self._conn.execute(
            "insert into emergency_rotations (requested_by, reason, scope, status, total,"
            " request_id) values (%s, %s, %s::jsonb, 'running', %s, %s) returning *",
            (requested_by, reason, json.dumps(scope), len(keys), request_id),
        )
        row = await cursor.fetchone()
        assert row is not None
        rotation = EmergencyRotationRecord.from_row(row)
        async with self._conn.cursor() as cur:
            await cur.executemany(
                "insert into emergency_rotation_items (rotation_id, key_id, owner, status)"
                " values (%s, %s, %s, 'pending')",
                [(rotation.id, key.id, key.owner) for key in keys],
            )
        return rotation

    async def get_rotation(self, rotation_id: UUID) -> EmergencyRotationRecord | None:
        cursor = await self._conn.execute(
            "select * from emergency_rotations where id = %s", (rotation_id,)
        )
        row = await cursor.fetchone()
        return None if row is None else EmergencyRotationRecord.from_row(row)

    async def running_rotations(self) -> list[EmergencyRotationRecord]:
        cursor = await self._conn.execute(
            "select * from emergency_rotations where status = 'running' order by created_at"
        )
        return [EmergencyRotationRecord.from_row(row) for row in await cursor.fetchall()]

    async def recent_rotations(
        self, *, limit: int
    ) -> list[tuple[EmergencyRotationRecord, int, int]]:
        """The newest rotations, each with its replaced and failed counts."""
        cursor = await self._conn.execute(
            "select r.*, count(*) filter (where i.status = 'replaced') as replaced_count,"
            " count(*) filter (where i.status = 'failed') as failed_count"
            " from emergency_rotations r left join emergency_rotation_items i"
            " on i.rotation_id = r.id group by r.id order by r.created_at desc limit %s",
            (limit,),
        )
        return [
            (
                EmergencyRotationRecord.from_row(row),
                int(row["replaced_count"]),  # type: ignore[call-overload]
                int(row["failed_count"]),  # type: ignore[call-overload]
            )
            for row in await cursor.fetchall()
        ]

    async def items(self, rotation_id: UUID) -> list[EmergencyItemRecord]:
        cursor = await self._conn.execute(
            "select * from emergency_rotation_items where rotation_id = %s order by owner",
            (rotation_id,),
        )
        return [EmergencyItemRecord.from_row(row) for row in await cursor.fetchall()]

    async def claim_items(
        self, rotation_id: UUID, *, limit: int, lease_s: int
    ) -> list[EmergencyItemRecord]:
        """Items no one is working on; SKIP LOCKED so that parallel workers split them."""
        cursor = await self._conn.execute(
            "update emergency_rotation_items i"
            " set lease_until = now() + make_interval(secs => %s), attempts = attempts + 1"
            " from (select rotation_id, key_id from emergency_rotation_items"
            "       where rotation_id = %s and status in ('pending', 'disabled')"
            "       and (lease_until is null or lease_until < now())"
            "       order by owner limit %s for update skip locked) claimable"
            " where i.rotation_id = claimable.rotation_id and i.key_id = claimable.key_id"
            " returning i.*",
            (lease_s, rotation_id, limit),
        )
        return [EmergencyItemRecord.from_row(row) for row in await cursor.fetchall()]

    async def mark_item(
        self,
        item: EmergencyItemRecord,
        *,
        status: str,
        revoke_ms: Decimal | None = None,
        replacement_key_id: UUID | None = None,
        error: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        """Record an item's state; retry_after_s keeps it from being claimed again too soon."""
        await self._conn.execute(
            "update emergency_rotation_items set status = %s,"
            " revoke_ms = coalesce(%s, revoke_ms),"
            " replacement_key_id = coalesce(%s, replacement_key_id), error = %s,"
            " lease_until = case when %s::integer is null then null"
            "   else now() + make_interval(secs => %s::integer) end,"
            " updated_at = now()"
            " where rotation_id = %s and key_id = %s",
            (
                status,
                revoke_ms,
                replacement_key_id,
                error,
                retry_after_s,
                retry_after_s,
                item.rotation_id,
                item.key_id,
            ),
        )

    async def owner_items(self, rotation_id: UUID, owner: str) -> list[EmergencyItemRecord]:
        cursor = await self._conn.execute(
            "select * from emergency_rotation_items where rotation_id = %s and owner = %s",
            (rotation_id, owner),
        )
        return [EmergencyItemRecord.from_row(row) for row in await cursor.fetchall()]

    async def complete_if_done(self, rotation_id: UUID) -> None:
        """Once no item is left to work on: completed, or failed if any key failed."""
        await self._conn.execute(
            "update emergency_rotations r set completed_at = now(), updated_at = now(),"
            " status = case when exists (select 1 from emergency_rotation_items"
            "  where rotation_id = r.id and status = 'failed') then 'failed' else 'completed' end"
            " where r.id = %s and r.status = 'running' and not exists ("
            " select 1 from emergency_rotation_items where rotation_id = %s"
            " and status in ('pending', 'disabled'))",
            (rotation_id, rotation_id),
        )
