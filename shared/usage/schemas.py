"""Request and response bodies of the usage ledger. Money is a decimal string in responses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from shared.keys.schemas import (
    BLOCKED_BY_DOC,
    BUDGET_LAYERS_DOC,
    BUDGET_LAYERS_ERROR_DOC,
    BudgetLayer,
    BudgetLayersError,
    KeyInfo,
    TierName,
    UserId,
)
from shared.money import Percent, Usd
from shared.timestamps import UtcDatetime

if TYPE_CHECKING:
    from shared.keys.service import BudgetApplied
    from shared.usage.budgets import ResetOutcome
    from shared.usage.tier_policies import TierPolicy

MAX_BATCH_EVENTS = 1000
# No single generation costs this much; a larger figure is a unit mistake, not a bill.
MAX_EVENT_COST_USD = Decimal(10_000)

GenerationId = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:\-]+$")
]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class UsageEvent(BaseModel):
    """One generation, as the platform reports it."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    generation_id: GenerationId = Field(description="OpenRouter's id; the idempotency key.")
    model: Label
    prompt_tokens: Annotated[int, Field(ge=0, le=100_000_000)] = 0
    completion_tokens: Annotated[int, Field(ge=0, le=100_000_000)] = 0
    cost_usd: Annotated[
        Decimal, Field(ge=0, le=MAX_EVENT_COST_USD, allow_inf_nan=False, decimal_places=12)
    ]
    agent_name: Label | None = None
    endpoint: Label | None = None
    duration_ms: Annotated[int, Field(ge=0, le=86_400_000)] | None = None
    occurred_at: UtcDatetime | None = Field(
        default=None, description="When the generation ran (default: now)."
    )


