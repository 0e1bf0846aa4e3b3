"""Request and response bodies of the key lifecycle (snake_case, like OpenRouter's own)."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Literal, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.keys.domain import IssuedKey, Owner
from shared.money import Usd

if TYPE_CHECKING:
    from shared.keys.repository import KeyRecord, OperationRecord
    from shared.keys.service import OwnerKeys
    from shared.usage.layers import BudgetLayers

# No whitespace, slash or control character: ids travel in paths, logs and key names.
UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=r"^[^\s/\x00-\x1f\x7f-\x9f]+$"),
]
SystemName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
TierName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class KeyOwnerRequest(BaseModel):
    """Exactly one of user_id (a platform user) or system_name (a named system consumer)."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId | None = None
    system_name: SystemName | None = None

    @model_validator(mode="after")
    def _exactly_one_owner(self) -> Self:
        if (self.user_id is None) == (self.system_name is None):
            raise ValueError("give exactly one of user_id or system_name")
        return self

    @property
    def owner(self) -> Owner:
        if self.user_id is not None:
            return Owner.user(self.user_id)
        assert self.system_name is not None
        return Owner.system(self.system_name)


class CreateKeyRequest(KeyOwnerRequest):
    tier: TierName | None = Field(
        default=None,
        description="The user's subscription tier (default: free, or as is). Naming another "
        "tier than the user's own needs users:write or admin (403 tier_change_forbidden).",
    )
    rotation_policy: Literal["never", "monthly", "on_demand"] | None = Field(
        default=None,
        description="Whether the monthly schedule rotates this user's key (default: on_demand).",
    )


class RotateKeyRequest(KeyOwnerRequest):
    grace_seconds: Annotated[int, Field(ge=0, le=86_400)] | None = Field(
        default=None, description="How long the old key keeps working (0: revoke at once)."
    )
    reason: Reason | None = None


class KeyInfo(BaseModel):
    """A key's metadata; never its secret."""

    id: UUID
    owner: str
    user_id: str | None
    state: str
    openrouter_hash: str | None
    label: str | None
    limit_usd: Usd | None
    limit_period: date
    disabled: bool
    fingerprint: str | None
    created_at: datetime
    activated_at: datetime | None
    superseded_at: datetime | None
    grace_until: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: KeyRecord) -> KeyInfo:
        return cls(
            id=key.id,
            owner=key.owner,
            user_id=key.user_id,
            state=key.state,
            openrouter_hash=key.openrouter_hash,
            label=key.label,
            limit_usd=key.limit_usd,
            limit_period=key.limit_period,
            disabled=key.disabled,
            fingerprint=key.fingerprint,
            created_at=key.created_at,
            activated_at=key.activated_at,
            superseded_at=key.superseded_at,
            grace_until=key.grace_until,
            revoked_at=key.revoked_at,
        )


class OperationInfo(BaseModel):
    id: UUID
    kind: str
    owner: str
    status: str
    old_key_id: UUID | None
    new_key_id: UUID | None
    grace_seconds: int
    error_code: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @classmethod
    def of(cls, operation: OperationRecord) -> OperationInfo:
        return cls(
            id=operation.id,
            kind=operation.kind,
            owner=operation.owner,
            status=operation.status,
            old_key_id=operation.old_key_id,
            new_key_id=operation.new_key_id,
            grace_seconds=operation.grace_seconds,
            error_code=operation.error_code,
            error_message=operation.error_message,
            created_at=operation.created_at,
            updated_at=operation.updated_at,
            completed_at=operation.completed_at,
        )


class KeyIssuedResponse(BaseModel):
    key: KeyInfo
    secret: str | None = Field(
        description="The key itself: returned to the requester of this operation only. "
        "Store it now; afterwards only a keys:reveal credential can read it."
    )
    operation: OperationInfo
    previous_key: KeyInfo | None

    @classmethod
    def of(cls, issued: IssuedKey) -> KeyIssuedResponse:
        return cls(
            key=KeyInfo.of(issued.key),
            secret=issued.secret,
            operation=OperationInfo.of(issued.operation),
            previous_key=None if issued.previous_key is None else KeyInfo.of(issued.previous_key),
        )


BudgetLayerSource = Literal["key_limit", "tier_policy", "guardrail", "workspace"]
# Why budget_layers is null (each a short code; see BudgetLayersFields.budget_layers_error).
BudgetLayersError = Literal[
    "not_requested",
    "key_disabled",
    "key_has_no_secret",
    "key_material_unreadable",
    "key_refused",
    "openrouter_timeout",
    "openrouter_unavailable",
    "openrouter_rate_limited",
    "openrouter_invalid_response",
    "openrouter_error",
    "database_unavailable",
    "internal_error",
]


