"""Bodies of the bulk job status routes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel, Field

from shared.jobs.queue import JobStatus


class JobStatusInfo(BaseModel):
    id: UUID
    kind: str
    name: str
    status: str = Field(description="running, done or cancelled.")
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    total: int
    done: int
    remaining: int = Field(description="Not yet done nor parked.")
    failed: int = Field(description="Parked after their last attempt, with their error.")
    retrying: int = Field(description="Failed at least once, waiting for their next attempt.")
    in_flight: int = Field(description="Held by a running invocation now.")
    rate_per_s: Decimal | None = Field(description="Items done per second so far.")
    eta: datetime | None = Field(description="When the rest should be done at that rate.")

    @classmethod
    def of(cls, status: JobStatus) -> JobStatusInfo:
        p = status.progress
        return cls(
            id=p.id,
            kind=p.kind,
            name=p.name,
            status=p.status,
            created_by=p.created_by,
            created_at=p.created_at,
            finished_at=p.finished_at,
            total=p.total,
            done=p.done,
            remaining=p.remaining,
            failed=p.parked,
            retrying=p.retrying,
            in_flight=p.in_flight,
            rate_per_s=status.rate_per_s,
            eta=status.eta,
        )


class JobStatusList(BaseModel):
    data: list[JobStatusInfo]
