"""The emulator against OpenRouter's official Python SDK (`openrouter` 1.3.x, a dev dependency).

The SDK's response models are strict pydantic models: a field they require and an answer lacks
is a ResponseValidationError for every SDK user. So every emulator answer the SDK has a model
for is validated under it, the documented field lists (documented_fields.py) are checked
against the same models, and the SDK's own client is run against the emulator. Nothing here
reaches the real OpenRouter: the SDK talks to the emulator through an httpx transport.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openrouter import OpenRouter, components, errors, operations
from pydantic import BaseModel

from shared.openrouter.emulator import Emulator
from tests.openrouter.conftest import READINESS_DELAY_S, ManualClock
from tests.openrouter.documented_fields import (
    ACTIVITY_ITEM,
    CREDITS,
    CURRENT_KEY,
    FREE_MODEL_DAILY_REQUESTS,
    GENERATION,
    KEY_BUDGET,
    KEY_OBJECT,
    SDK_MODELS,
    sdk_fields,
    shape_errors,
)


@pytest.fixture(autouse=True)
def _sdk_deprecations_are_not_ours() -> Iterator[None]:
    # The SDK's models mark is_provisioning_key and rate_limit deprecated, and warn on reading.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.fixture
async def raw(timed_emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP to the emulator with the management key, bypassing every client."""
    async with httpx.AsyncClient(
        transport=timed_emulator.transport(),
        base_url="http://emulator/api/v1",
        headers={"Authorization": f"Bearer {timed_emulator.management_key}"},
    ) as client:
        yield client


def _invented(data: dict[str, Any], model: type[BaseModel]) -> set[str]:
    """Fields the emulator sends that the SDK's model does not know: made up, not OpenRouter's."""
    return set(data) - set(sdk_fields(model))