class BudgetLayer(BaseModel):
    """One budget OpenRouter enforces on the key, as its GET /key (asked with the key itself)
    reports it: what may be spent in the layer's window, what was, what is left."""

    source: BudgetLayerSource = Field(
        description="key_limit: the key's own limit at OpenRouter (the user's monthly budget "
        "left). tier_policy: the daily (or weekly, monthly) cap of the user's tier, enforced by "
        "the tier's guardrail. guardrail: another guardrail that applies to the key (the "
        "workspace's default one, say). workspace: a workspace budget."
    )
    interval: str | None = Field(
        description="How often the layer resets, in UTC windows: daily, weekly or monthly "
        "(OpenRouter's reset_interval); null: never (a lifetime limit)."
    )
    limit_usd: Usd = Field(description="What may be spent in a window.")
    spent_usd: Usd = Field(description="What counts against it in the current window.")
    remaining_usd: Usd = Field(
        description="What is left in the current window, never below 0. 0: this layer refuses "
        "every request until resets_at (OpenRouter's 403)."
    )
    resets_at: datetime | None = Field(
        description="When the current window ends (UTC) and the layer is whole again; null "
        "when it never resets."
    )
    scope: str = Field(
        description="OpenRouter's name for the layer (api_key, workspace_default_key, member, "
        "workspace, key_limit)."
    )
    guardrail_id: str | None = Field(
        default=None, description="The OpenRouter guardrail of a guardrail layer."
    )


BUDGET_LAYERS_DOC = (
    "Every budget layer OpenRouter enforces on the current key, in the order it checks them "
    "(guardrails, workspace budgets, then the key's own limit), read from OpenRouter's GET /key "
    "with the key itself at the time of this answer (one call, at most OPENROUTER_TIMEOUT_S). "
    "[] when there is no current key (or none of its layers has a budget). null when "
    "OpenRouter could not be read: budget_layers_error says why."
)
BLOCKED_BY_DOC = (
    "The layer that refuses requests now: the first with nothing left (remaining_usd 0). null "
    "when none is spent, or when budget_layers is null."
)
BUDGET_LAYERS_ERROR_DOC = (
    "Why budget_layers is null, else null. not_requested (?budget_layers=false); key_disabled "
    "(the key is disabled: it refuses everything, whatever its budgets); key_has_no_secret, "
    "key_material_unreadable (the key cannot be opened here); key_refused (OpenRouter answered "
    "401, 403 or 404 for the key: deleted, disabled or expired there); openrouter_timeout, "
    "openrouter_unavailable (no answer within OPENROUTER_TIMEOUT_S, a network failure or a "
    "5xx), openrouter_rate_limited (429), openrouter_invalid_response, openrouter_error "
    "(another refusal); database_unavailable; internal_error. The rest of the answer is "
    "unaffected."
)


class CurrentKeyResponse(BaseModel):
    key: KeyInfo
    secret: str | None = Field(description="Only with ?reveal=true and the keys:reveal scope.")
    cache_for_s: int | None = Field(
        default=None,
        description="With a secret: how long a caller may keep using it from a cache. A key "
        "rotated out keeps working for the rotation grace period; this is 80 % of it. An "
        "emergency rotation or a disabled key ends it early: OpenRouter then answers 401.",
    )
    rotation: OperationInfo | None = Field(
        default=None, description="The owner's create or rotation in progress, if any."
    )
    in_grace: list[KeyInfo] = Field(
        default_factory=list,
        description="Earlier keys still working in their grace period after a rotation.",
    )
    tier: str | None = Field(default=None, description="The user's tier (system keys: null).")
    rotation_policy: Literal["never", "monthly", "on_demand"] | None = Field(
        default=None,
        description="Whether the monthly schedule rotates this key (system keys: monthly).",
    )
    budget_layers: list[BudgetLayer] | None = Field(default=None, description=BUDGET_LAYERS_DOC)
    blocked_by: BudgetLayer | None = Field(default=None, description=BLOCKED_BY_DOC)
    budget_layers_error: BudgetLayersError | None = Field(
        default=None, description=BUDGET_LAYERS_ERROR_DOC
    )

    @classmethod
    def of(
        cls,
        owned: OwnerKeys,
        *,
        secret: str | None = None,
        grace_s: int | None = None,
        layers: BudgetLayers | None = None,
    ) -> CurrentKeyResponse:
        return cls(
            key=KeyInfo.of(owned.current),
            secret=secret,
            cache_for_s=None if secret is None or grace_s is None else grace_s * 4 // 5,
            rotation=None if owned.operation is None else OperationInfo.of(owned.operation),
            in_grace=[KeyInfo.of(k) for k in owned.in_grace],
            tier=owned.tier,
            rotation_policy=owned.rotation_policy,
            budget_layers=None if layers is None else layers.layers,
            blocked_by=None if layers is None else layers.blocked_by,
            budget_layers_error=None if layers is None else layers.error,
        )


class KeyHistory(BaseModel):
    data: list[KeyInfo]


class OwnerSkipped(BaseModel):
    owner: str
    reason: str = Field(description="owner_busy: another invocation holds the owner's keys.")


class ReconcileResult(BaseModel):
    deleted_at_openrouter: list[str]
    revoked_missing: list[UUID]
    reprovisioned: list[UUID]
    too_young_to_judge: int
    skipped: list[OwnerSkipped] = Field(
        default_factory=list, description="Owners not touched now; the next run tries again."
    )
    failed: list[OwnerSkipped] = Field(
        default_factory=list, description="Owners that could not be repaired, with the reason."
    )
