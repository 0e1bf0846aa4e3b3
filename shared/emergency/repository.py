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
    job_id: UUID | None

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
    updated_at: datetime
    attempts: int = 0  # tries of its work items (blocking it, replacing its owner's keys)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EmergencyItemRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


class EmergencyRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def unknown_tiers(self, tiers: list[str]) -> list[str]:
        """Of these tier names, those no tier has."""
        cursor = await self._conn.execute(
            "select t from unnest(%s::text[]) t"
            " where not exists (select 1 from subscription_tiers s where s.tier = t) order by t",
            (tiers,),
        )
        return [str(row["t"]) for row in await cursor.fetchall()]

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
        rotation_id: UUID,
        job_id: UUID,
        requested_by: str,
        reason: str,
        scope: dict[str, Any],
        keys: list[KeyRecord],
        request_id: str | None,
    ) -> EmergencyRotationRecord:
        cursor = await self._conn.execute(
            "insert into emergency_rotations (id, job_id, requested_by, reason, scope, status,"
            " total, request_id) values (%s, %s, %s, %s, %s::jsonb, 'running', %s, %s)"
            " returning *",
            (rotation_id, job_id, requested_by, reason, json.dumps(scope), len(keys), request_id),
        )
        row = await cursor.fetchone()
        assert row is not None
        await self._conn.execute(
            "insert into emergency_rotation_items (rotation_id, key_id, owner, status)"
            " select %s, k, o, 'pending' from unnest(%s::uuid[], %s::text[]) as u(k, o)",
            (rotation_id, [key.id for key in keys], [key.owner for key in keys]),
        )
        return EmergencyRotationRecord.from_row(row)

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
            "select i.*, coalesce(b.attempts, 0) + coalesce(o.attempts, 0) as attempts"
            " from emergency_rotation_items i join emergency_rotations r on r.id = i.rotation_id"
            " left join work_items b on b.job_id = r.job_id and b.item = 'revoke:' || i.key_id"
            " left join work_items o on o.job_id = r.job_id and o.item = 'replace:' || i.owner"
            " where i.rotation_id = %s order by i.owner, i.key_id",
            (rotation_id,),
        )
        return [EmergencyItemRecord.from_row(row) for row in await cursor.fetchall()]

    async def item(self, rotation_id: UUID, key_id: UUID) -> EmergencyItemRecord | None:
        cursor = await self._conn.execute(
            "select * from emergency_rotation_items where rotation_id = %s and key_id = %s",
            (rotation_id, key_id),
        )
        row = await cursor.fetchone()
        return None if row is None else EmergencyItemRecord.from_row(row)

    async def mark_item(
        self,
        item: EmergencyItemRecord,
        *,
        status: str,
        revoke_ms: Decimal | None = None,
        replacement_key_id: UUID | None = None,
        error: str | None = None,
    ) -> None:
        await self._conn.execute(
            "update emergency_rotation_items set status = %s,"
            " revoke_ms = coalesce(%s, revoke_ms),"
            " replacement_key_id = coalesce(%s, replacement_key_id), error = %s,"
            " updated_at = now()"
            " where rotation_id = %s and key_id = %s",
            (status, revoke_ms, replacement_key_id, error, item.rotation_id, item.key_id),
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
