"""The emergency function: start an emergency rotation, and follow it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Self
from uuid import UUID

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.access.rules import AdminCaller
from shared.emergency.service import EmergencyRotationService, EmergencyScope, EmergencyStatus
from shared.keys.schemas import KeyInfo, TierName, UserId
from shared.observability import current_request_id
from shared.web.deps import RuntimeDep
from shared.web.openapi import answers

router = APIRouter(prefix="/api/admin/emergency-rotate", tags=["emergency"])

EmergencyReason = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500)
]


class EmergencyRotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: EmergencyReason
    user_ids: Annotated[list[UserId], Field(max_length=10_000)] = []
    tiers: list[TierName] = []
    key_ids: Annotated[list[UUID], Field(max_length=10_000)] = []
    all: bool = Field(default=False, description="Every current key. Excludes the other scopes.")
    dry_run: bool = Field(default=False, description="List the keys in scope; change nothing.")

    @model_validator(mode="after")
    def _one_clear_scope(self) -> Self:
        narrowed = bool(self.user_ids or self.tiers or self.key_ids)
        if self.all == narrowed:
            raise ValueError("give all=true, or at least one of user_ids, tiers, key_ids")
        return self

    @property
    def scope(self) -> EmergencyScope:
        return EmergencyScope(
            everything=self.all,
            user_ids=tuple(self.user_ids),
            tiers=tuple(self.tiers),
            key_ids=tuple(self.key_ids),
        )


class EmergencyItemInfo(BaseModel):
    key_id: UUID
    owner: str
    status: str
    revoke_ms: Decimal | None = Field(description="Disable at OpenRouter plus read-back, in ms.")
    replacement_key_id: UUID | None
    error: str | None
    attempts: int


class EmergencyRotationInfo(BaseModel):
    id: UUID
    status: str
    reason: str
    requested_by: str
    created_at: datetime
    completed_at: datetime | None
    total: int
    pending: int
    disabled: int
    replaced: int
    failed: int
    items: list[EmergencyItemInfo]

    @classmethod
    def of(cls, status: EmergencyStatus) -> EmergencyRotationInfo:
        rotation = status.rotation
        return cls(
            id=rotation.id,
            status=rotation.status,
            reason=rotation.reason,
            requested_by=rotation.requested_by,
            created_at=rotation.created_at,
            completed_at=rotation.completed_at,
            total=rotation.total,
            pending=status.count("pending"),
            disabled=status.count("disabled"),
            replaced=status.count("replaced"),
            failed=status.count("failed"),
            items=[
                EmergencyItemInfo(
                    key_id=i.key_id,
                    owner=i.owner,
                    status=i.status,
                    revoke_ms=i.revoke_ms,
                    replacement_key_id=i.replacement_key_id,
                    error=i.error,
                    attempts=i.attempts,
                )
                for i in status.items
            ],
        )


class EmergencyDryRun(BaseModel):
    dry_run: bool = True
    total: int
    keys: list[KeyInfo]


@router.post(
    "",
    response_model=EmergencyRotationInfo | EmergencyDryRun,
    status_code=202,
    responses={
        200: {"description": "A dry run: what would be rotated.", "model": EmergencyDryRun},
        **answers(404, 409),
    },
)
async def emergency_rotate(
    body: EmergencyRotateRequest, caller: AdminCaller, runtime: RuntimeDep, response: Response
) -> EmergencyRotationInfo | EmergencyDryRun:
    """Disable every key in scope at OpenRouter (confirmed by reading it back), then replace it.

    Answers when done or after EMERGENCY_REQUEST_BUDGET_S, whichever is first; follow the rest
    at GET /api/admin/emergency-rotate/{id}.
    """
    service = EmergencyRotationService(runtime)
    if body.dry_run:
        response.status_code = 200
        keys = await service.keys_in_scope(body.scope)
        return EmergencyDryRun(total=len(keys), keys=[KeyInfo.of(k) for k in keys])
    status = await service.start(
        body.scope,
        reason=body.reason,
        actor=caller.actor,
        request_id=current_request_id.get(),
        time_budget_s=runtime.settings.emergency_request_budget_s,
    )
    return EmergencyRotationInfo.of(status)


class EmergencyRotationSummary(BaseModel):
    id: UUID
    status: str
    reason: str
    requested_by: str
    created_at: datetime
    completed_at: datetime | None
    total: int
    replaced: int
    failed: int


class EmergencyRotationList(BaseModel):
    data: list[EmergencyRotationSummary]


@router.get("", response_model=EmergencyRotationList)
async def recent_emergency_rotations(_: AdminCaller, runtime: RuntimeDep) -> EmergencyRotationList:
    """The ten newest emergency rotations with their counts, running ones included."""
    rows = await EmergencyRotationService(runtime).recent(limit=10)
    return EmergencyRotationList(
        data=[
            EmergencyRotationSummary(
                id=r.id,
                status=r.status,
                reason=r.reason,
                requested_by=r.requested_by,
                created_at=r.created_at,
                completed_at=r.completed_at,
                total=r.total,
                replaced=replaced,
                failed=failed,
            )
            for r, replaced, failed in rows
        ]
    )


@router.get("/{rotation_id}", response_model=EmergencyRotationInfo)
async def emergency_rotation_status(
    rotation_id: UUID, _: AdminCaller, runtime: RuntimeDep
) -> EmergencyRotationInfo:
    """Progress of an emergency rotation, key by key, with each key's measured time to revoke."""
    return EmergencyRotationInfo.of(await EmergencyRotationService(runtime).status(rotation_id))
