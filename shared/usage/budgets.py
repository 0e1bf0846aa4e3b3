"""Resets, tier changes and tier amounts: the ledger and the keys' OpenRouter limits.

Apart from usage/service.py so that the usage function, which logs and reads, never loads the
key lifecycle that these admin operations drive.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from shared.audit.repository import AuditRepository
from shared.errors import NotFound
from shared.keys.domain import Owner, current_period
from shared.keys.service import BudgetApplied, KeyLifecycleService
from shared.runtime import Runtime
from shared.usage.repository import UsageRepository


@dataclass(frozen=True, slots=True)
class ResetOutcome:
    user_id: str
    amount_usd: Decimal
    key: BudgetApplied


class BudgetService:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def reset(
        self,
        *,
        user_id: str | None,
        tier: str | None,
        everyone: bool,
        reason: str,
        actor: str,
        request_id: str | None,
    ) -> list[ResetOutcome]:
        """Give users their whole budget back for this month: an adjustment in the ledger, and
        the key's OpenRouter limit raised (its counter cannot be zeroed). Safe to repeat."""
        period = current_period(None)
        async with self._runtime.database().connection() as conn:
            users = await UsageRepository(conn).users_in_scope(
                user_id=user_id, tier=tier, everyone=everyone
            )
        if user_id is not None and not users:
            raise NotFound(f"no user {user_id}", code="user_not_found")
        keys = KeyLifecycleService(self._runtime)
        outcomes = []
        for user in users:
            async with self._runtime.database().connection() as conn, conn.transaction():
                amount = await UsageRepository(conn).reset(user, period, reason=reason, actor=actor)
                if amount:
                    await AuditRepository(conn).append(
                        actor=actor,
                        action="usage.reset",
                        target=f"user:{user}",
                        reason=reason,
                        request_id=request_id,
                        details={"amount_usd": str(amount), "period": period.isoformat()},
                    )
            applied = await keys.apply_budget(
                Owner.user(user),
                actor=actor,
                reason=f"usage reset: {reason}",
                request_id=request_id,
            )
            outcomes.append(ResetOutcome(user_id=user, amount_usd=amount, key=applied))
        return outcomes

    async def tiers(self) -> list[tuple[str, Decimal | None, str]]:
        async with self._runtime.database().connection() as conn:
            return await UsageRepository(conn).tiers()

    async def set_tier_budget(
        self,
        tier: str,
        budget: Decimal | None,
        *,
        actor: str,
        reason: str | None,
        request_id: str | None,
    ) -> tuple[str, Decimal | None, str]:
        """A tier's new monthly budget (None: unlimited), audited. Keys follow at their next
        budget application (tier change, reset, rotation, or the monthly job)."""
        async with self._runtime.database().connection() as conn, conn.transaction():
            repository = UsageRepository(conn)
            before = next((t for t in await repository.tiers() if t[0] == tier), None)
            if before is None or not await repository.set_tier_budget(tier, budget):
                raise NotFound(f"no tier {tier}", code="tier_not_found")
            if before[1] != budget:
                await AuditRepository(conn).append(
                    actor=actor,
                    action="tier.budget_changed",
                    target=f"tier:{tier}",
                    reason=reason,
                    request_id=request_id,
                    details={
                        "from": None if before[1] is None else str(before[1]),
                        "to": None if budget is None else str(budget),
                    },
                )
            return next(t for t in await repository.tiers() if t[0] == tier)
