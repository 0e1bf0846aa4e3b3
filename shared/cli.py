"""The `openrouter-agent` command: serve, migrate, emulator, tokens."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar
from uuid import UUID

import typer

from shared.access.principals import Scope
from shared.config import Settings, get_settings
from shared.db.database import Database
from shared.db.embedded import EmbeddedPostgres, start_embedded_postgres
from shared.db.migrations import (
    MIGRATIONS_DIR,
    SUPABASE_SCHEMA_FILE,
    MigrationError,
    MigrationRunner,
    load_migrations,
    render_supabase_schema,
)
from shared.errors import AppError
from shared.observability import configure_logging, logger
from shared.redaction import redact
from shared.runtime import Runtime, pool_limits

if TYPE_CHECKING:
    from shared.access.service import AccessService

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# scripts/run exports this so "ready in" covers the whole command, bootstrap included.
LAUNCHED_AT_ENV = "OPENROUTER_AGENT_LAUNCHED_AT"


def _launched_at() -> float:
    try:
        return float(os.environ[LAUNCHED_AT_ENV])
    except (KeyError, ValueError):
        import psutil

        return float(psutil.Process().create_time())


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # uvicorn re-raises the signal it caught after a graceful shutdown; with the default SIGTERM
    # action the process would die before our cleanup runs.
    raise SystemExit(128 + signum)


def _resolve_database(settings: Settings, dsn: str | None) -> tuple[str, EmbeddedPostgres | None]:
    """The DSN to use, and the embedded server started for it, if one was."""
    if dsn:
        return dsn, None
    if settings.database_url is not None:
        return settings.database_url.get_secret_value(), None
    if settings.supabase_url is not None:
        raise typer.BadParameter(
            "the Supabase transport is not available yet; pass --dsn or set DATABASE_URL"
        )
    data_dir = settings.local_data_dir / "pgdata"
    server = start_embedded_postgres(data_dir)
    logger.info("embedded PostgreSQL started (no DATABASE_URL)", extra={"data_dir": str(data_dir)})
    return server.dsn, server


async def _migrate(database: Database) -> list[str]:
    try:
        applied = await MigrationRunner(database).migrate(load_migrations(MIGRATIONS_DIR))
    finally:
        await database.close()
    return [m.file_name for m in applied]


@app.command()
def migrate(
    dsn: Annotated[
        str | None, typer.Option(help="Postgres DSN; default DATABASE_URL, else embedded.")
    ] = None,
    bundle: Annotated[
        bool, typer.Option(help="Write the single-file Supabase schema instead of migrating.")
    ] = False,
    output: Annotated[Path, typer.Option(help="Where --bundle writes.")] = SUPABASE_SCHEMA_FILE,
) -> None:
    """Apply pending migrations (idempotent), or regenerate the Supabase schema file."""
    if bundle:
        output.write_text(render_supabase_schema(load_migrations(MIGRATIONS_DIR)))
        typer.echo(f"wrote {output}")
        return
    settings = get_settings()
    configure_logging(settings.log_level)
    target, embedded = _resolve_database(settings, dsn)
    try:
        applied = asyncio.run(_migrate(Database(target, pool_limits(settings))))
    except MigrationError as exc:
        typer.echo(f"migrate: {exc}", err=True)
        raise typer.Exit(1) from exc
    except AppError as exc:
        typer.echo(f"migrate: {exc.message} ({redact(str(exc.details or ''))})", err=True)
        raise typer.Exit(2) from exc
    finally:
        if embedded is not None:
            embedded.stop()
    typer.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default: HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default: PORT (3001).")] = None,
) -> None:
    """Start every endpoint group on one local server, on embedded defaults where unset."""
    import uvicorn

    from shared.web.app_factory import create_app

    launched_at = _launched_at()
    # EMF lines are for CloudWatch; on a local server they would only double every request's
    # log. POWERTOOLS_METRICS_DISABLED=false shows them.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    settings = get_settings()
    configure_logging(settings.log_level)
    dsn, embedded = _resolve_database(settings, None)
    database = Database(dsn, pool_limits(settings))
    if settings.should_auto_migrate:
        applied = asyncio.run(_migrate(database))
        logger.info("migrations applied at start", extra={"applied": applied})
    runtime = Runtime(settings, database=database)
    master_key = runtime.master_key()
    if master_key.source != "environment":
        logger.warning(
            "using a local encryption master key (no ENCRYPTION_MASTER_KEY); fine for "
            "development, never for production",
            extra={
                "path": str(settings.local_data_dir / "master.key"),
                "source": master_key.source,
            },
        )
    if settings.uses_openrouter_emulator:
        logger.info("OpenRouter emulator in process (no OPENROUTER_MANAGEMENT_KEY)")
    else:
        logger.info("OpenRouter at " + settings.openrouter_base_url)

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime=runtime),
            host=host or settings.host,
            port=port or settings.port,
            access_log=False,  # our middleware writes one structured line per request
            log_level=settings.log_level.lower(),
        )
    )

    async def run() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if server.started:
            url = f"http://{host or settings.host}:{port or settings.port}"
            logger.info(
                f"ready: {url} (docs at {url}/docs)",
                extra={"ready_in_s": round(time.time() - launched_at, 2)},
            )
        await serving

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
            logger.info("embedded PostgreSQL stopped")


@app.command()
def emulator(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 3002,
    latency_ms: Annotated[float, typer.Option(help="Added to every request.")] = 0.0,
    key_file: Annotated[
        Path | None, typer.Option(help="Write the emulator's management key to this file.")
    ] = None,
) -> None:
    """Serve the OpenRouter emulator on loopback for other programs to use."""
    import uvicorn

    from shared.openrouter.emulator import Emulator

    emulated = Emulator(latency_s=latency_ms / 1000, connection_faults="stall")
    if key_file is not None:
        key_file.write_text(emulated.management_key + "\n")
        key_file.chmod(0o600)
        typer.echo(f"management key written to {key_file}")
    else:
        typer.echo("management key: pass --key-file to receive it (it is not printed)")
    typer.echo(f"OpenRouter emulator: http://{host}:{port}/api/v1")
    # info level: uvicorn's "Uvicorn running on ..." line tells scripts the port is open.
    uvicorn.run(emulated, host=host, port=port, log_level="info", access_log=False)


tokens_app = typer.Typer(no_args_is_help=True, help="Service tokens: issue, list, revoke.")
app.add_typer(tokens_app, name="tokens")


def _operator() -> str:
    """Who issued or revoked from the command line, for the token's record."""
    import getpass

    return f"cli:{getpass.getuser()}"


