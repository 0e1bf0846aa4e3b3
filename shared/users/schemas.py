"""Request and response bodies of users."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.keys.schemas import Reason, TierName
from shared.money import Usd
from shared.timestamps import UtcDatetime
from shared.usage.schemas import KeyLimitOutcome
from shared.users.repository import BudgetIncrease
from shared.users.service import IncreaseGranted, UserWritten

RotationPolicy = Literal["never", "monthly", "on_demand"]


class UserPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: TierName | None = Field(default=None, description="Default for a new user: free.")
    rotation_policy: RotationPolicy | None = Field(
        default=None, description="Default for a new user: on_demand."
    )
    reason: Reason | None = None


class UserTierChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: TierName
    reason: Reason | None = None


class UserInfo(KeyLimitOutcome):
    user_id: str
    tier: str
    rotation_policy: RotationPolicy
    created: bool = Field(description="True when this request created the user.")

    @classmethod
    def of(cls, written: UserWritten) -> UserInfo:
        after = written.change.after
        return cls(
            user_id=after.user_id,
            tier=after.tier,
            rotation_policy=after.rotation_policy,
            created=written.change.created,
            **KeyLimitOutcome.fields_of(written.key),
        )


class UserTierChanged(KeyLimitOutcome):
    user_id: str
    previous_tier: str
    tier: str

    @classmethod
    def of(cls, written: UserWritten) -> UserTierChanged:
        before = written.change.before
        return cls(
            user_id=written.change.after.user_id,
            previous_tier=written.change.after.tier if before is None else before.tier,
            tier=written.change.after.tier,
            **KeyLimitOutcome.fields_of(written.key),
        )


class BudgetIncreaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_usd: Annotated[
        Decimal, Field(gt=0, le=10_000_000, allow_inf_nan=False, decimal_places=6)
    ] = Field(description="Extra USD on top of the tier's monthly budget while it lasts.")
    ends_at: UtcDatetime | None = Field(
        default=None, description="When it lapses (UTC); default: the end of this month."
    )
    reason: Annotated[Reason, Field(min_length=3)]


class BudgetIncreaseInfo(BaseModel):
    id: int
    user_id: str
    amount_usd: Usd
    ends_at: UtcDatetime
    reason: str
    granted_by: str
    granted_at: UtcDatetime
    lapsed: bool = Field(description="Ended: it no longer counts in the budget.")

    @classmethod
    def of(cls, increase: BudgetIncrease, *, now: datetime) -> BudgetIncreaseInfo:
        return cls(
            id=increase.id,
            user_id=increase.user_id,
            amount_usd=increase.amount_usd,
            ends_at=increase.ends_at,
            reason=increase.reason,
            granted_by=increase.granted_by,
            granted_at=increase.granted_at,
            lapsed=increase.ends_at <= now,
        )


class BudgetIncreaseGranted(KeyLimitOutcome):
    increase: BudgetIncreaseInfo

    @classmethod
    def of(cls, granted: IncreaseGranted, *, now: datetime) -> BudgetIncreaseGranted:
        return cls(
            increase=BudgetIncreaseInfo.of(granted.increase, now=now),
            **KeyLimitOutcome.fields_of(granted.key),
        )


class BudgetIncreaseList(BaseModel):
    data: list[BudgetIncreaseInfo]
