"""All SQL of the health group."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from shared.db.database import Database


@dataclass(frozen=True, slots=True)
class DatabaseProbe:
    latency_ms: float
    server_version: str
    migration_version: str | None


class HealthRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def probe(self) -> DatabaseProbe:
        """One round trip: server version and the newest applied migration."""
        async with self._database.connection() as conn:
            started = time.perf_counter()
            try:
                cursor = await conn.execute(
                    "select current_setting('server_version') as server_version,"
                    " (select max(version) from schema_migrations) as migration_version"
                )
            except psycopg.errors.UndefinedTable:
                # A database that was never migrated: still reachable, at no version.
                cursor = await conn.execute(
                    "select current_setting('server_version') as server_version,"
                    " null::text as migration_version"
                )
            row = await cursor.fetchone()
            latency_ms = (time.perf_counter() - started) * 1000
        assert row is not None
        version = row["migration_version"]
        return DatabaseProbe(
            latency_ms=round(latency_ms, 2),
            server_version=str(row["server_version"]),
            migration_version=None if version is None else str(version),
        )
