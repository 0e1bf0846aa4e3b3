"""Service tokens (admin group) and the caller's own identity (keys group)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from shared.access.rules import AdminCaller, AdminTokenIssuer, AuthenticatedCaller
from shared.access.schemas import (
    ServiceTokenCreate,
    ServiceTokenInfo,
    ServiceTokenIssued,
    ServiceTokenList,
    WhoAmI,
)
from shared.access.service import AccessService
from shared.observability import current_request_id
from shared.web.deps import RuntimeDep

tokens_router = APIRouter(prefix="/api/admin/tokens", tags=["service tokens"])
whoami_router = APIRouter(prefix="/api/auth", tags=["access"])


@tokens_router.post("", response_model=ServiceTokenIssued, status_code=201)
async def issue_service_token(
    body: ServiceTokenCreate, caller: AdminTokenIssuer, runtime: RuntimeDep
) -> ServiceTokenIssued:
    """Issue a service token. The token is in this response only; store it now."""
    issued = await AccessService(runtime).issue_token(
        issued_by=caller.actor,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
        request_id=current_request_id.get(),
    )
    return ServiceTokenIssued(token=issued.token, token_info=ServiceTokenInfo.of(issued.record))


@tokens_router.get("", response_model=ServiceTokenList)
async def list_service_tokens(
    _: AdminCaller, runtime: RuntimeDep, include_revoked: bool = False
) -> ServiceTokenList:
    """List service tokens (metadata only, newest first)."""
    records = await AccessService(runtime).list_tokens(include_revoked=include_revoked)
    return ServiceTokenList(data=[ServiceTokenInfo.of(r) for r in records])


@tokens_router.delete("/{token_id}", response_model=ServiceTokenInfo)
async def revoke_service_token(
    token_id: UUID, caller: AdminCaller, runtime: RuntimeDep
) -> ServiceTokenInfo:
    """Revoke a service token at once; revoking it again changes nothing."""
    record = await AccessService(runtime).revoke_token(
        token_id, revoked_by=caller.actor, request_id=current_request_id.get()
    )
    return ServiceTokenInfo.of(record)


@whoami_router.get("/whoami", response_model=WhoAmI)
async def whoami(caller: AuthenticatedCaller) -> WhoAmI:
    """Who the credential in this request belongs to, and what it may do."""
    return WhoAmI.of(caller)