def _validated(model: type[BaseModel], response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return model.model_validate_json(response.content)


@pytest.mark.parametrize("shape", sorted(SDK_MODELS))
def test_the_documented_fields_are_exactly_the_sdk_models_fields(shape: str) -> None:
    """GIVEN a documented response shape and the SDK model that reads it
    WHEN their fields are compared
    THEN every field the SDK requires is documented (so shape_errors fails an emulator that
    lacks it), and every documented field is one the SDK knows."""
    documented, model, optional = SDK_MODELS[shape]
    fields = sdk_fields(model)
    required = {name for name, needed in fields.items() if needed}

    assert sorted(required - set(documented)) == [], "required by the SDK, not documented"
    assert sorted(set(documented) - set(fields)) == [], "documented, unknown to the SDK"
    assert sorted(set(fields) - set(documented) - optional) == [], "optional, not accounted for"


async def test_every_emulator_answer_validates_under_the_sdk_models(
    timed_emulator: Emulator, raw: httpx.AsyncClient, clock: ManualClock
) -> None:
    """GIVEN a key with a monthly limit and an external user, charged on two days
    WHEN every endpoint the SDK has a model for is called
    THEN each answer validates under that model, has every documented field, and carries no
    field the SDK does not know."""
    created = await raw.post(
        "/keys",
        json={
            "name": "conformance",
            "limit": 10,
            "limit_reset": "monthly",
            "expires_at": "2030-01-01T00:00:00Z",
            "external": {"user": "user-42"},
        },
    )
    create = _validated(operations.CreateKeysResponse, created)
    key_hash, secret = create.data.hash, create.key
    timed_emulator.charge(secret, Decimal("1.5"), generation_id="gen-day-1", prompt_tokens=7)
    clock.advance(days=1)
    timed_emulator.charge(secret, Decimal("0.25"), generation_id="gen-day-2", byok=True)
    clock.advance(days=1)
    user_headers = {"Authorization": f"Bearer {secret}"}

    answers: list[tuple[type[BaseModel], httpx.Response]] = [
        (operations.CreateKeysResponse, created),
        (operations.ListResponse, await raw.get("/keys")),
        (operations.GetKeyResponse, await raw.get(f"/keys/{key_hash}")),
        (operations.UpdateKeysResponse, await raw.patch(f"/keys/{key_hash}", json={"limit": 9})),
        (operations.GetCurrentKeyResponse, await raw.get("/key")),
        (operations.GetCurrentKeyResponse, await raw.get("/key", headers=user_headers)),
        (operations.GetCreditsResponse, await raw.get("/credits")),
        (components.GenerationResponse, await raw.get("/generation", params={"id": "gen-day-1"})),
        (components.GenerationResponse, await raw.get("/generation", params={"id": "gen-day-2"})),
        (components.ActivityResponse, await raw.get("/activity")),
        (components.ActivityResponse, await raw.get("/activity", params={"group_by": "workspace"})),
        (
            components.ActivityResponse,
            await raw.get("/activity", params={"api_key_hash": key_hash}),
        ),
    ]
    for model, response in answers:
        _validated(model, response)
    answers.append(
        (operations.DeleteKeysResponse, await raw.delete(f"/keys/{key_hash}")),
    )
    assert _validated(operations.DeleteKeysResponse, answers[-1][1]).DELETED is True
    # (the SDK's model defaults `deleted` to its constant, so it would take {} too: check it)
    assert answers[-1][1].json() == {"deleted": True}

    by_model = {model: [r.json() for m, r in answers if m is model] for model, _ in answers}
    key_objects = [
        by_model[operations.CreateKeysResponse][0]["data"],
        *by_model[operations.ListResponse][0]["data"],
        by_model[operations.GetKeyResponse][0]["data"],
        by_model[operations.UpdateKeysResponse][0]["data"],
    ]
    for key_object in key_objects:
        assert shape_errors(key_object, KEY_OBJECT) == []
        assert _invented(key_object, operations.ListData) == set()
    management, user = (body["data"] for body in by_model[operations.GetCurrentKeyResponse])
    for current in (management, user):
        assert shape_errors(current, CURRENT_KEY) == []
        assert _invented(current, operations.GetCurrentKeyData) == set()
        assert shape_errors(current["free_model_daily_requests"], FREE_MODEL_DAILY_REQUESTS) == []
    assert [shape_errors(b, KEY_BUDGET) for b in user["budgets"]] == [[]]
    assert shape_errors(user["effective_budget"], KEY_BUDGET) == []
    credits = by_model[operations.GetCreditsResponse][0]["data"]
    assert shape_errors(credits, CREDITS) == []
    for body in by_model[components.GenerationResponse]:
        assert shape_errors(body["data"], GENERATION) == []
        assert _invented(body["data"], components.GenerationResponseData) == set()
    rows = [row for body in by_model[components.ActivityResponse] for row in body["data"]]
    assert len(rows) == 6  # two days, three ways of asking
    for row in rows:
        assert shape_errors(row, ACTIVITY_ITEM) == []
        assert _invented(row, components.ActivityItem) == set()


async def test_error_answers_validate_under_the_sdk_error_models(
    timed_emulator: Emulator, raw: httpx.AsyncClient
) -> None:
    """GIVEN a generation charged just now (not ready) and a user key
    WHEN the generation is read too early, and /activity is asked with a user key or a bad date
    THEN the 404, 403 and 400 bodies validate under the SDK's error models."""
    key = timed_emulator.add_key(name="errors")
    timed_emulator.charge(key.secret, Decimal(1), generation_id="gen-early")

    early = await raw.get("/generation", params={"id": "gen-early"})
    forbidden = await raw.get("/activity", headers={"Authorization": f"Bearer {key.secret}"})
    bad_date = await raw.get("/activity", params={"date": "2026/11/01"})

    assert early.status_code == 404
    errors.NotFoundResponseErrorData.model_validate_json(early.content)
    assert forbidden.status_code == 403
    errors.ForbiddenResponseErrorData.model_validate_json(forbidden.content)
    assert bad_date.status_code == 400
    errors.BadRequestResponseErrorData.model_validate_json(bad_date.content)


@pytest.fixture
async def sdk(timed_emulator: Emulator) -> AsyncIterator[OpenRouter]:
    """The official SDK's client, on the emulator through an httpx transport."""
    async with httpx.AsyncClient(transport=timed_emulator.transport()) as http:
        yield OpenRouter(
            api_key=timed_emulator.management_key,
            server_url="http://emulator/api/v1",
            async_client=http,
            timeout_ms=5_000,
        )


async def test_the_official_sdk_client_runs_every_call_against_the_emulator(
    timed_emulator: Emulator, sdk: OpenRouter, clock: ManualClock
) -> None:
    """GIVEN the SDK's own client on the emulator
    WHEN it creates a key with an external user, lists, reads, updates and deletes keys, reads
    /key and /credits, and reads a generation and the activity of the key's charges
    THEN every call succeeds (its strict models accept every answer) with the expected values."""
    created = await sdk.api_keys.create_async(
        name="sdk-user",
        limit=5,
        limit_reset="monthly",
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
        external={"user": "user-7"},
    )
    timed_emulator.charge(
        created.key,
        Decimal("0.75"),
        generation_id="gen-sdk",
        model="anthropic/claude-sonnet-4.5",
        provider_name="Anthropic",
        prompt_tokens=100,
        completion_tokens=20,
    )
    clock.advance(days=1)

    listed = await sdk.api_keys.list_async()
    fetched = await sdk.api_keys.get_async(hash=created.data.hash)
    current = await sdk.api_keys.get_current_key_metadata_async()
    credits = await sdk.credits.get_credits_async()
    generation = await sdk.generations.get_generation_async(id="gen-sdk")
    activity = await sdk.analytics.get_user_activity_async(
        request={"api_key_hash": created.data.hash}
    )
    updated = await sdk.api_keys.update_async(hash=created.data.hash, disabled=True)
    deleted = await sdk.api_keys.delete_async(hash=created.data.hash)

    assert created.data.external_user == "user-7"
    assert created.data.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert [k.hash for k in listed.data] == [created.data.hash]
    assert fetched.data.usage_monthly == 0.75
    assert current.data.is_management_key is True
    assert credits.data.total_usage == 0.75
    assert generation.data.external_user == "user-7"
    assert generation.data.total_cost == 0.75
    assert (generation.data.tokens_prompt, generation.data.tokens_completion) == (100, 20)
    [row] = activity.data
    assert (row.date_, row.model, row.usage, row.requests) == (
        "2026-11-26",
        "anthropic/claude-sonnet-4.5",
        0.75,
        1,
    )
    assert updated.data.disabled is True
    assert deleted.DELETED is True


async def test_the_sdk_sends_an_expiry_with_an_offset_as_given_which_openrouter_refuses(
    sdk: OpenRouter,
) -> None:
    """GIVEN an expiry of 12:00 at UTC+02:00
    WHEN the SDK creates a key with it
    THEN the SDK sends the offset unchanged and the emulator, like OpenRouter, refuses anything
    but UTC (400): the conversion our own client does (test_client_wire.py) is needed."""
    with pytest.raises(errors.BadRequestResponseError):
        await sdk.api_keys.create_async(
            name="offset",
            expires_at=datetime(2030, 1, 2, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        )


async def test_a_user_key_reads_its_own_budgets_through_the_sdk(
    timed_emulator: Emulator, sdk: OpenRouter, clock: ManualClock
) -> None:
    """GIVEN a user key with a $10 monthly limit that spent $4
    WHEN the SDK reads GET /key with that key
    THEN its budgets hold the key's own limit layer, which is also the effective budget, and
    it resets at the start of next month (UTC)."""
    key = timed_emulator.add_key(name="budgeted", limit=Decimal(10), limit_reset="monthly")
    timed_emulator.charge(key.secret, Decimal(4))
    clock.advance(seconds=READINESS_DELAY_S)
    async with httpx.AsyncClient(transport=timed_emulator.transport()) as http:
        as_user = OpenRouter(
            api_key=key.secret, server_url="http://emulator/api/v1", async_client=http
        )
        current = await as_user.api_keys.get_current_key_metadata_async()

    [budget] = current.data.budgets
    assert (budget.scope, budget.limit_usd, budget.spend_usd, budget.remaining_usd) == (
        "key_limit",
        10,
        4,
        6,
    )
    assert budget.reset_interval == "monthly"
    assert budget.resets_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert current.data.effective_budget == budget
    assert current.data.workspace_id == key.workspace_id


def test_the_sdk_stays_out_of_the_shipped_code() -> None:
    """GIVEN the code that ships in functions (shared/ and functions/)
    WHEN its sources are read
    THEN none imports the SDK: it is a dev dependency, ~300 ms of cold start (openrouter-api.md
    §5), and absent from the functions' packages."""
    root = Path(__file__).resolve().parents[2]
    importing = [
        str(path.relative_to(root))
        for folder in ("shared", "functions")
        for path in (root / folder).rglob("*.py")
        if re.search(r"^\s*(import openrouter\b|from openrouter\b)", path.read_text(), re.M)
    ]
    assert importing == []


async def test_the_sdk_chats_with_a_user_key_and_reads_the_emulators_refusals(
    timed_emulator: Emulator,
) -> None:
    """GIVEN a user key with a $0.001 limit, and a disabled one
    WHEN the SDK's chat client sends completions with them until the limit is spent
    THEN the first answers validate as ChatResult with a generation id and usage cost, what is
    billed is that cost, and the refusals are the SDK's errors: 402 (the worst case is more
    than is left), 403 (nothing left) and 401 (disabled)."""
    key = timed_emulator.add_key(name="chatty", limit=Decimal("0.001"), limit_reset="monthly")
    gone = timed_emulator.add_key(name="gone")
    gone.disabled = True
    hello = [components.ChatUserMessage(role="user", content="hello")]

    async with httpx.AsyncClient(transport=timed_emulator.transport()) as http:

        def as_user(secret: str) -> OpenRouter:
            return OpenRouter(
                api_key=secret, server_url="http://emulator/api/v1", async_client=http
            )

        chat = as_user(key.secret).chat
        answer = await chat.send_async(model="openai/gpt-4o-mini", messages=hello)
        with pytest.raises(errors.PaymentRequiredResponseError):
            await chat.send_async(model="openai/gpt-4o-mini", messages=hello, max_tokens=500)
        first = timed_emulator.generation(answer.id)
        assert first is not None
        timed_emulator.charge(key.secret, Decimal("0.001") - first.cost)  # the rest of it
        with pytest.raises(errors.ForbiddenResponseError) as spent:
            await chat.send_async(model="openai/gpt-4o-mini", messages=hello)
        with pytest.raises(errors.UnauthorizedResponseError):
            await as_user(gone.secret).chat.send_async(model="openai/gpt-4o-mini", messages=hello)

    assert isinstance(answer, components.ChatResult)
    assert answer.id.startswith("gen-")
    assert answer.usage is not None and answer.usage.cost == float(first.cost)
    assert first.cost == Decimal("0.00001") * answer.usage.total_tokens > 0
    assert "Key limit exceeded" in str(spent.value)
