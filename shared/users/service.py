"""Creating and updating users, and moving them between tiers: their keys follow."""

from __future__ import annotations

from dataclasses import dataclass

from shared.audit.repository import AuditRepository
from shared.db import sql_errors
from shared.errors import NotFound, ValidationFailed
from shared.keys.domain import Owner, current_period
from shared.keys.service import BudgetApplied, KeyLifecycleService
from shared.runtime import Runtime
from shared.usage.repository import UsageRepository
from shared.usage.tier_policies import TierPolicyService
from shared.users.domain import write_user
from shared.users.repository import UserChange, UserRepository


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
        if change.before is not None and change.before.tier != change.after.tier:
            # the new tier's policy (or none) holds their keys from now on
            await TierPolicyService(self._runtime).guard_owner(Owner.user(user_id))
        return UserWritten(change, applied)
