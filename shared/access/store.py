"""What every request asks of the database, over the store functions: is this service token
valid, and may this credential act again this minute. Runs on either transport."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from shared.access.repository import RateLimitDecision, ServiceTokenRecord
from shared.db.rpc import StoreRpc


def _timestamp(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class AccessStore:
    def __init__(self, rpc: StoreRpc) -> None:
        self._rpc = rpc

    async def authenticate(self, token_hash: bytes) -> ServiceTokenRecord | None:
        """The token's record if it is valid (its last use is recorded), else None."""
        row = await self._rpc.call("store_authenticate_service_token", {"token_hash": token_hash})
        if row is None:
            return None
        return ServiceTokenRecord(
            id=UUID(row["id"]),
            name=row["name"],
            token_hint=row["token_hint"],
            scopes=list(row["scopes"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            created_by=row["created_by"],
            expires_at=_timestamp(row["expires_at"]),
            revoked_at=_timestamp(row["revoked_at"]),
            revoked_by=row["revoked_by"],
            last_used_at=_timestamp(row["last_used_at"]),
        )

    async def consume_rate_limit(
        self, bucket: str, *, limit: int, window_s: int
    ) -> RateLimitDecision:
        row = await self._rpc.call(
            "store_consume_rate_limit",
            {"bucket": bucket, "limit": limit, "window_seconds": window_s},
        )
        return RateLimitDecision(
            allowed=bool(row["allowed"]),
            hits=int(row["hits"]),
            retry_after_s=int(row["retry_after_seconds"]),
        )
