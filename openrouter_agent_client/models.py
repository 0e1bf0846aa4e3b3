"""What the service answers, as the client reads it: money is Decimal, never float.

The models ignore fields they do not know, so that a newer service does not break an older
client.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RotationPolicy = Literal["never", "monthly", "on_demand"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Breakdown(_Answer):
    name: str
    cost_usd: Decimal
    events: int


class BudgetLayer(_Answer):
    """One budget OpenRouter enforces on the user's key, as OpenRouter reports it now.

    ``source``: "key_limit" (the key's own limit: the user's month), "tier_policy" (their
    tier's daily cap), "guardrail" or "workspace" (budgets set at OpenRouter itself).
    ``interval``: "daily", "weekly" or "monthly" (UTC windows); None: it never resets.
    ``remaining_usd`` 0: this layer refuses every request until ``resets_at``.
    """

    source: str
    interval: str | None = None
    limit_usd: Decimal
    spent_usd: Decimal
    remaining_usd: Decimal
    resets_at: datetime | None = None
    scope: str | None = None
    guardrail_id: str | None = None


class Usage(_Answer):
    """GET /api/usage/{user_id}: the user's current month, and what blocks their key.

    ``budget_layers`` is None when the service could not read OpenRouter
    (``budget_layers_error`` says why: "openrouter_unavailable", "key_refused", ...), [] when
    the user has no key; ``blocked_by`` the layer with nothing left, if any."""

    user_id: str
    tier: str
    period: date
    spent_usd: Decimal
    limit_usd: Decimal | None
    remaining_usd: Decimal | None
    percent_used: Decimal | None
    events: int
    events_usd: Decimal = Decimal(0)
    reported_usd: Decimal = Decimal(0)
    unreported_usd: Decimal = Decimal(0)
    corrected_usd: Decimal = Decimal(0)
    counted_usd: Decimal = Decimal(0)
    adjustments_usd: Decimal = Decimal(0)
    forecast_month_end_usd: Decimal | None = None
    by_model: list[Breakdown] = Field(default_factory=list)
    by_agent: list[Breakdown] = Field(default_factory=list)
    thresholds_crossed: list[int] = Field(default_factory=list)
    as_of: datetime | None = None
    budget_layers: list[BudgetLayer] | None = None
    blocked_by: BudgetLayer | None = None
    budget_layers_error: str | None = None


class UserInfo(_Answer):
    """PUT /api/users/{user_id}: the user as written, and what it did to their key's limit."""

    user_id: str
    tier: str
    rotation_policy: RotationPolicy
    created: bool
    key_limit_status: Literal["applied", "pending", "no_key"]
    key_limit_usd: Decimal | None = None
    key_unlimited: bool = False


class BudgetIncrease(_Answer):
    id: int
    user_id: str
    amount_usd: Decimal
    ends_at: datetime
    reason: str
    granted_by: str
    granted_at: datetime
    lapsed: bool


class BudgetIncreaseGranted(_Answer):
    """POST /api/users/{user_id}/budget-increases: the grant, and what it did to the key."""

    increase: BudgetIncrease
    key_limit_status: Literal["applied", "pending", "no_key"]
    key_limit_usd: Decimal | None = None
    key_unlimited: bool = False


class UsageReport(_Answer):
    """One generation waiting in the client's buffer (the body of one event of a batch)."""

    user_id: str
    generation_id: str
    model: str
    cost_usd: Decimal
    prompt_tokens: int = 0
    completion_tokens: int = 0
    agent_name: str | None = None

    def body(self) -> dict[str, object]:
        event: dict[str, object] = {
            "user_id": self.user_id,
            "generation_id": self.generation_id,
            "model": self.model,
            "cost_usd": str(self.cost_usd),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.agent_name is not None:
            event["agent_name"] = self.agent_name
        return event
