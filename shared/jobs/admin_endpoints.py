"""GET /api/admin/jobs[/{id}]: progress of bulk jobs, for the dashboard and the CLI."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from shared.access.rules import AdminCaller
from shared.jobs import queue
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
    jobs = await queue.recent_jobs(runtime, kind=kind, limit=limit)
    return JobStatusList(data=[JobStatusInfo.of(job) for job in jobs])


@router.get("/{job_id}", response_model=JobStatusInfo)
async def get_job(job_id: UUID, _: AdminCaller, runtime: RuntimeDep) -> JobStatusInfo:
    """One bulk job: done, remaining, failed, rate and ETA."""
    return JobStatusInfo.of(await queue.one_job(runtime, job_id))
