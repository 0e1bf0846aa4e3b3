"""The keys function: create, rotate, revoke, read and reveal keys. Thin: the service decides."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from shared.access.principals import Principal, PrincipalKind, Scope
from shared.access.rules import (
    KeyReader,
    KeyWriter,
    RateLimitedAction,
    RateLimitedKeyWriter,
    enforce_rate_limit,
)
from shared.errors import Forbidden, NotFound
from shared.keys.repository import KeyRecord
from shared.keys.schemas import (
    CreateKeyRequest,
    CurrentKeyResponse,
    KeyHistory,
    KeyInfo,
    KeyIssuedResponse,
    OperationInfo,
    Reason,
    RotateKeyRequest,
    SystemName,
    UserId,
)
from shared.keys.service import KeyLifecycleService, Owner
from shared.observability import current_request_id
from shared.runtime import Runtime
from shared.usage.layers import NOT_REQUESTED, BudgetLayerReader
from shared.web.deps import IdempotencyKey, RuntimeDep
from shared.web.openapi import answers

router = APIRouter(prefix="/api/keys", tags=["keys"])


def _may_see(caller: Principal, owner: str) -> bool:
    """Users see their own keys; services with the rule's scope and admins see all."""
    if caller.kind is PrincipalKind.USER and not caller.is_admin:
        return owner == Owner.user(caller.id).key
    if owner.startswith("system:") and not caller.is_admin:
        # A system key is readable by the service it was made for (token named after it).
        return caller.name == Owner.parse(owner).name or caller.has_scope(Scope.ADMIN)
    return True


def _visible(caller: Principal, key: KeyRecord) -> KeyRecord:
    if not _may_see(caller, key.owner):
        raise NotFound("no key has this id", code="key_not_found")  # do not confirm it exists
    return key


async def _reveal_allowed(runtime: Runtime, caller: Principal) -> None:
    # The scope itself, explicitly: being an admin is not enough to read key material.
    if caller.kind is not PrincipalKind.SERVICE or Scope.KEYS_REVEAL not in caller.scopes:
        raise Forbidden(
            "only a service credential with the keys:reveal scope reads key material",
            code="reveal_not_allowed",
        )
    await enforce_rate_limit(runtime, caller, RateLimitedAction.KEY_REVEAL)


BudgetLayersWanted = Annotated[
    bool,
    Query(
        description="Read the key's budget layers from OpenRouter (one call, at most "
        "OPENROUTER_TIMEOUT_S). false: skip it (budget_layers_error not_requested), as a "
        "caller that only wants the key (a client's reveal) does.",
    ),
]


async def _current(
    runtime: Runtime, caller: Principal, owner: Owner, reveal: bool, budget_layers: bool
) -> CurrentKeyResponse:
    if not _may_see(caller, owner.key):
        raise NotFound(f"{owner.key} has no current key", code="no_current_key")
    service = KeyLifecycleService(runtime)
    owned = await service.describe(owner)
    secret = None
    if reveal:
        await _reveal_allowed(runtime, caller)
        secret = await service.reveal(
            owned.current, actor=caller.actor, request_id=current_request_id.get()
        )
    layers = NOT_REQUESTED
    if budget_layers:
        layers = await BudgetLayerReader(runtime).of_key(owned.current, secret=secret)
    return CurrentKeyResponse.of(
        owned, secret=secret, grace_s=runtime.settings.rotation_grace_seconds, layers=layers
    )


@router.post(
    "/create", response_model=KeyIssuedResponse, status_code=201, responses=answers(409, 502)
)
async def create_key(
    body: CreateKeyRequest,
    caller: RateLimitedKeyWriter,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKey = None,
) -> KeyIssuedResponse:
    """Create the key of a user (or a named system key), limited to what is left this month."""
    issued = await KeyLifecycleService(runtime).create_key(
        body.owner,
        actor=caller.actor,
        tier=body.tier,
        rotation_policy=body.rotation_policy,
        may_change_tier=caller.is_admin or Scope.USERS_WRITE in caller.scopes,
        idempotency_key=idempotency_key,
        request_id=current_request_id.get(),
    )
    return KeyIssuedResponse.of(issued)


