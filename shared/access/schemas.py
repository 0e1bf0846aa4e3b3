"""Request and response bodies of access control."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.access.principals import Principal, PrincipalKind, Scope
from shared.access.repository import ServiceTokenRecord
from shared.timestamps import UtcDatetime

TokenName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class ServiceTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TokenName
    scopes: Annotated[list[Scope], Field(min_length=1)]
    expires_at: UtcDatetime | None = Field(
        default=None,
        description="When the token stops working (at most SERVICE_TOKEN_MAX_LIFETIME_DAYS ahead).",
    )


class ServiceTokenInfo(BaseModel):
    """A token's metadata; never the token."""

    id: UUID
    name: str
    token_hint: str
    scopes: list[Scope]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, record: ServiceTokenRecord) -> ServiceTokenInfo:
        return cls(
            id=record.id,
            name=record.name,
            token_hint=record.token_hint,
            scopes=[Scope(s) for s in record.scopes],
            created_at=record.created_at,
            created_by=record.created_by,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            revoked_by=record.revoked_by,
            last_used_at=record.last_used_at,
        )


class ServiceTokenIssued(BaseModel):
    token: str = Field(description="The token. Shown once: it is stored only as a hash.")
    token_info: ServiceTokenInfo


class ServiceTokenList(BaseModel):
    data: list[ServiceTokenInfo]


class WhoAmI(BaseModel):
    kind: PrincipalKind
    id: str
    is_admin: bool
    scopes: list[Scope]
    name: str | None

    @classmethod
    def of(cls, principal: Principal) -> WhoAmI:
        return cls(
            kind=principal.kind,
            id=principal.id,
            is_admin=principal.is_admin,
            scopes=sorted(principal.scopes),
            name=principal.name,
        )
