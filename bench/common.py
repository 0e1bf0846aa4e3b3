"""Helpers shared by the benchmarks: process timing, a bounded HTTP load client, percentiles."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def median_process_seconds(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    """Median wall time of a whole process, like hyperfine without the install."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, env=env, cwd=ROOT, capture_output=True)  # noqa: S603
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout_s: float) -> float:
    """Seconds until a line containing needle appears on the process's stdout."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    started = time.perf_counter()
    deadline = started + timeout_s
    while (remaining := deadline - time.perf_counter()) > 0 and selector.select(remaining):
        line = process.stdout.readline()
        if not line:
            break
        if needle in line:
            return time.perf_counter() - started
    raise RuntimeError(f"{needle!r} not seen within {timeout_s}s")


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "OPENROUTER_"))}
    env.update({"APP_ENV": "development", "LOG_LEVEL": "WARNING", **overrides})
    return env


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _wrk_ms(value: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


def wrk_load(
    url: str,
    *,
    seconds: int,
    concurrency: int,
    script: Path | None = None,
    headers: tuple[str, ...] = (),
) -> LoadResult:
    """wrk (Debian's package), bounded in time; optional Lua script and headers. wrk reports
    no 95th percentile, so the tail figure is its 99th, which is stricter."""
    command = ["wrk", f"-t{min(concurrency, 2)}", f"-c{concurrency}", f"-d{seconds}s"]
    command.append("--latency")
    if script is not None:
        command += ["-s", str(script)]
    for header in headers:
        command += ["-H", header]
    output = subprocess.run(  # noqa: S603
        [*command, url], check=True, capture_output=True, text=True
    ).stdout
    percentiles: dict[str, float] = {}
    requests = errors = 0
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            percentiles[parts[0]] = _wrk_ms(parts[1])
        elif "requests in" in line:
            requests = int(parts[0])
        elif line.strip().startswith("Non-2xx"):
            errors += int(parts[-1])
    return LoadResult(requests, errors, float(seconds), percentiles["50%"], percentiles["99%"])


async def load(url: str, *, requests: int, concurrency: int, max_seconds: float) -> LoadResult:
    """Send at most `requests` GETs with `concurrency` in flight; stop at max_seconds."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def worker() -> None:
            nonlocal errors, sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                started = time.perf_counter()
                try:
                    response = await client.get(url)
                    if response.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p95_ms=latencies[int(len(latencies) * 0.95)] * 1000,
    )


@contextmanager
def running_servers(data_dir: Path, **env_overrides: str) -> Iterator[tuple[int, int]]:
    """Our local server (embedded defaults, in data_dir) and the bare no-op FastAPI app, both
    on loopback; yields (our port, no-op port) once ours is ready, and stops both after."""
    port, noop_port = free_port(), free_port()
    env = clean_env(LOCAL_DATA_DIR=str(data_dir), **{**env_overrides, "LOG_LEVEL": "INFO"})
    ours = subprocess.Popen(  # noqa: S603
        [PYTHON, "-m", "shared.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    noop = subprocess.Popen(  # noqa: S603
        [
            PYTHON,
            "-m",
            "uvicorn",
            "bench.noop_app:app",
            "--port",
            str(noop_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_line(ours, '"ready: ', timeout_s=60)
        assert ours.stdout is not None
        # Our server logs one line per request; drain them so its pipe never blocks it.
        subprocess.Popen(["cat"], stdin=ours.stdout, stdout=subprocess.DEVNULL)  # noqa: S607
        yield port, noop_port
    finally:
        for process in (ours, noop):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