@router.post("/rotate", response_model=KeyIssuedResponse, responses=answers(404, 409, 502))
async def rotate_key(
    body: RotateKeyRequest,
    caller: RateLimitedKeyWriter,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKey = None,
) -> KeyIssuedResponse:
    """Replace the owner's current key; the old one works for grace_seconds, then is deleted."""
    issued = await KeyLifecycleService(runtime).rotate_key(
        body.owner,
        actor=caller.actor,
        grace_seconds=body.grace_seconds,
        reason=body.reason,
        idempotency_key=idempotency_key,
        request_id=current_request_id.get(),
    )
    return KeyIssuedResponse.of(issued)


# 429: a reveal is rate-limited (per credential), a plain read is not.
@router.get("/user/{user_id}", response_model=CurrentKeyResponse, responses=answers(429))
async def user_key(
    user_id: UserId,
    caller: KeyReader,
    runtime: RuntimeDep,
    reveal: bool = False,
    budget_layers: BudgetLayersWanted = True,
) -> CurrentKeyResponse:
    """The user's current key: metadata, what OpenRouter enforces on it now (budget_layers,
    blocked_by), and the secret for a keys:reveal service (audited)."""
    return await _current(runtime, caller, Owner.user(user_id), reveal, budget_layers)


@router.get("/user/{user_id}/history", response_model=KeyHistory)
async def user_key_history(user_id: UserId, caller: KeyReader, runtime: RuntimeDep) -> KeyHistory:
    """Every key the user has had, newest first, with its state and dates."""
    owner = Owner.user(user_id)
    if not _may_see(caller, owner.key):
        return KeyHistory(data=[])
    keys = await KeyLifecycleService(runtime).history(owner)
    return KeyHistory(data=[KeyInfo.of(k) for k in keys])


@router.get("/system/{name}", response_model=CurrentKeyResponse, responses=answers(429))
async def system_key(
    name: SystemName,
    caller: KeyReader,
    runtime: RuntimeDep,
    reveal: bool = False,
    budget_layers: BudgetLayersWanted = True,
) -> CurrentKeyResponse:
    """A system key, for the service it belongs to (a token of the same name) or admins."""
    return await _current(runtime, caller, Owner.system(name), reveal, budget_layers)


@router.get("/operations/{operation_id}", response_model=OperationInfo)
async def key_operation(
    operation_id: UUID, caller: KeyReader, runtime: RuntimeDep
) -> OperationInfo:
    """Where a create or rotation stands: for a caller whose response was lost."""
    operation = await KeyLifecycleService(runtime).get_operation(operation_id)
    if not _may_see(caller, operation.owner):
        raise NotFound("no key operation has this id", code="operation_not_found")
    return OperationInfo.of(operation)


@router.get("/{key_id}", response_model=KeyInfo)
async def get_key(key_id: UUID, caller: KeyReader, runtime: RuntimeDep) -> KeyInfo:
    """One key's metadata."""
    return KeyInfo.of(_visible(caller, await KeyLifecycleService(runtime).get_key(key_id)))


@router.delete("/{key_id}", response_model=KeyInfo, responses=answers(409, 502))
async def revoke_key(
    key_id: UUID,
    caller: KeyWriter,
    runtime: RuntimeDep,
    reason: Annotated[Reason | None, Query()] = None,
) -> KeyInfo:
    """Delete the key at OpenRouter and mark it revoked; repeating it changes nothing."""
    revoked = await KeyLifecycleService(runtime).revoke_key(
        key_id, actor=caller.actor, reason=reason, request_id=current_request_id.get()
    )
    return KeyInfo.of(revoked)


@router.post("/{key_id}/disable", response_model=KeyInfo, responses=answers(409, 502))
async def disable_key(key_id: UUID, caller: KeyWriter, runtime: RuntimeDep) -> KeyInfo:
    """Block the key at OpenRouter without deleting it (reversible)."""
    key = await KeyLifecycleService(runtime).set_disabled(
        key_id,
        disabled=True,
        actor=caller.actor,
        reason=None,
        request_id=current_request_id.get(),
    )
    return KeyInfo.of(key)


@router.post("/{key_id}/enable", response_model=KeyInfo, responses=answers(409, 502))
async def enable_key(key_id: UUID, caller: KeyWriter, runtime: RuntimeDep) -> KeyInfo:
    """Unblock a disabled key."""
    key = await KeyLifecycleService(runtime).set_disabled(
        key_id,
        disabled=False,
        actor=caller.actor,
        reason=None,
        request_id=current_request_id.get(),
    )
    return KeyInfo.of(key)
