"""Health routes under bounded loopback load, against a no-op FastAPI route and the bare SQL.

    .venv/bin/python -m bench.http_health [--requests 3000] [--concurrency 16]

Both servers are single uvicorn processes on 127.0.0.1; the load client is a bounded httpx
client (it shares the machine's 2 cores with the servers, so compare ratios, not absolutes).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import LoadResult, load, running_servers, wrk_load


def _row(name: str, result: LoadResult, ceiling: LoadResult | None) -> str:
    ratio = "" if ceiling is None else f"  {result.rate / ceiling.rate:5.2f} x no-op rate"
    return (
        f"{name:<22} {result.rate:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
        f"tail {result.p95_ms:6.2f} ms  errors {result.errors}{ratio}"
    )


async def bare_sql_ms(dsn: str, queries: int) -> float:
    samples = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for _ in range(queries):
            started = time.perf_counter()
            await conn.execute(
                "select current_setting('server_version'),"
                " (select max(version) from schema_migrations)"
            )
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=30)
    parser.add_argument("--seconds", type=int, default=8, help="per route, with wrk")
    options = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "local"
        with running_servers(data_dir) as (ours_port, noop_port):

            def measure(url: str) -> LoadResult:
                if use_wrk:
                    return wrk_load(url, seconds=options.seconds, concurrency=options.concurrency)
                return asyncio.run(
                    load(
                        url,
                        requests=options.requests,
                        concurrency=options.concurrency,
                        max_seconds=options.max_seconds,
                    )
                )

            measure(f"http://127.0.0.1:{noop_port}/noop")  # warm-up
            ceiling = measure(f"http://127.0.0.1:{noop_port}/noop")
            liveness = measure(f"http://127.0.0.1:{ours_port}/health")
            database = measure(f"http://127.0.0.1:{ours_port}/health/database")
            dsn = f"postgresql://postgres@/postgres?host={data_dir / 'pgdata'}"
            sql_ms = asyncio.run(bare_sql_ms(dsn, 500))

    if use_wrk:
        print(
            f"load: wrk, {options.seconds} s per route, {options.concurrency} connections, "
            "loopback; latency columns are p50 and p99"
        )
    else:
        print(
            f"load: Python client (install wrk for a truer ceiling), {options.requests} GETs "
            f"per route, {options.concurrency} in flight, loopback; p50 and p95"
        )
    print(_row("ceiling: no-op route", ceiling, None))
    print(_row("GET /health", liveness, ceiling))
    print(_row("GET /health/database", database, ceiling))
    print(f"ceiling: bare SQL of /health/database, one connection: p50 {sql_ms:.3f} ms")


if __name__ == "__main__":
    main()
