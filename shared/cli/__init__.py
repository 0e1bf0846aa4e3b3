"""The `openrouter-agent` command: the local server, migrations, the emulator, and the
operator's tools (keys, usage, tiers, tokens, jobs, audit). Exit codes: shared/cli/support.py.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from shared.cli.audit import app as audit_app
from shared.cli.jobs import app as jobs_app
from shared.cli.keys import app as keys_app
from shared.cli.keys import reconcile
from shared.cli.support import (
    EXIT_INVALID,
    EXIT_UNAVAILABLE,
    DsnOption,
    begin_command,
    describe_failure,
    fail,
    load_settings,
    log_to_stderr,
    resolve_database,
)
from shared.cli.tokens import app as tokens_app
from shared.cli.usage import app as usage_app
from shared.cli.usage import reset_usage, tiers_app
from shared.config import Settings
from shared.db.database import Database
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

# No rich tracebacks with local variables: they would print settings and credentials.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    pretty_exceptions_enable=False,
)


@app.callback()
def _every_command() -> None:
    begin_command()


app.add_typer(keys_app, name="keys")
app.add_typer(usage_app, name="usage")
app.add_typer(tiers_app, name="tiers")
app.add_typer(tokens_app, name="tokens")
app.add_typer(jobs_app, name="jobs")
app.add_typer(audit_app, name="audit")
app.command("reset-usage")(reset_usage)
app.command("reconcile")(reconcile)

PortOption = Annotated[int | None, typer.Option(min=1, max=65_535, help="Default: PORT (3001).")]

# scripts/run exports this so "ready in" covers the whole command, bootstrap included.
LAUNCHED_AT_ENV = "OPENROUTER_AGENT_LAUNCHED_AT"
# Where `serve` answers as OpenRouter when the emulator stands in for it (base URL + "/api/v1").
EMULATOR_MOUNT = "/openrouter"


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


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts (the embedded database, say).

    A port another program holds, or one that needs privileges, is unavailable (exit 5); an
    address this machine cannot listen on is invalid (2). One line each, never a traceback.
    """
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError):
        fail("invalid_address", f"{host} is not an address to listen on", EXIT_INVALID)
    listening = socket.socket(family, kind, proto)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
    except OSError as error:
        listening.close()
        if error.errno == errno.EADDRINUSE:
            fail("address_in_use", f"{where} is in use by another program", EXIT_UNAVAILABLE)
        if error.errno == errno.EACCES:
            fail("address_unavailable", f"{where} needs privileges", EXIT_UNAVAILABLE)
        fail("invalid_address", f"cannot listen on {where}: {error.strerror}", EXIT_INVALID)
    return listening


async def _migrate(database: Database) -> list[str]:
    try:
        applied = await MigrationRunner(database).migrate(load_migrations(MIGRATIONS_DIR))
    finally:
        await database.close()
    return [m.file_name for m in applied]


@app.command()
def migrate(
    dsn: DsnOption = None,
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
    settings = load_settings()
    configure_logging(settings.log_level)
    log_to_stderr()
    target, embedded = resolve_database(settings, dsn)
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
    port: PortOption = None,
) -> None:
    """Start every endpoint group on one local server, on embedded defaults where unset."""
    launched_at = _launched_at()
    # EMF lines are for CloudWatch; on a local server they would only double every request's
    # log. POWERTOOLS_METRICS_DISABLED=false shows them.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    settings = load_settings()
    configure_logging(settings.log_level)
    host, port = host or settings.host, port or settings.port
    listening = _listening_socket(host, port)
    try:
        _serve(settings, host, port, listening, launched_at)
    finally:
        listening.close()


