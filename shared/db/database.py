"""A lazily opened, bounded psycopg 3 connection pool that suits a long-running server and Lambda.

Nothing connects at import or construction time: the first query opens the pool, so a function
that never touches the database pays nothing, and a warm Lambda container reuses its connections.
The pool is bound to the event loop that opened it; if a later call runs on another loop (some
runtimes start a fresh loop per invocation) the pool is rebuilt rather than used across loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from shared.errors import ServiceUnavailable
from shared.redaction import redact

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

# The driver is imported when the first connection is made, not with this module: a function
# answering without the database (a refused credential, a health summary, the Supabase
# transport) never pays its ~60 ms of import.
Connection: TypeAlias = "psycopg.AsyncConnection[dict[str, object]]"


@dataclass(frozen=True, slots=True)
class PoolLimits:
    min_size: int = 0
    max_size: int = 5
    connect_timeout_s: float = 5.0
    statement_timeout_ms: int = 10_000
    prepare_statements: bool = True


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"


class Database:
    def __init__(self, dsn: str, limits: PoolLimits | None = None) -> None:
        self._dsn = dsn
        self._limits = limits or PoolLimits()
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._open_lock: asyncio.Lock | None = None
        self._open_lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def dsn(self) -> str:
        return self._dsn

    async def _configure(self, connection: Connection) -> None:
        if not self._limits.prepare_statements:
            connection.prepare_threshold = None

    async def _get_pool(self) -> AsyncConnectionPool[Connection]:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        loop = asyncio.get_running_loop()
        if self._pool is not None and self._pool_loop is loop:
            return self._pool
        # One lock per loop, made without an await in between, so that concurrent first uses
        # on a new loop share it and open one pool between them.
        if self._open_lock is None or self._open_lock_loop is not loop:
            self._open_lock, self._open_lock_loop = asyncio.Lock(), loop
        async with self._open_lock:
            if self._pool is not None and self._pool_loop is loop:
                return self._pool
            # A pool from another loop cannot be awaited here; it is dropped, and its
            # connections close when the old loop's objects are collected.
            self._pool = None
            options = f"-c statement_timeout={self._limits.statement_timeout_ms}"
            pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
                self._dsn,
                min_size=self._limits.min_size,
                max_size=self._limits.max_size,
                timeout=self._limits.connect_timeout_s,
                kwargs={
                    "row_factory": dict_row,
                    "autocommit": True,
                    "connect_timeout": max(1, int(self._limits.connect_timeout_s)),
                    "options": options,
                },
                configure=self._configure,
                open=False,
                name="openrouter-agent",
            )
            await pool.open(wait=False)
            self._pool, self._pool_loop = pool, loop
            return pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit mode; use `async with conn.transaction()` for more."""
        pool = await self._get_pool()
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with pool.connection() as connection:
                yield connection
        except PoolTimeout as exc:
            raise DatabaseUnavailable(
                "no database connection could be made in time",
                details={"reason": redact(str(exc))},
            ) from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                "the database connection failed", details={"reason": redact(str(exc))}
            ) from exc

    async def close(self) -> None:
        pool, loop = self._pool, self._pool_loop
        self._pool, self._pool_loop = None, None
        if pool is None or loop is None:
            return
        if loop is asyncio.get_running_loop():
            await pool.close()
        elif not loop.is_closed() and not loop.is_running():
            # A pool opened by another, idle loop (Mangum's, a job handler's) is closed on that
            # loop, in a worker thread, so that its tasks end instead of being destroyed pending.
            await asyncio.to_thread(loop.run_until_complete, pool.close())
