"""Request and response bodies of users."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.keys.schemas import Reason, TierName
from shared.usage.schemas import KeyLimitOutcome
from shared.users.service import UserWritten

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
