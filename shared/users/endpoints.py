"""Users, for the subscription system (users:write) and admins: create or update a user,
move a user to a tier. Served by the admin function."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response

from shared.access.rules import UsersWriter
from shared.keys.schemas import UserId
from shared.observability import current_request_id
from shared.users.schemas import (
    BudgetIncreaseGranted,
    BudgetIncreaseInfo,
    BudgetIncreaseList,
    BudgetIncreaseRequest,
    UserInfo,
    UserPut,
    UserTierChange,
    UserTierChanged,
)
from shared.users.service import BudgetIncreaseService, UsersService
from shared.web.deps import IdempotencyKey, RuntimeDep
from shared.web.openapi import answers

router = APIRouter(prefix="/api/users", tags=["users"])


@router.put(
    "/{user_id}",
    response_model=UserInfo,
    responses={
        201: {"description": "The user was created.", "model": UserInfo},
        **answers(409, 502),
    },
)
async def put_user(
    user_id: UserId, body: UserPut, caller: UsersWriter, runtime: RuntimeDep, response: Response
) -> UserInfo:
    """Create the user (201) or update their tier and rotation policy (200), before or after
    their first key; a tier change reaches their key's limit as PUT .../tier does. Audited."""
    written = await UsersService(runtime).put(
        user_id,
        tier=body.tier,
        rotation_policy=body.rotation_policy,
        actor=caller.actor,
        reason=body.reason,
        request_id=current_request_id.get(),
    )
    if written.change.created:
        response.status_code = 201
    return UserInfo.of(written)


@router.put("/{user_id}/tier", response_model=UserTierChanged, responses=answers(409, 502))
async def change_user_tier(
    user_id: UserId, body: UserTierChange, caller: UsersWriter, runtime: RuntimeDep
) -> UserTierChanged:
    """Move an existing user to a tier (the subscription system calls this). Takes effect at
    once on their budget and their key's OpenRouter limit; idempotent; audited."""
    written = await UsersService(runtime).put(
        user_id,
        tier=body.tier,
        rotation_policy=None,
        actor=caller.actor,
        reason=body.reason,
        request_id=current_request_id.get(),
        must_exist=True,
    )
    return UserTierChanged.of(written)


@router.post(
    "/{user_id}/budget-increases",
    response_model=BudgetIncreaseGranted,
    status_code=201,
    responses=answers(404, 409, 502),
)
async def grant_budget_increase(
    user_id: UserId,
    body: BudgetIncreaseRequest,
    caller: UsersWriter,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKey = None,
) -> BudgetIncreaseGranted:
    """Grant the user extra budget for this month or until `ends_at`, with a reason: a ledger
    entry (never an edit), their key's limit follows at once, a rotation keeps it, and it
    lapses at its end. Audited. A 503 (the key's limit could not be applied then) has still
    recorded the grant, which the advance job applies: retry it with the same
    Idempotency-Key, which grants nothing twice."""
    granted = await BudgetIncreaseService(runtime).grant(
        user_id,
        body.amount_usd,
        ends_at=body.ends_at,
        reason=body.reason,
        actor=caller.actor,
        request_id=current_request_id.get(),
        idempotency_key=idempotency_key,
    )
    return BudgetIncreaseGranted.of(granted, now=datetime.now(UTC))


@router.get(
    "/{user_id}/budget-increases", response_model=BudgetIncreaseList, responses=answers(404)
)
async def list_budget_increases(
    user_id: UserId, _: UsersWriter, runtime: RuntimeDep
) -> BudgetIncreaseList:
    """The user's grants, newest first, lapsed ones included."""
    now = datetime.now(UTC)
    increases = await BudgetIncreaseService(runtime).of_user(user_id)
    return BudgetIncreaseList(data=[BudgetIncreaseInfo.of(i, now=now) for i in increases])