async def _with_access_service(
    settings: Settings, dsn: str | None, action: Callable[[AccessService], Awaitable[T]]
) -> T:
    from shared.access.service import AccessService

    target, embedded = _resolve_database(settings, dsn)
    database = Database(target, pool_limits(settings))
    try:
        return await action(AccessService(Runtime(settings, database=database)))
    finally:
        await database.close()
        if embedded is not None:
            embedded.stop()


def _run_access(dsn: str | None, action: Callable[[AccessService], Awaitable[T]]) -> T:
    settings = get_settings()
    configure_logging("WARNING")
    try:
        return asyncio.run(_with_access_service(settings, dsn, action))
    except AppError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc


DsnOption = Annotated[
    str | None, typer.Option("--dsn", help="Postgres DSN; default DATABASE_URL, else embedded.")
]


@tokens_app.command("issue")
def tokens_issue(
    name: Annotated[str, typer.Option(help="What the token is for, e.g. formul8-backend.")],
    scope: Annotated[list[Scope], typer.Option(help="Repeat for several scopes.")],
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = None,
    dsn: DsnOption = None,
) -> None:
    """Issue a service token. It is printed once, on its own line; store it now."""
    from datetime import UTC, datetime, timedelta

    expires_at = (
        None if expires_in_days is None else datetime.now(UTC) + timedelta(days=expires_in_days)
    )
    issued = _run_access(
        dsn,
        lambda service: service.issue_token(
            issued_by=_operator(), name=name, scopes=scope, expires_at=expires_at
        ),
    )
    typer.echo(f"issued {issued.record.id} ({', '.join(issued.record.scopes)})", err=True)
    typer.echo(issued.token)


@tokens_app.command("list")
def tokens_list(
    include_revoked: Annotated[bool, typer.Option()] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    dsn: DsnOption = None,
) -> None:
    """List service tokens (never the tokens themselves)."""
    from shared.access.schemas import ServiceTokenInfo

    records = _run_access(dsn, lambda s: s.list_tokens(include_revoked=include_revoked))
    infos = [ServiceTokenInfo.of(r) for r in records]
    if as_json:
        typer.echo(json.dumps([i.model_dump(mode="json") for i in infos], indent=2))
        return
    for info in infos:
        state = "revoked" if info.revoked_at else "active"
        typer.echo(
            f"{info.id}  {state:<7}  {info.token_hint}  {info.name}  "
            f"[{', '.join(info.scopes)}]  last used {info.last_used_at or 'never'}"
        )


@tokens_app.command("revoke")
def tokens_revoke(token_id: UUID, dsn: DsnOption = None) -> None:
    """Revoke a service token; revoking it again changes nothing."""
    record = _run_access(dsn, lambda s: s.revoke_token(token_id, revoked_by=_operator()))
    typer.echo(f"revoked {record.id} at {record.revoked_at}")


keys_app = typer.Typer(no_args_is_help=True, help="Key maintenance.")
app.add_typer(keys_app, name="keys")


@keys_app.command("rewrap")
def keys_rewrap(dsn: DsnOption = None) -> None:
    """Re-wrap every data key under the current master key (or KMS key).

    Run after setting a new ENCRYPTION_MASTER_KEY (or KMS_KEY_ID) with the old master key in
    ENCRYPTION_PREVIOUS_MASTER_KEYS; afterwards the old key can be dropped.
    """
    from shared.keys.service import KeyLifecycleService

    settings = get_settings()
    configure_logging("WARNING")

    async def rewrap() -> int:
        target, embedded = _resolve_database(settings, dsn)
        database = Database(target, pool_limits(settings))
        try:
            service = KeyLifecycleService(Runtime(settings, database=database))
            return await service.rewrap_all(actor=_operator())
        finally:
            await database.close()
            if embedded is not None:
                embedded.stop()

    try:
        count = asyncio.run(rewrap())
    except AppError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"re-wrapped {count} data keys")


audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(dsn: DsnOption = None) -> None:
    """Recompute the audit hash chain. Exit 0 if intact, 1 at the first broken row."""
    from shared.audit.service import verify_chain

    settings = get_settings()
    configure_logging("WARNING")

    async def verify() -> tuple[int, int | None, str | None]:
        target, embedded = _resolve_database(settings, dsn)
        database = Database(target, pool_limits(settings))
        try:
            result = await verify_chain(Runtime(settings, database=database))
        finally:
            await database.close()
            if embedded is not None:
                embedded.stop()
        return result.rows_checked, result.broken_seq, result.problem

    rows, broken, problem = asyncio.run(verify())
    if broken is None:
        typer.echo(f"audit chain intact: {rows} rows")
        return
    typer.echo(f"audit chain broken at row {broken}: {problem} ({rows} rows)", err=True)
    raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
