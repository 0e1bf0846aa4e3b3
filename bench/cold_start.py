"""Cold start per function: interpreter start to the first handled Lambda event, whole process.

    .venv/bin/python -m bench.cold_start [--runs 9]

For each function module (functions/<group>/aws.py) a fresh interpreter imports the module and
passes one API Gateway v2 event through its handler, then exits; the same is done for a bare
FastAPI + Mangum hello world (bench/hello_lambda.py), the ceiling, interleaved run by run so that
the machine's noise falls on both alike. Two first requests per function:

- `no I/O`: a request the function answers from its own code alone (the health summary, or a
  request without credentials that the access rule refuses): imports, app construction,
  routing, the access rule, the error envelope;
- `store`: a request with a service token that the function checks in the database (the
  embedded PostgreSQL started here, on loopback), so the driver's import and the first
  connection count too. Lambda would add its network round trip to the database on top.

Target (issue 6): `no I/O` at most 1.3 x the ceiling for every function.

Bytecode: installed packages (FastAPI and the rest) carry their .pyc files; our own modules get
theirs here first (compileall), as a deployment package should ship them, since Lambda's
read-only /var/task cannot cache bytecode and would compile every module at every cold start.
`--source` measures without our bytecode instead (as Vercel's builder ships by default).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, ROOT, clean_env

NO_IO_REQUESTS = {
    "health": ("GET", "/health"),
    "keys": ("GET", "/api/keys/user/someone"),
    "usage": ("GET", "/api/usage/someone"),
    "admin": ("GET", "/api/admin/keys"),
    "emergency": ("GET", "/api/admin/emergency-rotate/00000000-0000-0000-0000-000000000000"),
    "jobs": ("GET", "/api/jobs/deliver-alerts"),
}
# Requests that reach the database: a service token checked there, then the route's own query
# (a 404 for a user or rotation that does not exist is a full answer); the job runs its job.
STORE_REQUESTS = {
    "health": ("GET", "/health/database"),
    "keys": ("GET", "/api/keys/user/someone"),
    "usage": ("GET", "/api/usage/someone"),
    "admin": ("GET", "/api/admin/tiers"),
    "emergency": ("GET", "/api/admin/emergency-rotate/00000000-0000-0000-0000-000000000000"),
    "jobs": ("GET", "/api/jobs/prune-rate-limits"),
}
CRON_SECRET = "cold-start-bench-cron-secret-0123456789"


def one_run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, check=True, env=env, cwd=ROOT, capture_output=True, text=True)  # noqa: S603
    return time.perf_counter() - started, done.stdout.strip().splitlines()[-1]


def measure(
    cases: dict[str, list[str]], env: dict[str, str], runs: int
) -> dict[str, tuple[float, str]]:
    """Median seconds and the last status of each case, the cases interleaved run by run."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    statuses: dict[str, str] = {}
    for _ in range(runs):
        for name, argv in cases.items():
            seconds, status = one_run(argv, env)
            samples[name].append(seconds)
            statuses[name] = status
    return {name: (statistics.median(s), statuses[name]) for name, s in samples.items()}


def issue_token(dsn: str, data_dir: Path) -> str:
    """An admin service token, issued as `openrouter-agent tokens issue` would."""
    from pydantic import SecretStr

    from shared.access.principals import Scope
    from shared.access.service import AccessService
    from shared.config import Settings
    from shared.runtime import Runtime

    async def issue() -> str:
        settings = Settings(database_url=SecretStr(dsn), local_data_dir=data_dir)
        runtime = Runtime(settings)
        issued = await AccessService(runtime).issue_token(
            issued_by="bench", name="bench", scopes=list(Scope), expires_at=None
        )
        await runtime.database().close()
        return issued.token

    return asyncio.run(issue())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--source", action="store_true", help="without our modules' bytecode")
    options = parser.parse_args()
    runs = options.runs
    for folder in ("shared", "functions", "bench"):
        if options.source:
            for cache in (ROOT / folder).rglob("__pycache__"):
                shutil.rmtree(cache)
        else:
            compileall.compile_dir(ROOT / folder, quiet=1)

    from shared.db.embedded import start_embedded_postgres

    with tempfile.TemporaryDirectory() as scratch:
        server = start_embedded_postgres(Path(scratch) / "pgdata")
        try:
            asyncio.run(_migrate(server.dsn))
            env = clean_env(
                DATABASE_URL=server.dsn,
                LOCAL_DATA_DIR=str(Path(scratch) / "local"),
                POWERTOOLS_METRICS_DISABLED="true",
                PYTHONDONTWRITEBYTECODE="1",
                CRON_SECRET=CRON_SECRET,
            )
            token = issue_token(server.dsn, Path(scratch) / "local")
            ceiling = [PYTHON, "-m", "bench.first_request", "bench.hello_lambda", "GET", "/hello"]
            cases = {"ceiling": ceiling} | {
                group: [PYTHON, "-m", "bench.first_request", f"functions.{group}.aws", *request]
                for group, request in NO_IO_REQUESTS.items()
            }
            no_io = measure(cases, env, runs)
            store_cases = {"ceiling": ceiling} | {
                group: [
                    PYTHON,
                    "-m",
                    "bench.first_request",
                    f"functions.{group}.aws",
                    *request,
                    CRON_SECRET if group == "jobs" else token,
                ]
                for group, request in STORE_REQUESTS.items()
            }
            store = measure(store_cases, env, runs)
        finally:
            server.stop()

    base = no_io["ceiling"][0]
    print(f"ceiling: FastAPI + Mangum hello world, first event {base * 1000:6.0f} ms")
    bytecode = "without our bytecode" if options.source else "with our bytecode"
    print(f"(medians of {runs} runs, interleaved; {bytecode})")
    print(f"{'function':<10} {'no I/O':>9} {'x ceiling':>10} {'status':>7}", end=" ")
    print(f"{'store':>9} {'x ceiling':>10} {'status':>7}")
    store_base = store["ceiling"][0]
    for group in NO_IO_REQUESTS:
        a, a_status = no_io[group]
        b, b_status = store[group]
        print(
            f"{group:<10} {a * 1000:6.0f} ms {a / base:9.2f}x {a_status:>7} "
            f"{b * 1000:6.0f} ms {b / store_base:9.2f}x {b_status:>7}"
        )


async def _migrate(dsn: str) -> None:
    from shared.db.database import Database
    from shared.db.migrations import MIGRATIONS_DIR, MigrationRunner, load_migrations

    database = Database(dsn)
    await MigrationRunner(database).migrate(load_migrations(MIGRATIONS_DIR))
    await database.close()


if __name__ == "__main__":
    main()
