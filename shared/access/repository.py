"""All SQL of access control: service tokens and rate-limit counters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from shared.db.database import Connection, Database


@dataclass(frozen=True, slots=True)
class ServiceTokenRecord:
    id: UUID
    name: str
    token_hint: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ServiceTokenRecord:
        # Rows also carry token_hash; it never leaves the repository.
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    allowed: bool
    hits: int
    retry_after_s: int


class ServiceTokenRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def insert(
        self,
        *,
        name: str,
        token_hash: bytes,
        token_hint: str,
        scopes: list[str],
        created_by: str,
        expires_at: datetime | None,
    ) -> ServiceTokenRecord:
        cursor = await self._conn.execute(
            "insert into service_tokens"
            " (name, token_hash, token_hint, scopes, created_by, expires_at)"
            " values (%s, %s, %s, %s, %s, %s) returning *",
            (name, token_hash, token_hint, scopes, created_by, expires_at),
        )
        row = await cursor.fetchone()
        assert row is not None
        return ServiceTokenRecord.from_row(row)

    async def list(self, *, include_revoked: bool) -> list[ServiceTokenRecord]:
        cursor = await self._conn.execute(
            "select * from service_tokens"
            " where %s or revoked_at is null order by created_at desc, id",
            (include_revoked,),
        )
        return [ServiceTokenRecord.from_row(row) for row in await cursor.fetchall()]

    async def revoke(
        self, token_id: UUID, *, revoked_by: str
    ) -> tuple[ServiceTokenRecord, bool] | None:
        """Revoke once; revoking again keeps the first revocation's time and author. The
        record, and whether this call revoked it."""
        cursor = await self._conn.execute(
            "with prior as (select id, revoked_at from service_tokens where id = %s for update)"
            " update service_tokens t set revoked_at = coalesce(t.revoked_at, now()),"
            " revoked_by = coalesce(t.revoked_by, %s) from prior where t.id = prior.id"
            " returning t.*, prior.revoked_at is null as revoked_now",
            (token_id, revoked_by),
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        return ServiceTokenRecord.from_row(row), bool(row["revoked_now"])


class RateLimitRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def prune(self) -> int:
        async with self._database.connection() as conn:
            cursor = await conn.execute("select prune_rate_limit_counters() as pruned")
            row = await cursor.fetchone()
        assert row is not None
        return cast(int, row["pruned"])
