"""`openrouter-agent jobs list / show`: progress of bulk jobs (the work queue)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

from shared.cli.support import DsnOption, JsonOption, emit_json, run
from shared.errors import NotFound
from shared.jobs.queue import job_status
from shared.jobs.repository import JobProgress, WorkQueueRepository
from shared.jobs.schemas import JobStatusInfo, JobStatusList
from shared.runtime import Runtime

app = typer.Typer(no_args_is_help=True, help="Bulk jobs: scheduled rotations, monthly restores.")


@app.command("list")
def list_jobs(
    kind: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """The newest bulk jobs with their progress."""

    async def recent(runtime: Runtime) -> list[JobProgress]:
        async with runtime.database().connection() as conn:
            return await WorkQueueRepository(conn).recent(kind=kind, limit=limit)

    now = datetime.now(UTC)
    jobs = JobStatusList(data=[JobStatusInfo.of(job_status(p, now=now)) for p in run(dsn, recent)])
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

    async def progress(runtime: Runtime) -> JobProgress:
        async with runtime.database().connection() as conn:
            found = await WorkQueueRepository(conn).progress(job_id)
        if found is None:
            raise NotFound("no bulk job has this id", code="job_not_found")
        return found

    job = JobStatusInfo.of(job_status(run(dsn, progress), now=datetime.now(UTC)))
    if as_json:
        emit_json(job)
        return
    typer.echo(
        f"{job.kind} {job.name} ({job.status}): {job.done:,} done, {job.remaining:,} left,"
        f" {job.failed:,} failed, {job.retrying:,} retrying; rate {job.rate_per_s or '-'}/s;"
        f" eta {job.eta or '-'}"
    )
