"""The embedded PostgreSQL is shared by every process on the same LOCAL_DATA_DIR: the local
server, the commands run beside it, several commands at once, and whatever comes after a
process killed with SIGKILL. The first user starts it (or adopts the one left running), the
last live user stops it, and no one else does. Real processes, a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

CLI = [sys.executable, "-m", "shared.cli"]

# A process that holds the embedded database as every command does (resolve_database), and
# answers one line ("= ...", among its log lines) per command read on stdin: `start`, `query`,
# `stop`, anything else to exit.
HOLDER = """
import sys

import psycopg

from shared.cli.support import resolve_database
from shared.config import get_settings

embedded = None
for line in sys.stdin:
    command = line.strip()
    try:
        if command == "start":
            dsn, embedded = resolve_database(get_settings(), None)
            answer = "started"
        elif command == "query":
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                answer = "query " + str(conn.execute("select 41 + 1").fetchone()[0])
        elif command == "stop":
            answer = "stop " + str(embedded.stop())
        else:
            break
    except Exception as error:
        answer = f"error {type(error).__name__}: {error}".replace("\\n", " ")
    print("= " + answer, flush=True)
"""


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "OPENROUTER_"))}
    env.update(
        APP_ENV="development",
        LOCAL_DATA_DIR=str(data_dir),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


class Holder:
    """One process using the embedded database, driven line by line."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER],
            env=_env(data_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("= "):
                return line[2:].strip()
        return f"exited {self.process.wait(timeout=30)}"

    def ask(self, command: str) -> str:
        self.send(command)
        return self.answer()

    def stop(self) -> None:
        answer = self.ask("stop")
        assert answer.startswith("stop "), answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _postmaster(pgdata: Path) -> psutil.Process | None:
    """The postmaster serving pgdata, if one is running (a zombie is not running)."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (FileNotFoundError, IndexError, ValueError, psutil.NoSuchProcess):
        return None
    return process


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "local"
    yield data_dir
    # Whatever a failing test left running must not outlive it.
    if (postmaster := _postmaster(data_dir / "pgdata")) is not None:
        postmaster.send_signal(signal.SIGINT)  # fast shutdown
        postmaster.wait(timeout=30)


@pytest.fixture
def holders(data_dir: Path) -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.close()


@pytest.mark.parametrize("first", ["holder", "visitor"])
def test_a_process_that_starts_and_stops_beside_a_holder_leaves_it_working(
    data_dir: Path, holders: list[Holder], first: str
) -> None:
    # GIVEN one process holding the embedded database (whichever of the two started it)
    holder, visitor = Holder(data_dir), Holder(data_dir)
    holders += [holder, visitor]
    order = [holder, visitor] if first == "holder" else [visitor, holder]
    assert [process.ask("start") for process in order] == ["started", "started"]
    assert holder.ask("query") == "query 42"

    # WHEN a second process stops it
    visitor.stop()

    # THEN the first can still query, and the server stops only with its last user
    assert holder.ask("query") == "query 42"
    assert _postmaster(data_dir / "pgdata") is not None
    holder.stop()
    assert _postmaster(data_dir / "pgdata") is None


def test_several_processes_starting_on_a_fresh_data_folder_all_succeed(
    data_dir: Path, holders: list[Holder]
) -> None:
    # GIVEN a fresh data folder and four processes, imported and waiting
    holders += [Holder(data_dir) for _ in range(4)]

    # WHEN they all start the embedded database at once
    for holder in holders:
        holder.send("start")
    started = [holder.answer() for holder in holders]

    # THEN all succeed and can query
    assert started == ["started"] * 4
    assert [holder.ask("query") for holder in holders] == ["query 42"] * 4
    # and exactly the last to stop stops the server
    for holder in holders[:-1]:
        holder.stop()
        assert _postmaster(data_dir / "pgdata") is not None
        assert holders[-1].ask("query") == "query 42"
    holders[-1].stop()
    assert _postmaster(data_dir / "pgdata") is None


def test_after_a_holder_is_killed_the_next_process_adopts_and_really_stops_the_server(
    data_dir: Path, holders: list[Holder]
) -> None:
    # GIVEN a holder killed with SIGKILL, its PostgreSQL left running
    killed = Holder(data_dir)
    holders.append(killed)
    assert killed.ask("start") == "started"
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(timeout=30)
    orphan = _postmaster(data_dir / "pgdata")
    assert orphan is not None

    # WHEN a new process starts
    successor = Holder(data_dir)
    holders.append(successor)
    assert successor.ask("start") == "started"

    # THEN it works, and as the last to stop, it really stops PostgreSQL
    assert successor.ask("query") == "query 42"
    successor.stop()
    assert _postmaster(data_dir / "pgdata") is None
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE


def test_commands_run_in_parallel_on_a_fresh_data_folder_all_succeed(data_dir: Path) -> None:
    # GIVEN a fresh data folder, WHEN four commands that need the database run at once
    commands = [
        subprocess.Popen(
            [*CLI, "tiers", "list", "--json"],
            env=_env(data_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(command, *command.communicate(timeout=120)) for command in commands]

    # THEN every one answers, and none leaves PostgreSQL running behind it
    for command, stdout, stderr in results:
        assert command.returncode == 0, stdout + stderr
        assert json.loads(stdout)["data"], stdout
    assert _postmaster(data_dir / "pgdata") is None
