"""Our own overhead on key create and rotate, against the emulator at zero latency.

    .venv/bin/python -m bench.key_operations [--operations 200]

Ceilings measured in the same run: the OpenRouter calls alone (our client against the same
in-process emulator: POST for a create; for a rotation with no grace PATCH (the old key
disabled), GET (what it spent), POST, GET (its final usage), DELETE) and one bare SQL
transaction on the same database. Our overhead is what a create or rotation costs beyond its
OpenRouter calls: the owner's lease, planning, sealing, committed steps with audit rows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import SecretStr

from shared.config import Environment, Settings
from shared.db.database import Database
from shared.db.embedded import start_embedded_postgres
from shared.db.migrations import MigrationRunner, load_migrations
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import EMULATOR_BASE_URL, Runtime


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1]


async def _time(count: int, step: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await step(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def run(operations: int, data_dir: Path) -> None:
    server = start_embedded_postgres(data_dir / "pgdata")
    database = Database(server.dsn)
    await MigrationRunner(database).migrate(load_migrations())
    emulator = Emulator()
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
    )
    settings = Settings(
        app_env=Environment.TEST, local_data_dir=data_dir, database_url=SecretStr(server.dsn)
    )
    service = KeyLifecycleService(
        Runtime(settings, database=database, openrouter=client, emulator=emulator)
    )

    async def bare_sql(_: int) -> None:
        async with database.connection() as conn, conn.transaction():
            await conn.execute("select 1")

    async def openrouter_create(i: int) -> None:
        await client.create_key(name=f"ceiling-{i}", limit=None, limit_reset="monthly")

    olds = [
        (await client.create_key(name=f"ceiling-o-{i}", limit=None)).key.hash
        for i in range(operations)
    ]

    async def openrouter_rotation_calls(i: int) -> None:
        await client.update_key(olds[i], disabled=True)
        await client.get_key(olds[i])
        await client.create_key(name=f"ceiling-r-{i}", limit=None)
        await client.get_key(olds[i])
        await client.delete_key(olds[i])

    async def create(i: int) -> None:
        await service.create_key(Owner.user(f"bench-{i}"), actor="bench", tier="standard")

    async def rotate(i: int) -> None:
        await service.rotate_key(Owner.user(f"bench-{i}"), actor="bench", grace_seconds=0)

    await _time(20, bare_sql)  # warm the pool and the caches
    sql = _percentiles(await _time(operations, bare_sql))
    create_ceiling = _percentiles(await _time(operations, openrouter_create))
    rotate_ceiling = _percentiles(await _time(operations, openrouter_rotation_calls))
    creates = _percentiles(await _time(operations, create))
    rotations = _percentiles(await _time(operations, rotate))
    await client.aclose()
    await database.close()
    server.destroy()

    print(f"{operations} operations each, sequential, emulator in process at zero latency")
    print(f"{'':34}{'p50 ms':>9}{'p95 ms':>9}")
    for name, (p50, p95) in (
        ("ceiling: bare SQL transaction", sql),
        ("ceiling: OpenRouter calls of create", create_ceiling),
        ("ceiling: OpenRouter calls of rotate", rotate_ceiling),
        ("create_key (whole saga)", creates),
        ("rotate_key (whole saga)", rotations),
    ):
        print(f"{name:34}{p50:9.2f}{p95:9.2f}")
    print(
        f"our overhead on create: p50 {creates[0] - create_ceiling[0]:.2f} ms, "
        f"p95 {creates[1] - create_ceiling[1]:.2f} ms "
        f"({creates[0] / sql[0]:.0f} bare SQL transactions at p50)"
    )
    print(
        f"our overhead on rotate: p50 {rotations[0] - rotate_ceiling[0]:.2f} ms, "
        f"p95 {rotations[1] - rotate_ceiling[1]:.2f} ms "
        f"({rotations[0] / sql[0]:.0f} bare SQL transactions at p50)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operations", type=int, default=200)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(run(options.operations, Path(scratch)))


if __name__ == "__main__":
    main()
