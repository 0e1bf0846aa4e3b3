"""The README's local sequence, end to end, with real processes: `scripts/run` in the
background on a fresh data folder, the command line beside it, a restart, a rotation with a
short grace waited out without calling any cron route, a delete, and reconcile. What a new
user meets in their first minutes must hold: no $0 key, no 409 after the grace, disable and
enable after a restart, reconcile with nothing to fix, one JSON document per --json."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from shared.config import REPOSITORY_ROOT
from shared.openrouter.emulator import Emulator

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

CLI = [sys.executable, "-m", "shared.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalInstall:
    """A fresh data folder, the server on it (started and stopped as scripts/run does), and
    the command line beside it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DATABASE_", "OPENROUTER_"))
            },
            "APP_ENV": "development",
            "LOCAL_DATA_DIR": str(data_dir),
            "LOCAL_JOBS_POLL_S": "0.5",
            "LOG_LEVEL": "INFO",
        }
        self.server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.data_dir / "server.log").open("ab")
        self.server = subprocess.Popen(
            [str(REPOSITORY_ROOT / "scripts" / "run"), "--port", str(self.port)],
            cwd=REPOSITORY_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.server.poll() is None, (self.data_dir / "server.log").read_text()[-2000:]
            time.sleep(0.1)
        raise AssertionError("the local server did not become ready")

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=60)
        self.server = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            cwd=REPOSITORY_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def cli_json(self, *args: str) -> object:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # exactly one document, nothing else on stdout


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalInstall]:
    install = LocalInstall(tmp_path / "local")
    install.data_dir.mkdir()
    yield install
    install.stop()


def _wait_for(condition: object, *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_the_readme_local_sequence_holds_with_real_processes(local: LocalInstall) -> None:
    # GIVEN the server on a fresh data folder, and an admin token issued beside it
    local.start()
    issued = local.cli("tokens", "issue", "--name", "me", "--scope", "admin")
    assert issued.returncode == 0, issued.stderr
    admin = {"Authorization": f"Bearer {issued.stdout.strip().splitlines()[-1]}"}
    api = httpx.Client(base_url=local.url, headers=admin, timeout=30)

    # WHEN a user's key is made and spends $4 at the (local) OpenRouter
    created = api.post("/api/keys/create", json={"user_id": "alice"})
    assert created.status_code == 201, created.text
    first = created.json()
    assert Decimal(first["key"]["limit_usd"]) == 10
    beside = Emulator(state_dir=local.data_dir)  # the same emulator, from another process
    beside.charge(first["secret"], Decimal(4))

    # AND the server restarts
    local.stop()
    local.start()

    # THEN the key still exists at OpenRouter: disable and enable work, nothing vanished
    key_id = first["key"]["id"]
    assert api.post(f"/api/keys/{key_id}/disable").status_code == 200
    assert api.post(f"/api/keys/{key_id}/enable").status_code == 200

    # WHEN it is rotated with a two-second grace, from the command line beside the server
    rotated = local.cli_json("keys", "rotate", "--user", "alice", "--grace-seconds", "2")
    assert isinstance(rotated, dict)
    assert Decimal(rotated["key"]["limit_usd"]) > 0  # never a $0 key

    # THEN the grace ends by itself (no cron route called), and the new key has what is left.
    # The old key reads "revoked" a moment before the new one gets its share back (settled,
    # then rebalanced, under one lease): what the test waits for is the end of both.
    def old_key_settled_and_new_key_whole() -> bool:
        history = api.get("/api/keys/user/alice/history").json()["data"]
        revoked = next(k for k in history if k["id"] == key_id)["state"] == "revoked"
        current = api.get("/api/keys/user/alice").json()
        return revoked and Decimal(current["key"]["limit_usd"]) == 6  # $10 less the $4 spent

    _wait_for(old_key_settled_and_new_key_whole, seconds=20, what="the old key's grace ended")
    # and deleting the new key is no 409: nothing is in progress any more
    deleted = api.delete(f"/api/keys/{rotated['key']['id']}")
    assert deleted.status_code == 200, deleted.text

    # AND reconcile finds nothing to fix
    report = local.cli_json("reconcile")
    assert report == {
        "deleted_at_openrouter": [],
        "revoked_missing": [],
        "reprovisioned": [],
        "too_young_to_judge": 0,
        "skipped": [],
        "failed": [],
    }


def test_a_command_on_a_fresh_data_folder_prepares_it_and_never_prints_a_traceback(
    local: LocalInstall,
) -> None:
    # no server has ever run here
    created = local.cli("keys", "create", "--user", "first")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("sk-or-v1-")
    refused = local.cli("keys", "create", "--user", "first")
    assert refused.returncode == 4
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0  # one line
    as_json = local.cli("keys", "show", "--user", "nobody", "--json")
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["error"]["code"] == "no_current_key"


def test_every_json_answer_is_one_document_on_stdout_errors_and_usage_errors_too(
    local: LocalInstall,
) -> None:
    # a job run now, an error from the service, a usage error before any command ran
    ran = local.cli("jobs", "run", "advance-key-operations", "--json")
    missing = local.cli("keys", "show", "--user", "nobody", "--json")
    unknown_job = local.cli("jobs", "run", "no-such-job", "--json")
    bad_value = local.cli("tokens", "list", "--json", "--no-such-option")
    for done, exit_code in ((ran, 0), (missing, 3), (unknown_job, 2), (bad_value, 2)):
        assert done.returncode == exit_code, (done.args, done.stdout, done.stderr)
        document = json.loads(done.stdout)  # one document and nothing else, or this raises
        assert "Traceback" not in done.stderr
        if exit_code:
            assert document["error"]["exit_code"] == exit_code, document
    assert json.loads(ran.stdout)["job"] == "advance-key-operations"
    assert json.loads(unknown_job.stdout)["error"]["code"] == "invalid_argument"
