"""Writing a user, the same way on every route: who may set a tier, and one way to audit it.

Setting or changing a user's tier is a privileged act (it sets their budget), whichever route
does it: only admins and the subscription system's scope (users:write) may. A key writer that
creates a key for a user may name the tier the user already has (or the default, for a new
user), nothing else.
"""

from __future__ import annotations

from shared.audit.repository import AuditRepository
from shared.errors import Forbidden
from shared.users.repository import DEFAULT_TIER, UserChange, UserRepository


class TierChangeForbidden(Forbidden):
    code = "tier_change_forbidden"


async def write_user(
    users: UserRepository,
    audit: AuditRepository,
    user_id: str,
    *,
    tier: str | None,
    rotation_policy: str | None,
    actor: str,
    may_change_tier: bool,
    reason: str | None = None,
    request_id: str | None = None,
) -> UserChange:
    """Create or update the user within the caller's transaction, audited in it."""
    before = await users.lock(user_id)
    tier_now = DEFAULT_TIER if before is None else before.tier
    if tier is not None and tier != tier_now and not may_change_tier:
        raise TierChangeForbidden(
            "setting a user's tier needs the users:write scope or an admin",
            details={"user_id": user_id, "tier": tier_now, "asked": tier},
        )
    change = await users.upsert(user_id, tier=tier, rotation_policy=rotation_policy, actor=actor)
    await audit_user_change(audit, change, actor=actor, reason=reason, request_id=request_id)
    return change


async def audit_user_change(
    audit: AuditRepository,
    change: UserChange,
    *,
    actor: str,
    reason: str | None,
    request_id: str | None,
) -> None:
    """One audit row per fact: the user created, their tier changed, their policy changed."""
    target = f"user:{change.after.user_id}"
    if change.before is None:
        await audit.append(
            actor=actor,
            action="user.created",
            target=target,
            reason=reason,
            request_id=request_id,
            details={"tier": change.after.tier, "rotation_policy": change.after.rotation_policy},
        )
        if change.after.tier != DEFAULT_TIER:
            await audit.append(
                actor=actor,
                action="user.tier_changed",
                target=target,
                reason=reason,
                request_id=request_id,
                details={"from": None, "to": change.after.tier},
            )
        return
    if change.tier_changed:
        await audit.append(
            actor=actor,
            action="user.tier_changed",
            target=target,
            reason=reason,
            request_id=request_id,
            details={"from": change.before.tier, "to": change.after.tier},
        )
    if change.policy_changed:
        await audit.append(
            actor=actor,
            action="user.rotation_policy_changed",
            target=target,
            reason=reason,
            request_id=request_id,
            details={"from": change.before.rotation_policy, "to": change.after.rotation_policy},
        )
