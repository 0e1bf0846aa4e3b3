"""Sustained mixed load on the local server: errors, exact books, memory over time.

    .venv/bin/python -m bench.sustained_load [--seconds 60] [--usage-rate 300]
    .venv/bin/python -m bench.sustained_load --wrk [--seconds 60] [--connections 16]

With --wrk the load is wrk's (Debian's package), closed-loop at as many requests as the
server takes, the usage benchmark's throughput: nine in ten requests log a usage event (every
tenth of those repeats the one before), the rest read a user's month; afterwards every book
is checked against the ledger's events and the server's memory is printed.

Starts `openrouter-agent serve` on embedded defaults, creates keys for `--users` users, then
for `--seconds` sends, open-loop at fixed rates: usage events (one per request, a tenth of them
sent twice on purpose), reads of users' months, and key rotations. Afterwards it checks that
each user's book equals what was sent, to the last micro-dollar (nothing lost, no duplicate
counted), and prints the errors, the latencies and the server's memory (RSS) every 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import httpx
import psutil

from bench.common import PYTHON, ROOT, clean_env, running_servers


def issue_token(data_dir: Path) -> str:
    env = clean_env(LOCAL_DATA_DIR=str(data_dir), LOG_LEVEL="WARNING")
    return subprocess.run(  # noqa: S603
        [PYTHON, "-m", "shared.cli", "tokens", "issue", "--name", "load", "--scope", "admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def server_pid(port: int) -> int:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == "LISTEN":
            assert connection.pid is not None
            return connection.pid
    raise RuntimeError(f"nothing listens on {port}")


async def run(options: argparse.Namespace, port: int, token: str) -> None:
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    users = [f"load-{n:03d}" for n in range(options.users)]
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as api:
        for user in users:
            created = await api.post("/api/keys/create", json={"user_id": user, "tier": "admin"})
            assert created.status_code == 201, created.text

        sent: dict[str, Decimal] = defaultdict(Decimal)
        latencies: dict[str, list[float]] = defaultdict(list)
        errors: dict[str, int] = defaultdict(int)
        in_flight: set[asyncio.Future[object]] = set()
        counter = 0
        process = psutil.Process(server_pid(port))
        memory: list[tuple[float, float]] = []

        async def request(kind: str, method: str, path: str, body: object = None) -> bool:
            started = time.perf_counter()
            try:
                response = await api.request(method, path, json=body)
                ok = response.status_code < 400
            except httpx.HTTPError:
                ok = False
            latencies[kind].append((time.perf_counter() - started) * 1000)
            if not ok:
                errors[kind] += 1
            return ok

        async def log_usage(user: str, cost: Decimal, event: dict[str, str], times: int) -> None:
            # An event counts as sent once the service acknowledged it (stored or duplicate):
            # a request that failed or timed out is one the caller knows to send again.
            acknowledged = [
                await request("usage log", "POST", "/api/usage/log", event) for _ in range(times)
            ]
            if any(acknowledged):
                sent[user] += cost

        def usage_event() -> None:
            nonlocal counter
            counter += 1
            user = users[counter % len(users)]
            cost = Decimal(random.randint(1, 5000)) / Decimal(1_000_000)
            event = {
                "user_id": user,
                "generation_id": f"load-{counter}",
                "model": "m",
                "cost_usd": str(cost),
            }
            # Every tenth event is sent twice: the book must count it once.
            start(log_usage(user, cost, event, 2 if counter % 10 == 0 else 1))

        def start(coroutine: object) -> None:
            task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

        schedule = (
            (options.usage_rate, usage_event),
            (
                options.read_rate,
                lambda: start(request("usage read", "GET", f"/api/usage/{random.choice(users)}")),
            ),
            (
                options.rotate_rate,
                lambda: start(
                    request(
                        "key rotate",
                        "POST",
                        "/api/keys/rotate",
                        {"user_id": random.choice(users), "grace_seconds": 0},
                    )
                ),
            ),
        )
        began = time.perf_counter()
        next_at = [began for _ in schedule]
        next_sample = began
        while (now := time.perf_counter()) - began < options.seconds:
            for index, (rate, action) in enumerate(schedule):
                while next_at[index] <= now:
                    action()
                    next_at[index] += 1 / rate
            if now >= next_sample:
                memory.append((now - began, process.memory_info().rss / 2**20))
                next_sample += 10
            await asyncio.sleep(0.002)
        await asyncio.gather(*in_flight)
        elapsed = time.perf_counter() - began
        memory.append((elapsed, process.memory_info().rss / 2**20))

        wrong = []
        for user in users:
            month = (await api.get(f"/api/usage/{user}")).json()
            if Decimal(month["events_usd"]) != sent[user]:
                wrong.append((user, month["events_usd"], str(sent[user])))

    print(
        f"{options.seconds} s of mixed load on loopback: usage logs {options.usage_rate}/s "
        f"(every tenth sent twice), reads {options.read_rate}/s, rotations "
        f"{options.rotate_rate}/s, over {options.users} users"
    )
    print(f"{'request':12}{'sent':>8}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for kind, samples in latencies.items():
        ordered = sorted(samples)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"{kind:12}{len(samples):8d}{errors[kind]:8d}{statistics.median(ordered):9.1f}"
            f"{p99:9.1f}"
        )
    print(f"users whose book differs from what was sent: {len(wrong)} {wrong[:3]}")
    print("server memory (RSS): " + ", ".join(f"{t:.0f} s {mb:.0f} MB" for t, mb in memory))


WRK_MIX = """
local counter = 0
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
function init(args) prefix = "w" .. tid .. "-" .. math.random(1, 1e9) end
request = function()
  counter = counter + 1
  if counter % 10 == 0 then
    return wrk.format("GET", "/api/usage/load-" .. (counter % USERS), wrk.headers, nil)
  end
  -- every tenth event repeats the previous one: the book must count it once
  local n = counter
  if counter % 10 == 9 then n = counter - 1 end
  local body = string.format(
    '{"user_id":"load-%d","generation_id":"%s-%d","model":"m","cost_usd":"0.000123"}',
    n % USERS, prefix, n)
  return wrk.format("POST", "/api/usage/log", wrk.headers, body)
