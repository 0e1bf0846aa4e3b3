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
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.config import Settings, get_settings
from shared.db.database import Database
from shared.db.embedded import EmbeddedPostgres, start_embedded_postgres
from shared.db.migrations import MIGRATIONS_DIR, MigrationRunner, load_migrations
from shared.errors import AppError
from shared.observability import configure_logging, logger
from shared.redaction import redact
from shared.runtime import Runtime, pool_limits

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

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


def not_an_option(ctx: typer.Context, value: Any) -> Any:
    """`--system --json` gives --system the value "--json" (click takes the next word): an
    option's own name is refused as a value, as a missing value is (invalid_argument, 2)."""
    names = {name for p in ctx.command.get_params(ctx) for name in (*p.opts, *p.secondary_opts)}
    for item in value if isinstance(value, list | tuple) else (value,):
        if isinstance(item, str) and item in names:
            raise typer.BadParameter(f"{item} is an option, not a value: the value is missing")
    return value


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
    # Shared with the local server and every other command on this data folder: the caller's
    # stop() stops it only if no other live process still uses it.
    server = start_embedded_postgres(data_dir)
    message = "started" if server.started_here else "in use (already running)"
    logger.info(
        f"embedded PostgreSQL {message} (no DATABASE_URL)", extra={"data_dir": str(data_dir)}
    )
    return server.dsn, server


async def _with_runtime(dsn: str | None, action: Callable[[Runtime], Awaitable[T]]) -> T:
    # Without a management key, every command works on the local server's own emulator (its
    # state lives in LOCAL_DATA_DIR), whether the server runs or not.
    settings = get_settings()
    target, embedded = resolve_database(settings, dsn)
    try:
        database = Database(target, pool_limits(settings))
        runtime = build_runtime(settings, database)
        try:
            if embedded is not None and settings.should_auto_migrate:
                # A fresh data folder, before `serve` ever ran: prepare it as `serve` does
                # (the migration lock makes commands started together apply them once).
                await MigrationRunner(database).migrate(load_migrations(MIGRATIONS_DIR))
            return await action(runtime)
        finally:
            await database.close()
    finally:
        if embedded is not None:
            # Stops the server only if no other live process (`serve`, a command) uses it.
            embedded.stop()


def load_settings() -> Settings:
    """The settings, or the command ends: invalid_settings, exit 2, naming each variable at
    fault and why, never its value (it may be a secret)."""
    try:
        return get_settings()
    except ValidationError as error:
        fail("invalid_settings", _reasons(error, _variable), EXIT_INVALID)
    except ValueError as error:  # a list that is not JSON; names in a Secrets Manager secret
        fail("invalid_settings", str(error), EXIT_INVALID)


def _variable(loc: tuple[int | str, ...]) -> str:
    """A setting's variable (empty for the settings as a whole, whose reasons name theirs)."""
    return "".join(str(part).upper() if n == 0 else f"[{part}]" for n, part in enumerate(loc))


def _reasons(error: ValidationError, name: Callable[[tuple[int | str, ...]], str]) -> str:
    """pydantic's reasons, each with the name of what it refused; never the input itself."""
    reasons = []
    for problem in error.errors(include_url=False, include_input=False, include_context=False):
        reason, where = problem["msg"].removeprefix("Value error, "), name(problem["loc"])
        reasons.append(f"{where}: {reason}" if where else reason)
    return "; ".join(reasons)


def checked(schema: Any, value: Any, option: str) -> Any:
    """A value as the HTTP API's own type of it (shared/*/schemas.py) accepts it, stripped as
    the API strips it; else the command ends, invalid_input, exit 2. None passes (unset)."""
    if value is None:
        return None
    try:
        return TypeAdapter(schema).validate_python(value)
    except ValidationError as error:
        fail("invalid_input", _reasons(error, lambda _: option), EXIT_INVALID)


def checked_body(model: type[M], options: Mapping[str, str], **fields: Any) -> M:
    """A request body of the HTTP API, from a command's values; else invalid_input, exit 2,
    naming the options (`options`: each field's option)."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        reasons = _reasons(error, lambda loc: options.get(str(loc[0]), str(loc[0])) if loc else "")
        fail("invalid_input", reasons, EXIT_INVALID)


def build_runtime(settings: Settings, database: Database) -> Runtime:
    """The runtime commands work through (tests point it at their database and emulator)."""
    return Runtime(settings, database=database)


def count_of(n: int, noun: str) -> str:
    """ "1 key", "2 keys", "1,000 rows": a count with its noun."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


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
    load_settings()  # read once (and cached) here, so that bad settings end in one line
    # CloudWatch EMF lines are for Lambda's log; here they would only garble stdout.
    metrics_were = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    os.environ["POWERTOOLS_METRICS_DISABLED"] = metrics_were or "true"
    try:
        return asyncio.run(_with_runtime(dsn, action))
    except AppError as error:
        fail(error.code, error.message, exit_code_for(error))
    except Exception as error:  # never a traceback for the operator: one line, an exit code
        fail(*describe_failure(error))
    finally:
        if metrics_were is None:
            os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)


def describe_failure(error: Exception) -> tuple[str, str, int]:
    """A failure no command turned into its own line, as (code, message, exit code)."""
    from shared.openrouter.errors import OpenRouterError
    from shared.web.middleware import refused_by_the_database

    if isinstance(error, typer.BadParameter):  # found while working, e.g. no direct connection
        return "invalid_argument", error.format_message(), EXIT_INVALID
    from shared.crypto.master_key import MasterKeyError

    if isinstance(error, MasterKeyError):  # a setting found bad when first used
        return "invalid_settings", f"ENCRYPTION_MASTER_KEY: {error}", EXIT_INVALID
    if isinstance(error, OSError) and error.filename is not None:  # LOCAL_DATA_DIR, say
        return "invalid_settings", f"{error.strerror}: {error.filename}", EXIT_INVALID
    refused = refused_by_the_database(error)
    if refused is not None:  # what the API answers with 422: the backstop behind the checks
        return "invalid_input", f"a value cannot be stored ({refused})", EXIT_INVALID
    if isinstance(error, OpenRouterError):  # answered as the API answers it (502 or 503)
        from shared.keys.domain import openrouter_answer

        answer = openrouter_answer(error)
        return answer.code, answer.message, exit_code_for(answer)
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
