"""Resets, tier changes and tier amounts: the ledger and the keys' OpenRouter limits.

Apart from usage/service.py so that the usage function, which logs and reads, never loads the
key lifecycle that these admin operations drive. A tier's new amount reaches its users' keys
through a job on the work queue (one item per user with a key), so that a change to a tier of
100,000 users finishes at the pace the fleet allows, like every other bulk change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from shared.audit.repository import AuditRepository
from shared.errors import NotFound
from shared.jobs.queue import ItemHandler
from shared.jobs.repository import ClaimedItem, WorkJob, WorkQueueRepository
from shared.keys.domain import Owner, current_period
from shared.keys.repository import KeyRepository
from shared.keys.service import BudgetApplied, KeyLifecycleService
from shared.money import usd_text
from shared.openrouter.errors import OpenRouterNotFound
from shared.runtime import Runtime
from shared.usage.repository import UsageRepository

TIER_BUDGET_KIND = "tier_budget"
TIER_BUDGET_PRIORITY = 6  # before the month's restore: the change was asked for now


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
            counters = await self._counters_now(user)
            async with self._runtime.database().connection() as conn, conn.transaction():
                books = UsageRepository(conn)
                # What OpenRouter counted up to now, not at the last sync: the whole budget back.
                await books.sync_counted(period.isoformat(), counters)
                amount = await books.reset(user, period, reason=reason, actor=actor)
                if amount:
                    await AuditRepository(conn).append(
                        actor=actor,
                        action="usage.reset",
                        target=f"user:{user}",
                        reason=reason,
                        request_id=request_id,
                        details={"amount_usd": amount, "period": period.isoformat()},
                    )
            applied = await keys.apply_budget(
                Owner.user(user),
                actor=actor,
                reason=f"usage reset: {reason}",
                request_id=request_id,
            )
            outcomes.append(ResetOutcome(user_id=user, amount_usd=amount, key=applied))
        return outcomes

    async def _counters_now(self, user: str) -> list[dict[str, str]]:
        """The monthly counter at OpenRouter of each of the user's keys it still has."""
        async with self._runtime.database().connection() as conn:
            in_play = await KeyRepository(conn).keys_in_play(Owner.user(user).key)
        counters = []
        for key in in_play:
            if key.openrouter_hash is None or key.deleted_at is not None:
                continue
            try:
                remote = await self._runtime.openrouter().get_key(key.openrouter_hash)
            except OpenRouterNotFound:
                continue  # gone: its final usage is in the books already, or will be
            counters.append({"hash": remote.hash, "usage_usd": usd_text(remote.usage_monthly)})
        return counters

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
        """A tier's new monthly budget (None: unlimited), audited; the thresholds it puts behind
        its users' spend are crossed, and a job brings their keys' limits in line."""
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
                    details={"from": before[1], "to": budget},
                )
                await repository.cross_thresholds(current_period(), tier=tier)
                job, _ = await WorkQueueRepository(conn).ensure_job(
                    TIER_BUDGET_KIND,
                    f"{tier}:{uuid.uuid4()}",
                    created_by=actor,
                    params={"tier": tier},
                    priority=TIER_BUDGET_PRIORITY,
                )
                await KeyRepository(conn).enqueue_owners_of_tier(job.id, tier)
                # A tier nobody with a key is on: its job is done as it is made.
                await WorkQueueRepository(conn).finish_if_drained(job.id)
            return next(t for t in await repository.tiers() if t[0] == tier)


def tier_budget_handler(runtime: Runtime, job: WorkJob) -> ItemHandler:
    """An item is one user of the tier whose key's limit follows the tier's new amount."""
    lifecycle = KeyLifecycleService(runtime)
    tier = str(job.params.get("tier"))

    async def apply(claimed: ClaimedItem) -> str:
        applied = await lifecycle.apply_budget(
            Owner.parse(claimed.item),
            actor=job.created_by,
            request_id=None,
            reason=f"tier {tier} budget changed",
        )
        return applied.status

    return apply
