"""Creating and updating users, and moving them between tiers: their keys follow."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.audit.repository import AuditRepository
from shared.db import sql_errors
from shared.errors import IdempotencyKeyReused, NotFound, ValidationFailed
from shared.keys.domain import Owner, current_period
from shared.keys.service import BudgetApplied, KeyLifecycleService
from shared.runtime import Runtime
from shared.usage.repository import UsageRepository
from shared.usage.tier_policies import TierPolicyService
from shared.users.domain import write_user
from shared.users.repository import (
    BudgetIncrease,
    BudgetIncreaseRepository,
    UserChange,
    UserRepository,
)


@dataclass(frozen=True, slots=True)
class UserWritten:
    change: UserChange
    key: BudgetApplied


class UsersService:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def put(
        self,
        user_id: str,
        *,
        tier: str | None,
        rotation_policy: str | None,
        actor: str,
        reason: str | None,
        request_id: str | None,
        must_exist: bool = False,
    ) -> UserWritten:
        """Create the user, or update their tier and rotation policy; their key's limit
        follows a tier change at once (or when the invocation holding their keys lets go).
        The caller has been allowed to set tiers. Idempotent."""
        try:
            async with self._runtime.database().connection() as conn, conn.transaction():
                users = UserRepository(conn)
                if must_exist and await users.get(user_id) is None:
                    raise NotFound(f"no user {user_id}", code="user_not_found")
                change = await write_user(
                    users,
                    AuditRepository(conn),
                    user_id,
                    tier=tier,
                    rotation_policy=rotation_policy,
                    actor=actor,
                    may_change_tier=True,
                    reason=reason,
                    request_id=request_id,
                )
                if change.before is not None and change.before.tier != change.after.tier:
                    await UsageRepository(conn).cross_thresholds(current_period(), user_id=user_id)
        except sql_errors.ForeignKeyViolation as exc:
            raise ValidationFailed(f"unknown tier {tier!r}", code="unknown_tier") from exc
        before = "none" if change.before is None else change.before.tier
        applied = await KeyLifecycleService(self._runtime).apply_budget(
            Owner.user(user_id),
            actor=actor,
            reason=f"tier {before} -> {change.after.tier}",
            request_id=request_id,
        )
        # Their tier's policy (or none) holds their keys from now on: on every put, so that a
        # retry after a move whose assignment failed at OpenRouter finishes it (nothing to do
        # costs one query).
        await TierPolicyService(self._runtime).guard_owner(Owner.user(user_id))
        return UserWritten(change, applied)


@dataclass(frozen=True, slots=True)
class IncreaseGranted:
    increase: BudgetIncrease
    key: BudgetApplied


class BudgetIncreaseService:
    """Temporary budget increases: a grant is a ledger row, the user's keys follow at once, and
    the grant's end reaches them through the advance job."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def grant(
        self,
        user_id: str,
        amount_usd: Decimal,
        *,
        ends_at: datetime | None,
        reason: str,
        actor: str,
        request_id: str | None,
        idempotency_key: str | None = None,
    ) -> IncreaseGranted:
        """Give the user `amount_usd` more budget until `ends_at` (None: the month's end). A
        retry with the same idempotency key returns the first grant and grants nothing more."""
        now = datetime.now(UTC)
        month_end = _next_month_start(now)
        ends = month_end if ends_at is None else ends_at
        if ends <= now:
            raise ValidationFailed("an increase must end in the future", code="increase_ended")
        async with self._runtime.database().connection() as conn, conn.transaction():
            if await UserRepository(conn).get(user_id) is None:
                raise NotFound(f"no user {user_id}", code="user_not_found")
            increase, made = await BudgetIncreaseRepository(conn).grant(
                user_id, amount_usd, ends, reason, actor, idempotency_key
            )
            if not made and (
                increase.user_id != user_id
                or increase.amount_usd != amount_usd
                or increase.reason != reason
                or (ends_at is not None and increase.ends_at != ends_at)
            ):
                raise IdempotencyKeyReused(
                    "this Idempotency-Key already answered another grant",
                    details={"increase_id": increase.id},
                )
            if made:  # a retry of an earlier grant is not granted, nor audited, again
                await AuditRepository(conn).append(
                    actor=actor,
                    action="user.budget_increased",
                    target=f"user:{user_id}",
                    reason=reason,
                    request_id=request_id,
                    details={"amount_usd": amount_usd, "ends_at": ends.isoformat()},
                )
        applied = await KeyLifecycleService(self._runtime).apply_budget(
            Owner.user(user_id),
            actor=actor,
            reason=f"budget increase of {amount_usd} until {ends.isoformat()}",
            request_id=request_id,
        )
        return IncreaseGranted(increase, applied)

    async def of_user(self, user_id: str) -> list[BudgetIncrease]:
        async with self._runtime.database().connection() as conn:
            if await UserRepository(conn).get(user_id) is None:
                raise NotFound(f"no user {user_id}", code="user_not_found")
            return await BudgetIncreaseRepository(conn).of_user(user_id)

    async def apply_lapsed(self, *, limit: int = 100) -> int:
        """Bring the keys of users whose grant just ended back to their budget without it,
        crossing the thresholds the smaller budget puts behind their spend. Safe to repeat: a
        user held by another invocation is left for the next run."""
        async with self._runtime.database().connection() as conn:
            lapsed = await BudgetIncreaseRepository(conn).lapsed(limit=limit)
        applied = 0
        keys = KeyLifecycleService(self._runtime)
        for increase in lapsed:
            outcome = await keys.apply_budget(
                Owner.user(increase.user_id),
                actor="service",
                reason=f"budget increase {increase.id} ended",
                request_id=None,
            )
            if outcome.status == "pending":
                continue  # the holder applies the budget before it lets go; marked next run
            async with self._runtime.database().connection() as conn, conn.transaction():
                await UsageRepository(conn).cross_thresholds(
                    current_period(), user_id=increase.user_id
                )
                await BudgetIncreaseRepository(conn).mark_lapse_applied(increase.id)
            applied += 1
        return applied


def _next_month_start(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)
