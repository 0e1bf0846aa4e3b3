"""What every operator command shares: the runtime it works through, its exit codes, --json.

Commands call the same services as the functions (no second implementation of any rule), on
the local embedded database by default, or on `--dsn` / DATABASE_URL.

Exit codes a script can rely on:

    0  done
    1  a check found a problem (e.g. a broken audit chain)
    2  the request was refused as invalid (bad option, validation, a refused credential)
    3  not found
    4  conflict (an operation in progress, a key that already exists)
    5  a dependency is unavailable (the database, OpenRouter)
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel

from shared.config import Settings, get_settings
from shared.db.database import Database
from shared.db.embedded import EmbeddedPostgres, start_embedded_postgres
from shared.db.migrations import MIGRATIONS_DIR, MigrationRunner, load_migrations
from shared.errors import AppError
from shared.observability import configure_logging, logger
from shared.redaction import redact
from shared.runtime import Runtime, pool_limits

T = TypeVar("T")

EXIT_PROBLEM = 1
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5

DsnOption = Annotated[
    str | None, typer.Option("--dsn", help="Postgres DSN; default DATABASE_URL, else embedded.")
]

# Whether this command was asked for --json: then its one document on stdout is its result,
# or, if it fails, its error ({"error": {"code", "message", "exit_code"}}).
_json_output = False


def begin_command() -> None:
    """Before each command (in one process, a test runs many)."""
    global _json_output
    _json_output = False


def _remember_json(value: bool) -> bool:
    global _json_output
    _json_output = _json_output or value
    return value


JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Machine-readable output (errors too).", callback=_remember_json),
]


def operator() -> str:
    """Who acted from the command line, for the audit trail."""
    return f"cli:{getpass.getuser()}"


def resolve_database(settings: Settings, dsn: str | None) -> tuple[str, EmbeddedPostgres | None]:
    """The DSN to use, and the embedded server started for it, if one was."""
    if dsn:
        return dsn, None
    if settings.database_url is not None:
        return settings.database_url.get_secret_value(), None
    if settings.supabase_url is not None:
        raise typer.BadParameter(
            "operator commands need a direct connection: pass --dsn or set DATABASE_URL to "
            "the Supabase project's connection string"
        )
    data_dir = settings.local_data_dir / "pgdata"
    server = start_embedded_postgres(data_dir)
    logger.info("embedded PostgreSQL started (no DATABASE_URL)", extra={"data_dir": str(data_dir)})
    return server.dsn, server


async def _with_runtime(dsn: str | None, action: Callable[[Runtime], Awaitable[T]]) -> T:
    # Without a management key, every command works on the local server's own emulator (its
    # state lives in LOCAL_DATA_DIR), whether the server runs or not.
    settings = get_settings()
    target, embedded = resolve_database(settings, dsn)
    database = Database(target, pool_limits(settings))
    runtime = build_runtime(settings, database)
    try:
        if embedded is not None and settings.should_auto_migrate:
            # A fresh data folder, before `serve` ever ran: prepare it as `serve` does.
            await MigrationRunner(database).migrate(load_migrations(MIGRATIONS_DIR))
        return await action(runtime)
    finally:
        await database.close()
        if embedded is not None:
            embedded.stop()


def build_runtime(settings: Settings, database: Database) -> Runtime:
    """The runtime commands work through (tests point it at their database and emulator)."""
    return Runtime(settings, database=database)


def exit_code_for(error: AppError) -> int:
    if error.status_code == 404:
        return EXIT_NOT_FOUND
    if error.status_code == 409:
        return EXIT_CONFLICT
    if error.status_code >= 500:
        return EXIT_UNAVAILABLE
    return EXIT_INVALID


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written (a test runner swaps it per command)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def log_to_stderr() -> None:
    """Commands print their results on stdout (a token, JSON): the logs must not mix in."""
    logger.registered_handler.setStream(_CurrentStderr())  # type: ignore[attr-defined]


def run(dsn: str | None, action: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run one command's work; an AppError becomes its message on stderr and its exit code."""
    configure_logging("WARNING")
    log_to_stderr()
    # CloudWatch EMF lines are for Lambda's log; here they would only garble stdout.
    metrics_were = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    os.environ["POWERTOOLS_METRICS_DISABLED"] = metrics_were or "true"
    try:
        return asyncio.run(_with_runtime(dsn, action))
    except AppError as error:
        fail(error.code, error.message, exit_code_for(error))
    except Exception as error:  # never a traceback for the operator: one line, an exit code
        fail(*_described(error))
    finally:
        if metrics_were is None:
            os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)


def _described(error: Exception) -> tuple[str, str, int]:
    from shared.openrouter.errors import OpenRouterError

    if isinstance(error, OpenRouterError):
        return "openrouter_unavailable", f"OpenRouter failed: {error}", EXIT_UNAVAILABLE
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(error, psycopg.OperationalError):
        return "database_unavailable", "the database could not be reached", EXIT_UNAVAILABLE
    return "internal_error", f"{type(error).__name__}: {error}", EXIT_PROBLEM


def fail(code: str, message: str, exit_code: int) -> NoReturn:
    """End the command with one line on stderr (or, under --json, one document on stdout)."""
    message = redact(message)
    if _json_output:
        typer.echo(
            json.dumps({"error": {"code": code, "message": message, "exit_code": exit_code}})
        )
    else:
        typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)


def emit_json(value: BaseModel | list[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        payload: Any = value.model_dump(mode="json")
    elif isinstance(value, list):
        payload = [item.model_dump(mode="json") for item in value]
    else:
        payload = value
    typer.echo(json.dumps(payload, indent=2))
