"""`openrouter-agent jobs list / show / run`: bulk jobs' progress, and any scheduled job now."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

from shared.cli.support import DsnOption, JsonOption, emit_json, run
from shared.jobs import queue
from shared.jobs.schedule import run_job, scheduled_jobs
from shared.jobs.schemas import JobStatusInfo, JobStatusList

app = typer.Typer(no_args_is_help=True, help="Jobs: bulk jobs' progress; any scheduled job, now.")


@app.command("list")
def list_jobs(
    kind: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """The newest bulk jobs with their progress."""
    found = run(dsn, lambda r: queue.recent_jobs(r, kind=kind, limit=limit))
    jobs = JobStatusList(data=[JobStatusInfo.of(job) for job in found])
    if as_json:
        emit_json(jobs)
        return
    table = Table("job", "kind", "name", "status", "done", "remaining", "failed", "rate/s", "eta")
    for job in jobs.data:
        table.add_row(
            str(job.id),
            job.kind,
            job.name,
            job.status,
            f"{job.done:,}",
            f"{job.remaining:,}",
            f"{job.failed:,}",
            "" if job.rate_per_s is None else str(job.rate_per_s),
            "" if job.eta is None else job.eta.isoformat(timespec="seconds"),
        )
    Console().print(table)


@app.command("show")
def show(job_id: UUID, as_json: JsonOption = False, dsn: DsnOption = None) -> None:
    """One bulk job: done, remaining, failed, retrying, rate and ETA."""
    job = JobStatusInfo.of(run(dsn, lambda r: queue.one_job(r, job_id)))
    if as_json:
        emit_json(job)
        return
    typer.echo(
        f"{job.kind} {job.name} ({job.status}): {job.done:,} done, {job.remaining:,} left,"
        f" {job.failed:,} failed, {job.retrying:,} retrying; rate {job.rate_per_s or '-'}/s;"
        f" eta {job.eta or '-'}"
    )


@app.command("run")
def run_now(
    name: Annotated[str, typer.Argument(help="A scheduled job, e.g. advance-key-operations.")],
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Run one scheduled job now, as its cron would (the local server runs them all itself)."""
    known = scheduled_jobs()
    if name not in known:
        raise typer.BadParameter(f"known jobs: {', '.join(sorted(known))}", param_hint="NAME")
    result = run(dsn, lambda r: run_job(r, name))
    if as_json:
        emit_json({"job": name, "result": result})
        return
    typer.echo(f"{name}: {result}")
