"""scripts/run's stack for the clients' tests: `openrouter-agent serve` as its own process on a
free port, in a fresh data folder (its own embedded PostgreSQL and emulator, mounted at
/openrouter), with a service token issued by the CLI beside it as an operator would.

`python -m tests.clients.local_stack` starts it, prints one JSON line (agent_url,
openrouter_url, admin_token, service_token, data_dir) and keeps it up until its stdin closes:
the TypeScript tests start it so. Python tests use `running_stack()`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from tests.serving import free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "openrouter-agent"
SERVICE_SCOPES = ["keys:read", "keys:reveal", "usage:read", "usage:write", "users:write"]
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Stack:
    agent_url: str
    openrouter_url: str  # the emulator as the services call it: OpenRouter's base URL
    admin_token: str  # BOOTSTRAP_ADMIN_TOKEN: keys, rotations, emergencies
    service_token: str  # what a platform's agent holds: SERVICE_SCOPES
    data_dir: str


def _environment(
    data_dir: Path, port: int, admin_token: str, overrides: Mapping[str, str]
) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        # the stack is the embedded defaults, whatever the caller's shell points at
        if not name.startswith(("OPENROUTER_", "DATABASE_", "SUPABASE_", "ENCRYPTION_"))
    }
    environment.update(
        LOCAL_DATA_DIR=str(data_dir),
        PORT=str(port),
        BOOTSTRAP_ADMIN_TOKEN=admin_token,
        LOG_LEVEL="WARNING",
        # the jobs run in process, as on scripts/run: the emergency's work, grace endings
        LOCAL_JOBS_POLL_S="0.5",
        # every test makes its users' keys with the one admin token; reveals keep their default
        RATE_LIMIT_KEY_WRITES_PER_MINUTE="10000",
        PYTHONUNBUFFERED="1",
    )
    environment.update(overrides)
    return environment


def _wait_ready(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"openrouter-agent serve exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("openrouter-agent serve did not become ready")


def _issue_service_token(environment: dict[str, str]) -> str:
    scopes = [argument for scope in SERVICE_SCOPES for argument in ("--scope", scope)]
    done = subprocess.run(
        [str(CLI), "tokens", "issue", "--name", "formul8-agents", *scopes, "--json"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tokens issue failed ({done.returncode}): {done.stdout[-400:]}")
    return str(json.loads(done.stdout)["token"])


@contextmanager
def running_stack(**overrides: str) -> Iterator[Stack]:
    """The local server in its own process while the block runs; stopped and removed after.
    `overrides`: settings for the server (the benchmarks' higher rate limits)."""
    data_dir = Path(tempfile.mkdtemp(prefix="ora-stack-"))
    port = free_port()
    admin_token = "ora-admin-" + secrets.token_urlsafe(24)
    environment = _environment(data_dir, port, admin_token, overrides)
    url = f"http://127.0.0.1:{port}"
    log = (data_dir / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(CLI), "serve"], env=environment, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_ready(process, url)
        yield Stack(
            agent_url=url,
            openrouter_url=url + "/openrouter/api/v1",
            admin_token=admin_token,
            service_token=_issue_service_token(environment),
            data_dir=str(data_dir),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    with running_stack() as stack:
        sys.stdout.write(json.dumps(asdict(stack)) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the parent closes it (or dies)


if __name__ == "__main__":
    main()