class UsageEventBatch(BaseModel):
    """A batch as the API documents it (UsageBatch reads it, leaving events to the service)."""

    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[UsageEvent], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class UsageBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Validated one by one by the service, so that a bad event is reported, not fatal.
    events: Annotated[list[dict[str, object]], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class EventOutcome(BaseModel):
    index: int
    generation_id: str | None
    status: Literal["stored", "duplicate", "rejected"]
    reason: str | None = None


class UserUsageSummary(BaseModel):
    user_id: str
    period: date
    spent_usd: Usd
    limit_usd: Usd | None
    remaining_usd: Usd | None
    percent_used: Percent | None
    thresholds_crossed: list[int] = Field(description="Crossed by this call.")


class UsageLogResponse(BaseModel):
    stored: int
    duplicates: int
    rejected: int
    events: list[EventOutcome]
    users: list[UserUsageSummary]


class Breakdown(BaseModel):
    name: str
    cost_usd: Usd
    events: int


class MonthUsage(BaseModel):
    period: date
    spent_usd: Usd = Field(
        description="The books: what the reported events cost, corrected, or what OpenRouter "
        "counted on the user's keys if that is more, plus adjustments (never below 0): what "
        "counts against the budget."
    )
    events_usd: Usd = Field(description="What the month's events cost; the breakdowns sum to it.")
    reported_usd: Usd = Field(description="What services reported (the events, as reported).")
    unreported_usd: Usd = Field(
        description="What OpenRouter counted that no reported event explains (as of its last "
        "sync); it shrinks as late reports arrive."
    )
    corrected_usd: Usd = Field(description="Corrections of reported costs found wrong.")
    counted_usd: Usd = Field(description="What OpenRouter counted on the user's keys (sync).")
    adjustments_usd: Usd = Field(description="What resets took off (negative).")
    events: int
    limit_usd: Usd | None
    remaining_usd: Usd | None
    percent_used: Percent | None
    by_model: list[Breakdown]
    by_agent: list[Breakdown]
    thresholds_crossed: list[int]


class CurrentUsage(MonthUsage):
    user_id: str
    tier: str
    forecast_month_end_usd: Usd = Field(
        description="spent so far, plus the pace of the last 7 days (across the month's start)"
        " for the days left; never more than the limit, which the key cannot spend past."
    )
    as_of: datetime
    budget_layers: list[BudgetLayer] | None = Field(default=None, description=BUDGET_LAYERS_DOC)
    blocked_by: BudgetLayer | None = Field(default=None, description=BLOCKED_BY_DOC)
    budget_layers_error: BudgetLayersError | None = Field(
        default=None, description=BUDGET_LAYERS_ERROR_DOC
    )


class MonthlyUsage(BaseModel):
    user_id: str
    data: list[MonthUsage]
    next_before: date | None


class AdminKeyInfo(KeyInfo):
    """A key in the admin list, with its owner's tier."""

    tier: str | None


class KeyStateCounts(BaseModel):
    counts: dict[str, int] = Field(description="Keys by state: current, previous, revoked, ...")


class KeyPage(BaseModel):
    data: list[AdminKeyInfo]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class UserShare(BaseModel):
    user_id: str
    tier: str
    spent_usd: Usd
    limit_usd: Usd | None = Field(description="The tier's monthly budget; null: unlimited.")
    percent_used: Percent | None
    key_limit_usd: Usd | None = Field(
        description="The current key's own limit at OpenRouter (the budget less what earlier"
        " keys spent, plus resets); null when it is unlimited or there is no key (has_key)."
    )
    has_key: bool


class DriftRow(BaseModel):
    user_id: str
    openrouter_usd: Usd
    ledger_usd: Usd
    drift_usd: Usd
    measured_at: datetime


class SystemUsage(BaseModel):
    """The month system-wide. spent is what counts against budgets: events less adjustments
    (each user's never below 0); the breakdowns are what the events cost, before adjustments."""

    period: date
    spent_usd: Usd
    events_usd: Usd = Field(description="What the month's events cost, as reported.")
    unreported_usd: Usd = Field(
        description="What OpenRouter counted on users' keys that no reported event explains."
    )
    corrected_usd: Usd = Field(description="Corrections of reported costs found wrong.")
    adjustments_usd: Usd = Field(description="What resets took off (negative).")
    events: int
    users: int = Field(description="Users with at least one event this month.")
    corrections: int = Field(
        default=0, description="Reported costs OpenRouter's generations corrected this month."
    )
    corrections_usd: Usd = Field(
        default=Decimal(0), description="Their sum: OpenRouter's cost less the reported one."
    )
    foreign_events: int = Field(
        default=0, description="Events whose generation was another user's key: not counted."
    )
    unverifiable_events: int = Field(
        default=0, description="Events OpenRouter never found within VERIFY_GIVE_UP_S."
    )
    by_tier: list[Breakdown]
    by_model: list[Breakdown]
    by_agent: list[Breakdown]
    top_users: list[UserShare]
    over_80_percent: list[UserShare]
    over_100_percent: list[UserShare]
    drift: list[DriftRow]


# ----- budgets (admin) -----

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500)]


class ResetUsageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason
    user_id: UserId | None = None
    tier: TierName | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_scope(self) -> Self:
        if sum((self.user_id is not None, self.tier is not None, self.all)) != 1:
            raise ValueError("give exactly one of user_id, tier, or all=true")
        return self


class KeyLimitOutcome(BaseModel):
    """What a budget change did to the user's key at OpenRouter, said explicitly."""

    key_limit_status: Literal["applied", "pending", "no_key"] = Field(
        description="applied: the key's OpenRouter limit follows now. pending: another "
        "invocation holds the user's keys (a rotation being made, say); it applies the change "
        "before it lets go, within seconds. no_key: the user has no current key."
    )
    key_limit_usd: Usd | None = Field(
        description="The key's OpenRouter limit when applied and limited; otherwise null "
        "(see key_unlimited and key_limit_status)."
    )
    key_unlimited: bool = Field(description="True only when applied and the key has no limit.")

    @staticmethod
    def fields_of(applied: BudgetApplied) -> dict[str, object]:
        limit = None if applied.key is None else applied.key.limit_usd
        return {
            "key_limit_status": applied.status,
            "key_limit_usd": limit if applied.status == "applied" else None,
            "key_unlimited": applied.status == "applied" and limit is None,
        }


