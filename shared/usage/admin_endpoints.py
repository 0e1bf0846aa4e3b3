"""Admin routes of budgets: reset usage, tier amounts, a user's tier."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from shared.access.rules import AdminCaller
from shared.keys.schemas import TierName
from shared.observability import current_request_id
from shared.usage.budgets import BudgetService
from shared.usage.schemas import (
    DailyCappedList,
    ResetUsageRequest,
    ResetUsageResponse,
    TierBudgetUpdate,
    TierInfo,
    TierList,
    TierPolicyInfo,
    TierPolicyList,
    TierPolicyUpdate,
)
from shared.usage.tier_policies import TierPolicyService
from shared.web.deps import RuntimeDep
from shared.web.openapi import answers

router = APIRouter(tags=["budgets (admin)"])


@router.post(
    "/api/admin/reset-usage", response_model=ResetUsageResponse, responses=answers(404, 409, 502)
)
async def reset_usage(
    body: ResetUsageRequest, caller: AdminCaller, runtime: RuntimeDep
) -> ResetUsageResponse:
    """Give a user, a tier or everyone their whole budget back for this month.

    Nothing is deleted: each reset is an adjustment in the ledger, and the key's OpenRouter
    limit is raised accordingly. Repeating it is harmless.
    """
    outcomes = await BudgetService(runtime).reset(
        user_id=body.user_id,
        tier=body.tier,
        everyone=body.all,
        reason=body.reason,
        actor=caller.actor,
        request_id=current_request_id.get(),
    )
    return ResetUsageResponse.of(outcomes)


@router.get("/api/admin/tiers", response_model=TierList)
async def list_tiers(_: AdminCaller, runtime: RuntimeDep) -> TierList:
    """The subscription tiers and their monthly budgets."""
    return TierList.of(await BudgetService(runtime).tiers())


@router.put("/api/admin/tiers/{tier}", response_model=TierInfo)
async def set_tier_budget(
    tier: TierName, body: TierBudgetUpdate, caller: AdminCaller, runtime: RuntimeDep
) -> TierInfo:
    """Change a tier's monthly budget (null: unlimited), audited. Keys follow at their next
    budget application (tier change, reset, rotation, or the monthly job)."""
    _, budget, description = await BudgetService(runtime).set_tier_budget(
        tier,
        body.monthly_budget_usd,
        actor=caller.actor,
        reason=body.reason,
        request_id=current_request_id.get(),
    )
    return TierInfo(tier=tier, monthly_budget_usd=budget, description=description)


@router.get("/api/admin/tiers/policies", response_model=TierPolicyList)
async def list_tier_policies(_: AdminCaller, runtime: RuntimeDep) -> TierPolicyList:
    """Every tier's policy at OpenRouter: daily cap, allowed models and providers."""
    policies = await TierPolicyService(runtime).policies()
    return TierPolicyList(data=[TierPolicyInfo.of(p) for p in policies])


@router.put(
    "/api/admin/tiers/{tier}/policy", response_model=TierPolicyInfo, responses=answers(404, 502)
)
async def set_tier_policy(
    tier: TierName, body: TierPolicyUpdate, caller: AdminCaller, runtime: RuntimeDep
) -> TierPolicyInfo:
    """Set a tier's whole policy (a field left out or null: unrestricted), enforced by
    OpenRouter through the tier's guardrail; a new guardrail reaches the tier's keys through a
    job on the work queue, a changed one at once. Audited."""
    policy = await TierPolicyService(runtime).set_policy(
        tier,
        daily_cap_usd=body.daily_cap_usd,
        allowed_models=body.allowed_models,
        allowed_providers=body.allowed_providers,
        actor=caller.actor,
        reason=body.reason,
        request_id=current_request_id.get(),
    )
    return TierPolicyInfo.of(policy)


@router.get("/api/admin/usage/daily-capped", response_model=DailyCappedList)
async def daily_capped_users(
    _: AdminCaller,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DailyCappedList:
    """The users their tier's daily cap holds today (UTC): what they reported since midnight is
    at or over the cap. Highest spend first; each says when the cap resets (next UTC midnight)."""
    resets_at, rows = await TierPolicyService(runtime).daily_capped(limit=limit)
    return DailyCappedList.of(resets_at, rows)