end
"""


def run_wrk(options: argparse.Namespace, port: int, token: str, data_dir: Path) -> None:
    from bench.common import wrk_load

    users = options.users
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    ) as api:
        for n in range(users):
            created = api.post("/api/keys/create", json={"user_id": f"load-{n}", "tier": "admin"})
            assert created.status_code == 201, created.text
    process = psutil.Process(server_pid(port))
    memory = [(0.0, process.memory_info().rss / 2**20)]
    script = data_dir.parent / "mix.lua"
    script.write_text(WRK_MIX.replace("USERS", str(users)))
    result: list[object] = []
    import threading

    worker = threading.Thread(
        target=lambda: result.append(
            wrk_load(
                f"http://127.0.0.1:{port}/",
                seconds=options.seconds,
                concurrency=options.connections,
                script=script,
                headers=(f"Authorization: Bearer {token}", "Content-Type: application/json"),
            )
        )
    )
    began = time.perf_counter()
    worker.start()
    while worker.is_alive():
        worker.join(timeout=10)
        memory.append((time.perf_counter() - began, process.memory_info().rss / 2**20))
    [load] = result
    dsn = f"postgresql://postgres@/postgres?host={data_dir / 'pgdata'}"
    import psycopg

    with psycopg.connect(dsn) as conn:
        wrong = conn.execute(
            "select count(*) from usage_totals t left join (select user_id, period,"
            " sum(cost_usd) as spent, count(*) as n from usage_events group by 1, 2) e"
            " using (user_id, period) where t.spent_usd <> e.spent or t.events <> e.n"
        ).fetchone()
        events = conn.execute("select count(*), sum(cost_usd) from usage_events").fetchone()
    print(
        f"{options.seconds} s of wrk on loopback, {options.connections} connections: "
        "9 in 10 requests log a usage event (every tenth repeats the previous), 1 reads"
    )
    print(
        f"requests {load.requests:,} ({load.rate:,.0f}/s), non-2xx {load.errors},"  # type: ignore[attr-defined]
        f" p50 {load.p50_ms:.1f} ms, p99 {load.p95_ms:.1f} ms"
    )  # type: ignore[attr-defined]
    print(
        f"ledger: {events[0]:,} distinct events, ${events[1]}; books that differ from their"  # type: ignore[index]
        f" events: {wrong[0]}"
    )  # type: ignore[index]
    print("server memory (RSS): " + ", ".join(f"{t:.0f} s {mb:.0f} MB" for t, mb in memory))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--usage-rate", type=float, default=300)
    parser.add_argument("--read-rate", type=float, default=30)
    parser.add_argument("--rotate-rate", type=float, default=2)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--wrk", action="store_true", help="closed-loop load with wrk")
    parser.add_argument("--connections", type=int, default=16)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "local"
        # Key writes are rate-limited per credential (10 a minute by default): raised for load.
        with running_servers(
            data_dir, DATABASE_POOL_MAX_SIZE="16", RATE_LIMIT_KEY_WRITES_PER_MINUTE="100000"
        ) as (port, _):
            if options.wrk:
                run_wrk(options, port, issue_token(data_dir), data_dir)
            else:
                asyncio.run(run(options, port, issue_token(data_dir)))


if __name__ == "__main__":
    main()
