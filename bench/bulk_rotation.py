"""Bulk rotation: the month's scheduled rotation of many user keys, against the ideal.

    .venv/bin/python -m bench.bulk_rotation [--keys 10000] [--latency 0.1] [--concurrency 32]
                                            [--budget 50]

Seeds `--keys` users on the monthly rotation policy, each with a key (through the real create
saga, emulator at zero latency), ages their keys into last month, then sets the emulator's
latency per OpenRouter call and runs the scheduled-rotation job as successive invocations of
`--budget` seconds each, as cron ticks would, until the month's job is done.

The ideal is every OpenRouter call the job made, at the injected latency, `--concurrency` at a
time: calls x latency / concurrency. Prints the wall time against it (target: at most 1.25 x),
the invocations, and the end state: duplicate keys (an owner with more than one current key)
and orphans (keys at OpenRouter that the database does not know, or the reverse), both 0.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from shared.config import Environment, Settings
from shared.db.database import Database, PoolLimits
from shared.db.embedded import start_embedded_postgres
from shared.db.migrations import MigrationRunner, load_migrations
from shared.jobs.queue import QueueSettings
from shared.keys.scheduled_rotation import rotate_scheduled_keys
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.openrouter.limiter import AdaptiveLimiter
from shared.runtime import EMULATOR_BASE_URL, Runtime


async def seed(service: KeyLifecycleService, count: int, concurrency: int) -> None:
    pending = iter(range(count))

    async def lane() -> None:
        for i in pending:
            await service.create_key(
                Owner.user(f"user-{i:06d}"), actor="bench", rotation_policy="monthly"
            )

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def run(options: argparse.Namespace, data_dir: Path) -> None:
    server = start_embedded_postgres(data_dir / "pgdata")
    database = Database(server.dsn, PoolLimits(max_size=options.pool))
    await MigrationRunner(database).migrate(load_migrations())
    emulator = Emulator()
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
        limiter=AdaptiveLimiter(options.concurrency),
    )
    settings = Settings(
        app_env=Environment.TEST,
        local_data_dir=data_dir,
        database_url=SecretStr(server.dsn),
        rotation_grace_seconds=0,  # each rotation runs to its end: old key deleted
    )
    runtime = Runtime(settings, database=database, openrouter=client, emulator=emulator)
    service = KeyLifecycleService(runtime)

    started = time.perf_counter()
    await seed(service, options.keys, options.concurrency)
    seeded_s = time.perf_counter() - started
    async with database.connection() as conn:
        await conn.execute(
            "update api_keys set activated_at = date_trunc('month', now()) - interval '1 day'"
        )

    emulator.latency_s = options.latency
    calls_before = len(emulator.requests)
    queue = QueueSettings(concurrency=options.concurrency, time_budget_s=options.budget)
    invocations: list[tuple[float, int]] = []
    started = time.perf_counter()
    while True:
        began = time.perf_counter()
        report = await rotate_scheduled_keys(runtime, queue)
        invocations.append((time.perf_counter() - began, report.done))
        if report.finished or len(invocations) > 100:
            break
    wall_s = time.perf_counter() - started
    calls = len(emulator.requests) - calls_before
    ideal_s = calls * options.latency / options.concurrency

    emulator.latency_s = 0
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select count(*) as n from (select owner from api_keys where state = 'current'"
            " group by owner having count(*) > 1) d"
        )
        duplicates = (await cursor.fetchone() or {})["n"]
        cursor = await conn.execute(
            "select openrouter_hash from api_keys where state in ('current', 'previous')"
        )
        ours = {row["openrouter_hash"] for row in await cursor.fetchall()}
        cursor = await conn.execute(
            "select count(*) as n from api_keys where state = 'current'"
            " and activated_at >= date_trunc('month', now())"
        )
        rotated = (await cursor.fetchone() or {})["n"]
    at_openrouter = {key.hash for key in await client.list_all_keys()}
    orphans = len(at_openrouter - ours) + len(ours - at_openrouter)
    await client.aclose()
    await database.close()
    server.destroy()

    print(
        f"{options.keys} user keys on the monthly policy; OpenRouter latency "
        f"{options.latency * 1000:.0f} ms per call; concurrency {options.concurrency}; "
        f"invocations of {options.budget:.0f} s"
    )
    print(f"seeding (create sagas, zero latency):    {seeded_s:8.1f} s")
    print(f"rotated:                                  {rotated:8d}")
    print(
        f"OpenRouter calls:                         {calls:8d} ({calls / rotated:.1f} a rotation)"
    )
    print(f"ideal (calls x latency / concurrency):    {ideal_s:8.1f} s")
    print(
        f"wall time over all invocations:           {wall_s:8.1f} s"
        f" ({wall_s / ideal_s:.2f} x ideal)"
    )
    print(
        "invocations (s, rotated):                 "
        + ", ".join(f"{s:.1f}/{n}" for s, n in invocations)
    )
    print(f"duplicate current keys: {duplicates}; orphans: {orphans}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--budget", type=float, default=50.0)
    parser.add_argument("--pool", type=int, default=16, help="database connections")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(run(options, Path(scratch)))


if __name__ == "__main__":
    main()