class ResetUsageResult(KeyLimitOutcome):
    user_id: str
    amount_usd: Usd = Field(description="The adjustment entered (negative: budget given back).")
    key_updated: bool = Field(description="Same as key_limit_status == 'applied'.")


class ResetUsageResponse(BaseModel):
    users: list[ResetUsageResult]

    @classmethod
    def of(cls, outcomes: Sequence[ResetOutcome]) -> ResetUsageResponse:
        return cls(
            users=[
                ResetUsageResult(
                    user_id=o.user_id,
                    amount_usd=o.amount_usd,
                    key_updated=o.key.status == "applied",
                    **KeyLimitOutcome.fields_of(o.key),
                )
                for o in outcomes
            ]
        )


class TierInfo(BaseModel):
    tier: str
    monthly_budget_usd: Usd | None = Field(description="null: unlimited.")
    description: str


class TierList(BaseModel):
    data: list[TierInfo]

    @classmethod
    def of(cls, tiers: Sequence[tuple[str, Decimal | None, str]]) -> TierList:
        """From BudgetService.tiers(): (tier, monthly budget, description) rows."""
        return cls(
            data=[TierInfo(tier=t, monthly_budget_usd=b, description=d) for t, b, d in tiers]
        )


class TierBudgetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_budget_usd: (
        Annotated[Usd, Field(ge=0, le=10_000_000, allow_inf_nan=False, decimal_places=6)] | None
    )
    reason: Reason | None = None


ModelId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/*~-]+$")]
ProviderName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._ -]+$")]


class TierPolicyUpdate(BaseModel):
    """A tier's whole policy: what is left out (or null) is not restricted."""

    model_config = ConfigDict(extra="forbid")

    daily_cap_usd: (
        Annotated[Usd, Field(ge=0, le=10_000_000, allow_inf_nan=False, decimal_places=6)] | None
    ) = Field(default=None, description="At most this much a UTC day per key; null: no cap.")
    allowed_models: Annotated[list[ModelId], Field(min_length=1, max_length=200)] | None = Field(
        default=None,
        description="OpenRouter model ids, matched exactly; null: every model.",
    )
    allowed_providers: Annotated[list[ProviderName], Field(min_length=1, max_length=100)] | None = (
        Field(default=None, description="Provider names; null: every provider.")
    )
    reason: Reason | None = None


class TierPolicyInfo(BaseModel):
    tier: str
    daily_cap_usd: Usd | None
    allowed_models: list[str] | None
    allowed_providers: list[str] | None
    guardrail_id: str | None = Field(description="The OpenRouter guardrail enforcing it.")

    @classmethod
    def of(cls, policy: TierPolicy) -> TierPolicyInfo:
        return cls(
            tier=policy.tier,
            daily_cap_usd=policy.daily_cap_usd,
            allowed_models=None if policy.allowed_models is None else list(policy.allowed_models),
            allowed_providers=(
                None if policy.allowed_providers is None else list(policy.allowed_providers)
            ),
            guardrail_id=policy.guardrail_id,
        )


class TierPolicyList(BaseModel):
    data: list[TierPolicyInfo]


class DailyCappedUser(BaseModel):
    user_id: str
    tier: str
    spent_today_usd: Usd = Field(description="What the user's events reported today (UTC).")
    daily_cap_usd: Usd = Field(description="Their tier's daily cap, which they are at or over.")
    resets_at: datetime = Field(description="When the cap resets: the next UTC midnight.")


class DailyCappedList(BaseModel):
    """The users held by their tier's daily cap today (UTC), highest spend first."""

    data: list[DailyCappedUser]

    @classmethod
    def of(cls, resets_at: datetime, rows: Sequence[dict[str, object]]) -> DailyCappedList:
        """From TierPolicyService.daily_capped(): (user_id, tier, spent_today_usd,
        daily_cap_usd) rows."""
        return cls(
            data=[DailyCappedUser.model_validate({**row, "resets_at": resets_at}) for row in rows]
        )
