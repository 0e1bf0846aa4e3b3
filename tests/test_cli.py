"""The `openrouter-agent` command as a new user runs it: a real process, a real port."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.db.migrations import load_migrations

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

CLI = [sys.executable, "-m", "shared.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "OPENROUTER_"))}
    env.update(
        APP_ENV="development",
        LOCAL_DATA_DIR=str(tmp_path / "local"),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    """Read the process's output until a line contains needle; fail at the deadline."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while (remaining := deadline - time.monotonic()) > 0:
        if not selector.select(remaining):
            break
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r} within {timeout_s}s; output:\n{''.join(seen)}")


def _wait_until_serving(process: subprocess.Popen[str], url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the process exited ({process.returncode}):\n{output}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = _free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        env=_clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, f"http://127.0.0.1:{port}", tmp_path / "local"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def test_serve_starts_on_embedded_defaults_and_answers_the_health_checks(
    served: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, url, data_dir = served

    ready = json.loads(_wait_for_line(process, '"ready: ', timeout_s=60))
    database = httpx.get(f"{url}/health/database", timeout=10)
    keys = httpx.get(f"{url}/health/keys", timeout=10)
    docs = httpx.get(f"{url}/docs", timeout=10)

    assert ready["ready_in_s"] > 0
    assert database.status_code == 200
    assert database.json()["migration_version"] == load_migrations()[-1].version
    assert keys.status_code == 200 and keys.json()["provider"] == "emulator"
    assert docs.status_code == 200
    assert (data_dir / "master.key").exists()

    # WHEN the server is stopped, THEN it exits cleanly and stops its embedded PostgreSQL
    process.send_signal(signal.SIGTERM)
    _wait_for_line(process, "embedded PostgreSQL stopped", timeout_s=30)
    process.wait(timeout=30)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


def test_migrate_is_idempotent_on_a_dsn(database_dsn: str, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    first = subprocess.run(
        [*CLI, "migrate", "--dsn", database_dsn],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "schema is up to date"


def test_migrate_bundle_reproduces_the_committed_supabase_schema(tmp_path: Path) -> None:
    from shared.db.migrations import SUPABASE_SCHEMA_FILE

    output = tmp_path / "bundle.sql"
    result = subprocess.run(
        [*CLI, "migrate", "--bundle", "--output", str(output)],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert output.read_text() == SUPABASE_SCHEMA_FILE.read_text()


def test_the_emulator_command_serves_the_api_to_other_programs(tmp_path: Path) -> None:
    import asyncio

    from pydantic import SecretStr

    from shared.openrouter.client import OpenRouterClient

    port, key_file = _free_port(), tmp_path / "emulator.key"
    process = subprocess.Popen(
        [*CLI, "emulator", "--port", str(port), "--key-file", str(key_file)],
        env=_clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Ready when it answers (not when it logs so): under load, start-up can be slow, and a
        # process that died says so at once.
        base_url = f"http://127.0.0.1:{port}/api/v1"
        _wait_until_serving(process, f"http://127.0.0.1:{port}/_emulator/state", timeout_s=120)
        injected = httpx.post(
            f"http://127.0.0.1:{port}/_emulator/faults",
            json={
                "kind": "status",
                "method": "GET",
                "path": "/keys",
                "status": 429,
                "retry_after_s": 0,
            },
        )
        assert injected.status_code == 204

        async def exercise() -> tuple[str, int]:
            client = OpenRouterClient(
                management_key=SecretStr(key_file.read_text().strip()), base_url=base_url
            )
            try:
                created = await client.create_key(name="over-http")
                listed = await client.list_all_keys()  # first page answers 429, then succeeds
                return created.key.hash, len(listed)
            finally:
                await client.aclose()

        key_hash, count = asyncio.run(exercise())
        assert count == 1
        assert len(key_hash) == 64
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_a_cli_command_leaves_a_running_servers_database_alone(
    served: tuple[subprocess.Popen[str], str, Path],
) -> None:
    # GIVEN the local server is up on its embedded database
    process, url, data_dir = served
    _wait_for_line(process, '"ready: ', timeout_s=60)
    env = {**_clean_env(data_dir.parent), "LOCAL_DATA_DIR": str(data_dir)}

    # WHEN an operator issues a token against the same embedded database
    issued = subprocess.run(
        [*CLI, "tokens", "issue", "--name", "ops", "--scope", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    # THEN the token works on the running server, whose database is still up
    assert issued.returncode == 0, issued.stderr
    whoami = httpx.get(
        f"{url}/api/auth/whoami",
        headers={"Authorization": f"Bearer {issued.stdout.strip()}"},
        timeout=10,
    )
    assert whoami.status_code == 200
    assert whoami.json()["is_admin"] is True
    assert httpx.get(f"{url}/health/database", timeout=10).status_code == 200
