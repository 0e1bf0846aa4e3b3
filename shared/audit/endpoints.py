"""Admin routes of the audit trail: recent events and chain verification."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from shared.access.rules import AdminCaller
from shared.audit import service
from shared.web.deps import RuntimeDep

router = APIRouter(prefix="/api/admin/audit", tags=["audit"])


class AuditEventInfo(BaseModel):
    seq: int
    occurred_at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    reason: str | None
    request_id: str | None
    fingerprint: str | None
    details: dict[str, Any]
    actor_name: str | None = Field(description="The service token's name, when the actor is one.")


class AuditPage(BaseModel):
    data: list[AuditEventInfo]
    next_before_seq: int | None


class ChainReport(BaseModel):
    intact: bool
    rows_checked: int
    broken_seq: int | None
    problem: str | None


@router.get("", response_model=AuditPage)
async def recent_audit_events(
    _: AdminCaller,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before_seq: Annotated[int | None, Query(ge=1)] = None,
) -> AuditPage:
    """Audit events, newest first; page with before_seq."""
    events = await service.recent_events(runtime, limit=limit, before_seq=before_seq)
    return AuditPage(
        data=[AuditEventInfo(**asdict(e)) for e in events],
        next_before_seq=events[-1].seq if len(events) == limit else None,
    )


@router.get("/verify", response_model=ChainReport)
async def verify_audit_chain(_: AdminCaller, runtime: RuntimeDep) -> ChainReport:
    """Recompute the hash chain; report the first row that was edited or follows a deleted one."""
    result = await service.verify_chain(runtime)
    return ChainReport(
        intact=result.broken_seq is None,
        rows_checked=result.rows_checked,
        broken_seq=result.broken_seq,
        problem=result.problem,
    )
