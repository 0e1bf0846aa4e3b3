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
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from shared.config import Settings, get_settings
from shared.db.database import Database
from shared.db.embedded import EmbeddedPostgres, start_embedded_postgres
from shared.errors import AppError
from shared.observability import configure_logging, logger
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
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


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


async def _with_runtime(
    dsn: str | None, action: Callable[[Runtime], Awaitable[T]], *, calls_openrouter: bool
) -> T:
    settings = get_settings()
    if calls_openrouter and settings.uses_openrouter_emulator:
        logger.warning(
            "no OPENROUTER_MANAGEMENT_KEY: OpenRouter calls go to a throwaway in-process "
            "emulator; to share one with `serve`, run `openrouter-agent emulator` and set "
            "OPENROUTER_BASE_URL and OPENROUTER_MANAGEMENT_KEY"
        )
    target, embedded = resolve_database(settings, dsn)
    database = Database(target, pool_limits(settings))
    runtime = build_runtime(settings, database)
    try:
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


def run(
    dsn: str | None,
    action: Callable[[Runtime], Awaitable[T]],
    *,
    calls_openrouter: bool = False,
) -> T:
    """Run one command's work; an AppError becomes its message on stderr and its exit code."""
    configure_logging("WARNING")
    log_to_stderr()
    try:
        return asyncio.run(_with_runtime(dsn, action, calls_openrouter=calls_openrouter))
    except AppError as error:
        typer.echo(f"error: {error.code}: {error.message}", err=True)
        raise typer.Exit(exit_code_for(error)) from error


def emit_json(value: BaseModel | list[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        payload: Any = value.model_dump(mode="json")
    elif isinstance(value, list):
        payload = [item.model_dump(mode="json") for item in value]
    else:
        payload = value
    typer.echo(json.dumps(payload, indent=2))
