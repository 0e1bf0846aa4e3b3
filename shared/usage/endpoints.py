"""The usage function: log usage, read a user's books."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from shared.access.principals import Principal, PrincipalKind
from shared.access.rules import UsageReader, UsageWriter
from shared.errors import BadRequest, NotFound, ValidationFailed
from shared.keys.domain import Owner
from shared.keys.schemas import UserId
from shared.usage.layers import BudgetLayerReader
from shared.usage.schemas import (
    MAX_BATCH_EVENTS,
    CurrentUsage,
    MonthlyUsage,
    UsageBatch,
    UsageLogResponse,
)
from shared.usage.service import UsageService
from shared.web.deps import RuntimeDep

router = APIRouter(prefix="/api/usage", tags=["usage"])

_EXAMPLE_EVENT = {
    "user_id": "u1",
    "generation_id": "gen-123",
    "model": "openai/gpt-4o",
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "cost_usd": "0.004",
    "agent_name": "compliance",
    "endpoint": "/chat",
    "duration_ms": 812,
}
_LOG_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f'One event, or {{"events": [...]}} with at most {MAX_BATCH_EVENTS} '
        "events. cost_usd may be a string or a JSON number; either is read as an exact decimal.",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/UsageEvent"},
                        {"$ref": "#/components/schemas/UsageEventBatch"},
                    ]
                },
                "examples": {"event": {"value": _EXAMPLE_EVENT}},
            }
        },
    }
}


async def _decimal_json_body(request: Request) -> dict[str, Any]:
    """The body as JSON with every number that has a fraction read as Decimal: a cost sent
    as 9058.378958212153 stays exactly that, never a binary float first."""
    raw = await request.body()
    try:
        body = json.loads(raw, parse_float=Decimal)
    except (ValueError, RecursionError) as error:
        raise BadRequest("the request body is not valid JSON", code="malformed_json") from error
    if not isinstance(body, dict):
        raise ValidationFailed(
            'the body is one event (an object) or {"events": [...]}',
            code="usage_batch_invalid",
        )
    return body


def _may_read(caller: Principal, user_id: str) -> None:
    if caller.kind is PrincipalKind.USER and not caller.is_admin and caller.id != user_id:
        raise NotFound(f"no user {user_id}", code="user_not_found")


@router.post("/log", response_model=UsageLogResponse, openapi_extra=_LOG_BODY_DOC)
async def log_usage(
    caller: UsageWriter,
    runtime: RuntimeDep,
    body: Annotated[dict[str, Any], Depends(_decimal_json_body)],
) -> UsageLogResponse:
    """Record usage: an event seen before (same generation_id) is acknowledged, not counted."""
    if "events" in body:
        try:
            batch = UsageBatch.model_validate(body)
        except ValidationError as error:
            raise ValidationFailed(
                f'a batch is {{"events": [...]}} with 1 to {MAX_BATCH_EVENTS} events',
                code="usage_batch_invalid",
                details=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in error.errors()],
            ) from error
        events: list[dict[str, Any]] = batch.events
    else:
        events = [body]
    result = await UsageService(runtime).log(events, actor=caller.actor)
    if "events" not in body and result.count("rejected"):
        raise ValidationFailed(
            result.outcomes[0].reason or "the event was rejected", code="usage_event_rejected"
        )
    return UsageLogResponse(
        stored=result.count("stored"),
        duplicates=result.count("duplicate"),
        rejected=result.count("rejected"),
        events=result.outcomes,
        users=result.users,
    )


@router.get("/{user_id}", response_model=CurrentUsage)
async def current_usage(user_id: UserId, caller: UsageReader, runtime: RuntimeDep) -> CurrentUsage:
    """This month: spent, limit, remaining, percent, by model and agent, and a forecast; and
    what OpenRouter enforces on the user's current key now (budget_layers, blocked_by)."""
    _may_read(caller, user_id)
    # OpenRouter is asked while the books are read; it never fails the answer.
    reading = asyncio.ensure_future(BudgetLayerReader(runtime).of_owner(Owner.user(user_id)))
    try:
        usage = await UsageService(runtime).current(user_id)
    except BaseException:
        reading.cancel()
        raise
    layers = await reading
    return usage.model_copy(
        update={
            "budget_layers": layers.layers,
            "blocked_by": layers.blocked_by,
            "budget_layers_error": layers.error,
        }
    )


@router.get("/{user_id}/monthly", response_model=MonthlyUsage)
async def monthly_usage(
    user_id: UserId,
    caller: UsageReader,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=120)] = 12,
    before: Annotated[date | None, Query(description="Page: months before this one.")] = None,
) -> MonthlyUsage:
    """One row per month, newest first, with totals and breakdowns."""
    _may_read(caller, user_id)
    return await UsageService(runtime).monthly(user_id, limit=limit, before=before)