def _serve(
    settings: Settings, host: str, port: int, listening: socket.socket, launched_at: float
) -> None:
    import uvicorn

    from shared.jobs.schedule import LocalScheduler
    from shared.web.app_factory import create_app

    dsn, embedded = resolve_database(settings, None)
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

    app = create_app(runtime=runtime)
    if settings.uses_openrouter_emulator:
        # The services a developer runs beside the server call "OpenRouter" with their users'
        # keys: here it is the same emulator that holds those keys.
        app.mount(EMULATOR_MOUNT, runtime.emulator())
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            access_log=False,  # our middleware writes one structured line per request
            log_level=settings.log_level.lower(),
        )
    )

    async def run() -> None:
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        scheduler: LocalScheduler | None = None
        jobs: asyncio.Task[None] | None = None
        if server.started:
            url = f"http://{host}:{port}"
            logger.info(
                f"ready: {url} (docs at {url}/docs)",
                extra={"ready_in_s": round(time.time() - launched_at, 2)},
            )
            if settings.uses_openrouter_emulator:
                logger.info(f"OpenRouter emulator for your services: {url}{EMULATOR_MOUNT}/api/v1")
            if settings.local_jobs_enabled:
                # No Vercel or EventBridge here: the jobs run in process, on their schedules.
                scheduler = LocalScheduler(runtime, poll_s=settings.local_jobs_poll_s)
                jobs = asyncio.create_task(scheduler.run())
                logger.info("scheduled jobs run in process (turn off: LOCAL_JOBS_ENABLED=false)")
            else:
                logger.info("scheduled jobs are off here (LOCAL_JOBS_ENABLED=false)")
        try:
            await serving
        finally:
            if jobs is not None and scheduler is not None:
                jobs.cancel()
                await asyncio.gather(jobs, return_exceptions=True)
                await scheduler.stop()

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            # Only the last live user stops it; commands beside the server may still use it.
            if embedded.stop():
                logger.info("embedded PostgreSQL stopped")
            else:
                logger.info("embedded PostgreSQL left running for its other users")


@app.command()
def emulator(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65_535)] = 3002,
    latency_ms: Annotated[float, typer.Option(help="Added to every request.")] = 0.0,
    billing_delay_ms: Annotated[
        float,
        typer.Option(help="How long a charge takes before it is billed (at its completion)."),
    ] = 0.0,
    key_file: Annotated[
        Path | None, typer.Option(help="Write the emulator's management key to this file.")
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Where its keys and usage persist. Default: LOCAL_DATA_DIR/emulator."),
    ] = None,
) -> None:
    """Serve the OpenRouter emulator on loopback for other programs to use."""
    import uvicorn

    from shared.openrouter.emulator import Emulator

    listening = _listening_socket(host, port)
    try:
        emulated = Emulator(
            latency_s=latency_ms / 1000,
            connection_faults="stall",
            billing_delay_s=billing_delay_ms / 1000,
            state_dir=state_dir or load_settings().local_data_dir / "emulator",
        )
        if key_file is not None:
            key_file.write_text(emulated.management_key + "\n")
            key_file.chmod(0o600)
            typer.echo(f"management key written to {key_file}")
        else:
            typer.echo("management key: pass --key-file to receive it (it is not printed)")
        typer.echo(f"OpenRouter emulator: http://{host}:{port}/api/v1")
        # info level: uvicorn's "Application startup complete." says it answers from now on.
        config = uvicorn.Config(emulated, host=host, port=port, log_level="info", access_log=False)
        uvicorn.Server(config).run(sockets=[listening])
    finally:
        listening.close()


def main() -> None:
    try:
        exit_code = app(standalone_mode=False)
    except typer.TyperException as error:
        # click's usage errors, as typer bundles them: a bad or missing argument
        show, message = getattr(error, "show", None), getattr(error, "format_message", None)
        if show is None or message is None:
            raise
        code = int(getattr(error, "exit_code", EXIT_INVALID))
        if "--json" in sys.argv[1:]:
            refused = {"code": "invalid_argument", "message": redact(message()), "exit_code": code}
            sys.stdout.write(json.dumps({"error": refused}) + "\n")
        else:
            show()
        raise SystemExit(code) from None
    except (typer.Abort, KeyboardInterrupt):
        # Interrupted (Ctrl-C): under --json that is said as every other ending is.
        if "--json" in sys.argv[1:]:
            stopped = {"code": "interrupted", "message": "interrupted", "exit_code": 130}
            sys.stdout.write(json.dumps({"error": stopped}) + "\n")
        raise SystemExit(130) from None
    except Exception as error:  # anything the commands did not turn into their own line
        name, text, status = describe_failure(error)
        if "--json" in sys.argv[1:]:
            failed = {"code": name, "message": redact(text), "exit_code": status}
            sys.stdout.write(json.dumps({"error": failed}) + "\n")
        else:
            sys.stderr.write(f"error: {name}: {redact(text)}\n")
        raise SystemExit(status) from None
    raise SystemExit(exit_code if isinstance(exit_code, int) else 0)


if __name__ == "__main__":
    main()
