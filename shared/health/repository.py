"""The health group's one question to the database, over the store functions."""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.db.rpc import StoreRpc


@dataclass(frozen=True, slots=True)
class DatabaseProbe:
    latency_ms: float
    server_version: str
    migration_version: str | None


class HealthRepository:
    def __init__(self, store: StoreRpc) -> None:
        self._store = store

    async def probe(self) -> DatabaseProbe:
        """One round trip: server version and the newest applied migration."""
        started = time.perf_counter()
        row = await self._store.call("store_probe", {})
        latency_ms = (time.perf_counter() - started) * 1000
        version = row["migration_version"]
        return DatabaseProbe(
            latency_ms=round(latency_ms, 2),
            server_version=str(row["server_version"]),
            migration_version=None if version is None else str(version),
        )
