"""Usage logging throughput: single events over real HTTP at 1, 16 and 64 clients, batches,
and a million micro-dollar events summing to exactly one dollar.

    .venv/bin/python -m bench.usage_ingest [--seconds 6] [--million]

Ceilings measured in the same run: the same HTTP stack (uvicorn + FastAPI) with a no-op POST
route, and the SQL function record_usage_events called directly (one event a call) with the
same concurrency. Load
comes from wrk (Debian's package) with a Lua script that makes every generation id unique.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from bench.common import PYTHON, ROOT, clean_env, running_servers, wrk_load

USERS = 100
LUA = """
local counter = 0
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
function init(args) prefix = "t" .. tid .. "-" .. math.random(1, 1e9) end
request = function()
  counter = counter + 1
  local body = string.format(
    '{"user_id":"bench-%d","generation_id":"%s-%d","model":"openai/gpt-4o",'
    .. '"prompt_tokens":100,"completion_tokens":20,"cost_usd":"0.000123","agent_name":"bench"}',
    counter % USERS, prefix, counter)
  return wrk.format("POST", wrk.path, wrk.headers, body)
end
""".replace("USERS", str(USERS))


async def _sql_ceiling(dsn: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """record_usage_events called directly, one event a call, by `concurrency` connections:
    (calls/s, p99 ms)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            i = 0
            while time.perf_counter() < deadline:
                i += 1
                started = time.perf_counter()
                event = {
                    "user_id": f"bench-{(n + i) % USERS}",
                    "model": "m",
                    "generation_id": f"sql-{n}-{i}-{started}",
                    "cost_usd": "0.000123",
                    "agent_name": "bench",
                    "prompt_tokens": 100,
                    "completion_tokens": 20,
                    "occurred_at": datetime.now(UTC).isoformat(),
                }
                await conn.execute(
                    "select * from record_usage_events(%s::jsonb, 'bench')",
                    (json.dumps([event]),),
                )
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, latencies[int(len(latencies) * 0.99)]


async def _batches(
    url: str, token: str, batches: int, size: int, cost: str, user: str, prefix: str
) -> float:
    """Events per second posting `batches` batches of `size`, 4 in flight."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=60) as client:
        semaphore = asyncio.Semaphore(4)

        async def post(b: int) -> None:
            events = [
                {
                    "user_id": user,
                    "generation_id": f"{prefix}-{b}-{i}",
                    "model": "m",
                    "cost_usd": cost,
                }
                for i in range(size)
            ]
            async with semaphore:
                response = await client.post(url, json={"events": events}, headers=headers)
                if response.status_code != 200 or response.json()["stored"] != size:
                    raise RuntimeError(f"batch {b}: {response.status_code} {response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(post(b) for b in range(batches)))
        return batches * size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument(
        "--million",
        action="store_true",
        help="also log 1,000,000 events of $0.000001 and check they sum to $1",
    )
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("install wrk (apt-get install wrk) to run this benchmark")

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "local"
        env = clean_env(
            LOCAL_DATA_DIR=str(data_dir), LOG_LEVEL="WARNING", DATABASE_POOL_MAX_SIZE="16"
        )
        with running_servers(data_dir, DATABASE_POOL_MAX_SIZE="16") as (port, noop_port):
            dsn = f"postgresql://postgres@/postgres?host={data_dir / 'pgdata'}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "insert into users (user_id, tier, updated_by) select 'bench-' || i, 'admin',"
                    " 'bench' from generate_series(0, %s) i",
                    (USERS,),
                )
            token = subprocess.run(  # noqa: S603
                [
                    PYTHON,
                    "-m",
                    "shared.cli",
                    "tokens",
                    "issue",
                    "--name",
                    "bench",
                    "--scope",
                    "usage:write",
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            lua = Path(scratch) / "usage.lua"
            lua.write_text(LUA)
            url = f"http://127.0.0.1:{port}/api/usage/log"
            auth = (f"Authorization: Bearer {token}", "Content-Type: application/json")
            plain = ("Content-Type: application/json",)
            wrk_load(url, seconds=2, concurrency=4, script=lua, headers=auth)  # warm-up
            print(
                f"POST /api/usage/log, single events, wrk {options.seconds} s per run, "
                "loopback, embedded PostgreSQL"
            )
            print(
                f"{'clients':>8} {'ours req/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'no-op req/s':>12} {'SQL calls/s':>12} {'SQL p99':>8} {'vs composed':>12}"
            )
            for clients in (1, 16, 64):
                ours = wrk_load(
                    url, seconds=options.seconds, concurrency=clients, script=lua, headers=auth
                )
                ceiling = wrk_load(
                    f"http://127.0.0.1:{noop_port}/noop",
                    seconds=options.seconds,
                    concurrency=clients,
                    script=lua,
                    headers=plain,
                )
                sql_rate, sql_p99 = asyncio.run(_sql_ceiling(dsn, clients, options.seconds))
                # Two stages in series: the slower bounds, together they compose harmonically.
                composed = 1 / (1 / ceiling.rate + 1 / sql_rate)
                print(
                    f"{clients:>8} {ours.rate:>11.0f} {ours.p50_ms:>8.2f} {ours.p95_ms:>8.2f}"
                    f" {ceiling.rate:>12.0f} {sql_rate:>12.0f} {sql_p99:>8.2f}"
                    f" {ours.rate / composed:>11.2f}x"
                    + ("" if not ours.errors else f"  non-2xx {ours.errors}")
                )
            rate = asyncio.run(_batches(url, token, 40, 1000, "0.000123", "bench-1", "batch"))
            print(f"batches of 1,000 events, 4 in flight: {rate:,.0f} events/s")
            if options.million:
                started = time.perf_counter()
                million_rate = asyncio.run(
                    _batches(url, token, 1000, 1000, "0.000001", f"bench-{USERS}", "million")
                )
                with psycopg.connect(dsn) as conn:
                    total = conn.execute(
                        "select spent_usd, events from usage_totals where user_id = %s",
                        (f"bench-{USERS}",),
                    ).fetchone()
                print(
                    f"1,000,000 events of $0.000001: total {total[0]} over {total[1]:,} "
                    f"events, {time.perf_counter() - started:.1f} s ({million_rate:,.0f}/s)"
                )


if __name__ == "__main__":
    main()
