"""GET /api/admin/jobs[/{id}]: progress of bulk jobs, for the dashboard and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from shared.access.rules import AdminCaller
from shared.errors import NotFound
from shared.jobs.queue import job_status
from shared.jobs.repository import WorkQueueRepository
from shared.jobs.schemas import JobStatusInfo, JobStatusList
from shared.web.deps import RuntimeDep

router = APIRouter(prefix="/api/admin/jobs", tags=["jobs (admin)"])


@router.get("", response_model=JobStatusList)
async def list_jobs(
    _: AdminCaller,
    runtime: RuntimeDep,
    kind: Annotated[str | None, Query(pattern=r"^[a-z_]{1,40}$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobStatusList:
    """The newest bulk jobs first, each with its progress."""
    async with runtime.database().connection() as conn:
        jobs = await WorkQueueRepository(conn).recent(kind=kind, limit=limit)
    now = datetime.now(UTC)
    return JobStatusList(data=[JobStatusInfo.of(job_status(job, now=now)) for job in jobs])


@router.get("/{job_id}", response_model=JobStatusInfo)
async def get_job(job_id: UUID, _: AdminCaller, runtime: RuntimeDep) -> JobStatusInfo:
    """One bulk job: done, remaining, failed, rate and ETA."""
    async with runtime.database().connection() as conn:
        progress = await WorkQueueRepository(conn).progress(job_id)
    if progress is None:
        raise NotFound("no bulk job has this id", code="job_not_found")
    return JobStatusInfo.of(job_status(progress, now=datetime.now(UTC)))
