"""The connection pool: lazy, bounded, and a clear 503 when the database is unreachable."""

from __future__ import annotations

import asyncio
import threading
from typing import cast

import pytest

from shared.db.database import Database, DatabaseUnavailable, PoolLimits


def test_constructing_a_database_connects_to_nothing() -> None:
    # An address that would fail at once if anything tried it.
    Database("postgresql://nobody@127.0.0.1:1/none")


async def test_an_unreachable_database_is_unavailable_not_a_crash() -> None:
    database = Database("postgresql://nobody@127.0.0.1:1/none", PoolLimits(connect_timeout_s=0.5))
    with pytest.raises(DatabaseUnavailable) as unavailable:
        async with database.connection():
            pass
    await database.close()
    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "database_unavailable"


async def test_the_pool_never_opens_more_than_max_size_connections(database_dsn: str) -> None:
    # Ten concurrent first uses: they must share one pool, not race to open several.
    database = Database(database_dsn, PoolLimits(max_size=2))

    async def backend_pid() -> int:
        async with database.connection() as conn:
            cursor = await conn.execute("select pg_backend_pid() as pid, pg_sleep(0.05)")
            row = await cursor.fetchone()
            assert row is not None
            return cast(int, row["pid"])

    pids = await asyncio.gather(*(backend_pid() for _ in range(10)))
    await database.close()
    assert len(set(pids)) <= 2


def test_a_pool_is_rebuilt_when_the_event_loop_changes(database_dsn: str) -> None:
    """Some runtimes run each invocation on a new loop; the pool must follow, not break."""
    database = Database(database_dsn)

    async def one_query() -> int:
        async with database.connection() as conn:
            cursor = await conn.execute("select 1 as one")
            row = await cursor.fetchone()
            assert row is not None
            return cast(int, row["one"])

    results: list[int] = []

    def invocation() -> None:
        results.append(asyncio.run(one_query()))

    for _ in range(2):
        thread = threading.Thread(target=invocation)
        thread.start()
        thread.join()
    assert results == [1, 1]


async def test_statement_timeout_is_applied(database_dsn: str) -> None:
    database = Database(database_dsn, PoolLimits(statement_timeout_ms=50))
    with pytest.raises(DatabaseUnavailable):
        async with database.connection() as conn:
            await conn.execute("select pg_sleep(1)")
    await database.close()
