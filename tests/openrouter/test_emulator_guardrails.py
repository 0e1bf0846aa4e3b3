"""Guardrails in the emulator as OpenRouter documents them (its Guardrails and Spend Controls
guides, the official SDK's guardrails.py and components), and our client for them.

A guardrail assigned to a key restricts its requests: a budget per key over a UTC window, a
model allowlist, a provider allowlist. A key holds one guardrail at most; the workspace default
guardrail governs every key of its workspace once configured. GET /key shows each budget layer.
"""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openrouter import OpenRouter, components, errors, operations
from pydantic import BaseModel, SecretStr

from shared.openrouter.client import PAGE_SIZE, OpenRouterClient
from shared.openrouter.emulator import (
    API_PREFIX,
    DEFAULT_WORKSPACE_ID,
    NO_ENDPOINTS_MESSAGE,
    Emulator,
    EmulatorApiError,
    Fault,
)
from shared.openrouter.errors import (
    OpenRouterBadRequest,
    OpenRouterNotFound,
    OpenRouterOutcomeUnknown,
)
from shared.runtime import EMULATOR_BASE_URL
from tests.conftest import RecordingSleep
from tests.openrouter.conftest import ManualClock
from tests.openrouter.documented_fields import sdk_fields

FREE_MODEL = "openai/gpt-4o-mini"
OTHER_MODEL = "anthropic/claude-sonnet-4.5"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def _sdk_deprecations_are_not_ours() -> Iterator[None]:
    # The SDK's Guardrail model marks enforce_zdr deprecated, and warns on reading it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.fixture
async def management(timed_emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP to the emulator with the management key."""
    async with httpx.AsyncClient(
        transport=timed_emulator.transport(),
        base_url=f"http://emulator{API_PREFIX}",
        headers={"Authorization": f"Bearer {timed_emulator.management_key}"},
    ) as client:
        yield client


async def _guardrail(management: httpx.AsyncClient, **fields: Any) -> str:
    created = await management.post("/guardrails", json=fields)
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]  # type: ignore[no-any-return]


async def _assign(management: httpx.AsyncClient, guardrail_id: str, *key_hashes: str) -> int:
    assigned = await management.post(
        f"/guardrails/{guardrail_id}/assignments/keys", json={"key_hashes": list(key_hashes)}
    )
    assert assigned.status_code == 200, assigned.text
    return assigned.json()["assigned_count"]  # type: ignore[no-any-return]


async def _chat(emulator: Emulator, secret: str, model: str, **extra: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url=f"http://emulator{API_PREFIX}"
    ) as client:
        return await client.post(
            "/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": model, "messages": HELLO, **extra},
        )


async def _current(emulator: Emulator, secret: str) -> dict[str, Any]:
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url=f"http://emulator{API_PREFIX}"
    ) as client:
        response = await client.get("/key", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def _invented(data: dict[str, Any], model: type[BaseModel]) -> set[str]:
    return set(data) - set(sdk_fields(model))


async def test_a_free_tier_guardrail_lets_only_its_model_through(
    timed_emulator: Emulator, management: httpx.AsyncClient
) -> None:
    """GIVEN a key assigned a guardrail whose allowed_models is ["openai/gpt-4o-mini"]
    WHEN it sends a chat completion with another model, then with the allowed one
    THEN the first is refused with 403 (OpenRouter: allowlist restrictions produce 403s) naming
    the model and the guardrail, and bills nothing; the second is answered and billed. The
    Python-side charge and POST /_emulator/charge refuse the other model the same way."""
    key = timed_emulator.add_key(name="free-user")
    free = await _guardrail(management, name="free tier", allowed_models=[FREE_MODEL])
    assert await _assign(management, free, key.hash) == 1

    refused = await _chat(timed_emulator, key.secret, OTHER_MODEL)
    answered = await _chat(timed_emulator, key.secret, FREE_MODEL)

    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == 403
    assert error["message"].startswith(f"Model {OTHER_MODEL} is not allowed by your guardrail")
    assert error["metadata"] == {
        "error_type": "permission_denied",
        "guardrail_id": free,
        "guardrail_scope": "api-key",
    }
    errors.ForbiddenResponseErrorData.model_validate_json(refused.content)
    assert answered.status_code == 200, answered.text
    [generation] = timed_emulator.generations(key.hash)
    assert (generation.id, generation.model) == (answered.json()["id"], FREE_MODEL)

    with pytest.raises(EmulatorApiError) as charged:
        timed_emulator.charge(key.secret, Decimal("0.01"), model=OTHER_MODEL)
    assert charged.value.status == 403
    async with httpx.AsyncClient(transport=timed_emulator.transport()) as http:
        via_route = await http.post(
            "http://emulator/_emulator/charge",
            headers={"Authorization": f"Bearer {key.secret}"},
            json={"cost": 0.01, "model": OTHER_MODEL},
        )
    assert via_route.status_code == 403
    assert len(timed_emulator.generations(key.hash)) == 1


async def test_a_provider_allowlist_routes_to_an_allowed_provider_or_finds_no_endpoint(
    timed_emulator: Emulator, management: httpx.AsyncClient
) -> None:
    """GIVEN a key whose guardrail allows only the provider "anthropic"
    WHEN it sends a chat completion without provider preferences (the default provider,
    OpenAI), one preferring anthropic, and one limited to openai
    THEN the default and openai-only ones find no endpoint: OpenRouter's 404 verbatim; the one
    preferring anthropic is served there (the generation says so)."""
    key = timed_emulator.add_key(name="anthropic-only")
    only = await _guardrail(management, name="anthropic only", allowed_providers=["anthropic"])
    await _assign(management, only, key.hash)

    default = await _chat(timed_emulator, key.secret, OTHER_MODEL)
    preferring = await _chat(
        timed_emulator, key.secret, OTHER_MODEL, provider={"order": ["anthropic"]}
    )
    openai_only = await _chat(
        timed_emulator, key.secret, OTHER_MODEL, provider={"only": ["OpenAI"]}
    )

    for refused in (default, openai_only):
        assert refused.status_code == 404
        assert refused.json() == {"error": {"code": 404, "message": NO_ENDPOINTS_MESSAGE}}
    assert preferring.status_code == 200, preferring.text
    assert preferring.json()["provider"] == "anthropic"
    [generation] = timed_emulator.generations(key.hash)
    assert generation.provider_name == "anthropic"


async def test_a_daily_guardrail_budget_blocks_before_the_monthly_key_limit_and_resets(
    timed_emulator: Emulator, management: httpx.AsyncClient, clock: ManualClock
) -> None:
    """GIVEN a key with a $10 monthly limit, assigned a guardrail of $1 a day
    WHEN it spends $0.60, then asks for a worst case of $0.50, then spends $0.40, then asks
    again; and again the next UTC day
    THEN the $0.50 worst case is refused with 402 ($0.40 left), the request after the $1 with
    403 naming the daily guardrail budget (limit_source openrouter_guardrail_budget, when it
    resets) while the key's own monthly limit still has $9 left; the next day it passes."""
    key = timed_emulator.add_key(name="daily", limit=Decimal(10), limit_reset="monthly")
    daily = await _guardrail(management, name="daily $1", limit_usd=1, reset_interval="daily")
    await _assign(management, daily, key.hash)

    timed_emulator.charge(key.secret, Decimal("0.60"))
    with pytest.raises(EmulatorApiError) as too_big:
        timed_emulator.charge(key.secret, Decimal("0.10"), max_cost=Decimal("0.50"))
    timed_emulator.charge(key.secret, Decimal("0.40"))
    with pytest.raises(EmulatorApiError) as spent:
        timed_emulator.charge(key.secret, Decimal("0.01"))
    chat = await _chat(timed_emulator, key.secret, FREE_MODEL)
    fetched = await management.get(f"/keys/{key.hash}")

    assert too_big.value.status == 402
    assert too_big.value.metadata is not None
    assert too_big.value.metadata["limit_source"] == "openrouter_guardrail_budget"
    assert spent.value.status == 403
    assert spent.value.message.startswith("Guardrail daily budget of $1.00 exceeded")
    assert spent.value.metadata == {
        "error_type": "permission_denied",
        "limit_source": "openrouter_guardrail_budget",
        "scope": "api_key",
        "guardrail_id": daily,
        "limit_usd": 1.0,
        "spend_usd": 1.0,
        "resets_at": "2026-11-27T00:00:00Z",
    }
    assert chat.status_code == 403
    assert chat.json()["error"]["metadata"]["limit_source"] == "openrouter_guardrail_budget"
    assert fetched.json()["data"]["limit_remaining"] == 9.0

    clock.advance(days=1)
    timed_emulator.charge(key.secret, Decimal("0.50"))
    assert (await _chat(timed_emulator, key.secret, FREE_MODEL)).status_code == 200


async def test_requests_in_flight_count_against_a_guardrail_budget(
    timed_emulator: Emulator, management: httpx.AsyncClient
) -> None:
    """GIVEN a key without a limit, assigned a guardrail of $1 a day, with a $0.80 request in
    flight (not billed yet)
    WHEN another request of $0.30 is asked
    THEN it is refused with 402: the budget has only $0.20 left once the first is counted."""
    key = timed_emulator.add_key(name="in-flight")
    daily = await _guardrail(management, name="daily", limit_usd=1, reset_interval="daily")
    await _assign(management, daily, key.hash)
    timed_emulator.billing_delay_s = 0.05

    async with httpx.AsyncClient(transport=timed_emulator.transport()) as http:

        async def charge(cost: float) -> httpx.Response:
            return await http.post(
                "http://emulator/_emulator/charge",
                headers={"Authorization": f"Bearer {key.secret}"},
                json={"cost": cost},
            )

        first = asyncio.create_task(charge(0.80))
        await asyncio.sleep(0.01)
        second = await charge(0.30)
        assert (await first).status_code == 200

    assert second.status_code == 402
    assert "can only afford 0.2." in second.json()["error"]["message"]


async def test_a_key_moves_between_guardrails_and_deleting_one_frees_its_keys(
    timed_emulator: Emulator, management: httpx.AsyncClient
) -> None:
    """GIVEN two guardrails (free: only the free model; pro: anything) and two keys, one
    assigned free, one never assigned
    WHEN the first key is assigned to pro, then back to free, then free is deleted
    THEN the unassigned key is never restricted; the first key holds one guardrail at a time
    (assigning moves it: the assignment lists show it under one guardrail only) and is
    restricted by free's allowlist only while it holds free; deleting free frees it."""
    moving = timed_emulator.add_key(name="moving")
    loose = timed_emulator.add_key(name="loose")
    free = await _guardrail(management, name="free", allowed_models=[FREE_MODEL])
    pro = await _guardrail(management, name="pro", description="everything")
    await _assign(management, free, moving.hash)

    assert (await _chat(timed_emulator, loose.secret, OTHER_MODEL)).status_code == 200
    assert (await _chat(timed_emulator, moving.secret, OTHER_MODEL)).status_code == 403

    assert await _assign(management, pro, moving.hash) == 1
    assert timed_emulator.guardrail_of(moving.hash) == timed_emulator.guardrail(pro)
    listed_free = (await management.get(f"/guardrails/{free}/assignments/keys")).json()
    listed_pro = (await management.get(f"/guardrails/{pro}/assignments/keys")).json()
    assert (listed_free["data"], listed_free["total_count"]) == ([], 0)
    assert [a["key_hash"] for a in listed_pro["data"]] == [moving.hash]
    assert listed_pro["data"][0]["key_name"] == "moving"
    assert (await _chat(timed_emulator, moving.secret, OTHER_MODEL)).status_code == 200

    assert await _assign(management, free, moving.hash, "0" * 64) == 1  # unknown hash: skipped
    assert (await _chat(timed_emulator, moving.secret, OTHER_MODEL)).status_code == 403
    everything = (await management.get("/guardrails/assignments/keys")).json()
    assert [(a["key_hash"], a["guardrail_id"]) for a in everything["data"]] == [(moving.hash, free)]

    deleted = await management.delete(f"/guardrails/{free}")
    assert deleted.json() == {"deleted": True}
    assert timed_emulator.guardrail_of(moving.hash) is None
    assert (await management.get(f"/guardrails/{free}")).status_code == 404
    assert (await management.get("/guardrails/assignments/keys")).json()["data"] == []
    assert (await _chat(timed_emulator, moving.secret, OTHER_MODEL)).status_code == 200
    assert (await _chat(timed_emulator, loose.secret, OTHER_MODEL)).status_code == 200


async def test_unassigning_frees_a_key_and_counts_only_the_keys_that_held_the_guardrail(
    timed_emulator: Emulator, management: httpx.AsyncClient
) -> None:
    """GIVEN a key assigned a restrictive guardrail, and a key that is not
    WHEN both are unassigned from it
    THEN unassigned_count is 1 and the first key is unrestricted again."""
    held = timed_emulator.add_key(name="held")
    other = timed_emulator.add_key(name="other")
    free = await _guardrail(management, name="free", allowed_models=[FREE_MODEL])
    await _assign(management, free, held.hash)

    removed = await management.post(
        f"/guardrails/{free}/assignments/keys/remove",
        json={"key_hashes": [held.hash, other.hash]},
    )

    assert removed.json() == {"unassigned_count": 1}
    assert (await _chat(timed_emulator, held.secret, OTHER_MODEL)).status_code == 200


async def test_get_key_shows_the_guardrail_budget_beside_the_key_limit(
    timed_emulator: Emulator, management: httpx.AsyncClient
) -> None:
    """GIVEN a key with a $10 monthly limit, assigned a $1 daily guardrail, that spent $0.25
    WHEN it reads GET /key
    THEN its budgets are the guardrail's layer (scope api_key, its id, $0.75 left, resetting at
    the next UTC midnight) then the key's own (key_limit, $9.75 left, next month), and the
    effective budget is the daily one, which has less left; GET /keys/{hash} reports no budget
    (OpenRouter's key object has none)."""
    key = timed_emulator.add_key(name="layers", limit=Decimal(10), limit_reset="monthly")
    daily = await _guardrail(management, name="daily", limit_usd=1, reset_interval="daily")
    await _assign(management, daily, key.hash)
    timed_emulator.charge(key.secret, Decimal("0.25"))

    current = await _current(timed_emulator, key.secret)

    guardrail_layer, key_layer = current["budgets"]
    assert guardrail_layer == {
        "scope": "api_key",
        "limit_usd": 1.0,
        "spend_usd": 0.25,
        "remaining_usd": 0.75,
        "reset_interval": "daily",
        "resets_at": "2026-11-27T00:00:00Z",
        "include_byok": False,
        "budget_id": None,
        "guardrail_id": daily,
    }
    assert (key_layer["scope"], key_layer["remaining_usd"], key_layer["resets_at"]) == (
        "key_limit",
        9.75,
        "2026-12-01T00:00:00Z",
    )
    assert current["effective_budget"] == guardrail_layer
    operations.GetCurrentKeyResponse.model_validate({"data": current})
    key_object = (await management.get(f"/keys/{key.hash}")).json()["data"]
    assert "budgets" not in key_object


async def test_the_workspace_default_guardrail_is_listed_and_governs_every_key_once_configured(
    timed_emulator: Emulator, management: httpx.AsyncClient
) -> None:
    """GIVEN a fresh account
    WHEN its guardrails are listed, the default one read, renamed, configured with a $2
    monthly budget and a model allowlist, and deleted
    THEN it is listed as "Workspace <id> Default" but reads 404 until configured (OpenRouter's
    spec); renaming it is a 400; once configured it restricts every key of the workspace
    (budget scope workspace_default_key) without any assignment; it takes no assignment and
    cannot be deleted (400s)."""
    key = timed_emulator.add_key(name="anyone")
    listed = (await management.get("/guardrails")).json()
    [default] = listed["data"]
    assert listed["total_count"] == 1
    assert default["name"] == f"Workspace {DEFAULT_WORKSPACE_ID} Default"
    assert (await management.get(f"/guardrails/{default['id']}")).status_code == 404
    assert (await _chat(timed_emulator, key.secret, OTHER_MODEL)).status_code == 200

    renamed = await management.patch(f"/guardrails/{default['id']}", json={"name": "mine"})
    configured = await management.patch(
        f"/guardrails/{default['id']}",
        json={"limit_usd": 2, "reset_interval": "monthly", "allowed_models": [FREE_MODEL]},
    )
    assigned = await management.post(
        f"/guardrails/{default['id']}/assignments/keys", json={"key_hashes": [key.hash]}
    )
    deleted = await management.delete(f"/guardrails/{default['id']}")

    assert renamed.status_code == 400
    assert configured.status_code == 200, configured.text
    assert (await management.get(f"/guardrails/{default['id']}")).status_code == 200
    assert (await _chat(timed_emulator, key.secret, OTHER_MODEL)).status_code == 403
    assert (await _chat(timed_emulator, key.secret, FREE_MODEL)).status_code == 200
    [layer, *_] = (await _current(timed_emulator, key.secret))["budgets"]
    assert (layer["scope"], layer["guardrail_id"]) == ("workspace_default_key", default["id"])
    assert (assigned.status_code, deleted.status_code) == (400, 400)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"limit_usd": 5}, "limit_usd and reset_interval"),
        ({"name": "x", "limit_usd": 5}, "limit_usd and reset_interval"),
        ({"name": "x", "reset_interval": "daily"}, "limit_usd and reset_interval"),
        ({"name": "x", "reset_interval": "yearly"}, "reset_interval: Invalid enum value"),
        ({"name": "x", "limit_usd": -1, "reset_interval": "daily"}, "limit_usd: Number"),
        ({"name": "x", "allowed_models": []}, "allowed_models: Array must contain"),
        ({"name": "x", "allowed_providers": "openai"}, "allowed_providers: Expected"),
        ({"name": "x", "allowed_data_regions": ["mars"]}, "allowed_data_regions"),
        ({"name": ""}, "name: String"),
        ({"name": "x", "description": "d" * 1001}, "description: String"),
    ],
)
async def test_invalid_guardrails_are_refused_with_400(
    management: httpx.AsyncClient, body: dict[str, Any], fragment: str
) -> None:
    """GIVEN a guardrail body OpenRouter's schema refuses (a budget without its interval, an
    unknown interval, a negative limit, an empty allowlist...)
    WHEN it is created
    THEN the answer is 400 naming the field, in the SDK's error shape."""
    if "name" not in body:
        body = {**body, "name": "only a limit"}
    refused = await management.post("/guardrails", json=body)

    assert refused.status_code == 400
    assert fragment in refused.json()["error"]["message"]
    errors.BadRequestResponseErrorData.model_validate_json(refused.content)


async def test_guardrail_routes_need_a_management_key(timed_emulator: Emulator) -> None:
    """GIVEN a user key
    WHEN it lists or creates guardrails
    THEN both are 403 "Only management keys can perform this operation"."""
    key = timed_emulator.add_key(name="user")
    async with httpx.AsyncClient(
        transport=timed_emulator.transport(),
        base_url=f"http://emulator{API_PREFIX}",
        headers={"Authorization": f"Bearer {key.secret}"},
    ) as client:
        listed = await client.get("/guardrails")
        created = await client.post("/guardrails", json={"name": "mine"})

    for refused in (listed, created):
        assert refused.status_code == 403
        assert refused.json()["error"]["message"] == (
            "Only management keys can perform this operation"
        )


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


async def test_the_official_sdk_runs_every_guardrail_call_against_the_emulator(
    timed_emulator: Emulator, sdk: OpenRouter, management: httpx.AsyncClient
) -> None:
    """GIVEN the SDK's own client on the emulator and two keys
    WHEN it creates guardrails (every kind of field), pages through the list, reads, updates,
    assigns, lists assignments (a guardrail's and all, keys and members), assigns members,
    unassigns, and deletes
    THEN every call succeeds (its strict models accept every answer) with the expected values,
    and no answer carries a field the SDK does not know."""
    first, second = timed_emulator.add_key(name="one"), timed_emulator.add_key(name="two")
    created = await sdk.guardrails.create_async(
        name="tier: pro",
        description="the pro tier",
        limit_usd=25.5,
        reset_interval="monthly",
        allowed_models=[FREE_MODEL, OTHER_MODEL],
        allowed_providers=["openai", "anthropic"],
        ignored_providers=["azure"],
        allowed_data_regions=["global"],
        enforce_zdr=True,
        enforce_zdr_google=False,
        include_byok_in_budgets=True,
        content_filters=[
            components.ContentFilterEntry(action="redact", pattern=r"\bsk-[a-z0-9]{48}\b")
        ],
        content_filter_builtins=[
            components.ContentFilterBuiltinEntryInput(action="block", slug="email")
        ],
    )
    others = [
        await sdk.guardrails.create_async(name=f"tier {n}", limit_usd=n, reset_interval="daily")
        for n in (1, 2)
    ]
    first_page = await sdk.guardrails.list_async(limit=2)
    assert first_page is not None
    next_page = first_page.next()
    assert inspect.isawaitable(next_page)  # the async list pages asynchronously
    second_page = await next_page
    assert second_page is not None
    fetched = await sdk.guardrails.get_async(id=created.data.id)
    updated = await sdk.guardrails.update_async(
        id=created.data.id, limit_usd=30, allowed_models=[FREE_MODEL], description=None
    )
    assigned = await sdk.guardrails.bulk_assign_keys_async(
        id=created.data.id, key_hashes=[first.hash, second.hash]
    )
    moved = await sdk.guardrails.bulk_assign_keys_async(
        id=others[0].data.id, key_hashes=[second.hash]
    )
    of_guardrail = await sdk.guardrails.list_guardrail_key_assignments_async(id=created.data.id)
    every = await sdk.guardrails.list_key_assignments_async()
    members = await sdk.guardrails.list_member_assignments_async()
    guardrail_members = await sdk.guardrails.list_guardrail_member_assignments_async(
        id=created.data.id
    )
    members_assigned = await sdk.guardrails.bulk_assign_members_async(
        id=created.data.id, member_user_ids=["user_abc123"]
    )
    members_unassigned = await sdk.guardrails.bulk_unassign_members_async(
        id=created.data.id, member_user_ids=["user_abc123"]
    )
    unassigned = await sdk.guardrails.bulk_unassign_keys_async(
        id=created.data.id, key_hashes=[first.hash, second.hash]
    )
    deleted = await sdk.guardrails.delete_async(id=others[1].data.id)
    with pytest.raises(errors.NotFoundResponseError):
        await sdk.guardrails.get_async(id=others[1].data.id)
    with pytest.raises(errors.BadRequestResponseError):
        await sdk.guardrails.create_async(name="half a budget", limit_usd=5)

    guardrail = created.data
    assert (guardrail.name, guardrail.limit_usd, guardrail.reset_interval) == (
        "tier: pro",
        25.5,
        "monthly",
    )
    assert guardrail.workspace_id == DEFAULT_WORKSPACE_ID
    assert guardrail.include_byok_in_budgets is True
    # the deprecated enforce_zdr is copied into the per-group switches not given
    assert (guardrail.enforce_zdr_openai, guardrail.enforce_zdr_google) == (True, False)
    assert isinstance(guardrail.content_filter_builtins, list)
    assert guardrail.content_filter_builtins[0].label == "[EMAIL]"
    pages = [first_page.result, second_page.result]
    assert [len(p.data) for p in pages] == [2, 2]
    assert {g.id for p in pages for g in p.data} >= {created.data.id, *(o.data.id for o in others)}
    assert all(p.total_count == 4 for p in pages)  # three made, and the workspace default
    assert fetched.data == created.data
    assert (updated.data.limit_usd, updated.data.allowed_models) == (30, [FREE_MODEL])
    assert updated.data.description is None and updated.data.updated_at is not None
    assert (assigned.assigned_count, moved.assigned_count) == (2, 1)
    assert of_guardrail is not None and every is not None
    assert [a.key_hash for a in of_guardrail.result.data] == [first.hash]
    assert {(a.key_hash, a.guardrail_id) for a in every.result.data} == {
        (first.hash, created.data.id),
        (second.hash, others[0].data.id),
    }
    assert members is not None and members.result.data == []
    assert guardrail_members is not None and guardrail_members.result.total_count == 0
    assert (members_assigned.assigned_count, members_unassigned.unassigned_count) == (0, 0)
    assert unassigned.unassigned_count == 1
    assert deleted.DELETED is True

    raw_guardrail = (await management.get(f"/guardrails/{created.data.id}")).json()["data"]
    raw_assignment = (await management.get("/guardrails/assignments/keys")).json()["data"][0]
    assert _invented(raw_guardrail, components.Guardrail) == set()
    assert _invented(raw_assignment, components.KeyAssignment) == set()


async def test_the_sdk_reads_the_guardrail_layer_of_a_users_budgets(
    timed_emulator: Emulator, sdk: OpenRouter
) -> None:
    """GIVEN a key with a $10 monthly limit assigned, through the SDK, a $1 daily guardrail,
    having spent $1
    WHEN the SDK reads GET /key with that key, and chats with it
    THEN its KeyBudget models hold both layers, the guardrail's spent (effective budget, zero
    left), and the chat is refused with the SDK's ForbiddenResponseError."""
    key = timed_emulator.add_key(name="sdk-user", limit=Decimal(10), limit_reset="monthly")
    daily = await sdk.guardrails.create_async(name="daily", limit_usd=1, reset_interval="daily")
    await sdk.guardrails.bulk_assign_keys_async(id=daily.data.id, key_hashes=[key.hash])
    timed_emulator.charge(key.secret, Decimal(1))

    async with httpx.AsyncClient(transport=timed_emulator.transport()) as http:
        as_user = OpenRouter(
            api_key=key.secret, server_url="http://emulator/api/v1", async_client=http
        )
        current = await as_user.api_keys.get_current_key_metadata_async()
        with pytest.raises(errors.ForbiddenResponseError) as refused:
            await as_user.chat.send_async(
                model=FREE_MODEL,
                messages=[components.ChatUserMessage(role="user", content="hello")],
            )

    guardrail_layer, key_layer = current.data.budgets
    assert (guardrail_layer.scope, guardrail_layer.remaining_usd) == ("api_key", 0)
    assert guardrail_layer.resets_at == datetime(2026, 11, 27, tzinfo=UTC)
    assert (key_layer.scope, key_layer.remaining_usd) == ("key_limit", 9)
    assert current.data.effective_budget == guardrail_layer
    assert "Guardrail daily budget" in str(refused.value)


async def test_our_client_manages_guardrails_against_the_emulator(
    timed_emulator: Emulator, timed_openrouter: OpenRouterClient
) -> None:
    """GIVEN our production client on the emulator and two keys
    WHEN it creates a guardrail (money as Decimal), reads, updates, assigns and unassigns keys,
    lists assignments, reads a key's budgets and deletes the guardrail
    THEN every answer is parsed (Decimal money, tuples of names), errors map to our error
    classes (404 OpenRouterNotFound, 400 OpenRouterBadRequest), a second delete is False."""
    first, second = timed_emulator.add_key(name="a"), timed_emulator.add_key(name="b")
    created = await timed_openrouter.create_guardrail(
        name="basic",
        description="the basic tier",
        limit_usd=Decimal("2.50"),
        reset_interval="weekly",
        allowed_models=[FREE_MODEL],
    )
    fetched = await timed_openrouter.get_guardrail(created.id)
    updated = await timed_openrouter.update_guardrail(
        created.id, limit_usd=Decimal("3.10"), allowed_providers=["openai"], description=None
    )
    assigned = await timed_openrouter.assign_keys_to_guardrail(
        created.id, [first.hash, second.hash]
    )
    of_guardrail = await timed_openrouter.list_all_key_assignments(guardrail_id=created.id)
    unassigned = await timed_openrouter.unassign_keys_from_guardrail(created.id, [second.hash])
    every = await timed_openrouter.list_all_key_assignments()
    timed_emulator.charge(first.secret, Decimal("0.10"))
    as_user = OpenRouterClient(
        management_key=SecretStr(first.secret),
        base_url=EMULATOR_BASE_URL,
        transport=timed_emulator.transport(),
    )
    try:
        current = await as_user.get_current_key()
    finally:
        await as_user.aclose()

    assert (created.name, created.limit_usd, created.reset_interval) == (
        "basic",
        Decimal("2.5"),
        "weekly",
    )
    assert created.allowed_models == (FREE_MODEL,) and created.allowed_providers is None
    assert fetched == created
    assert (updated.limit_usd, updated.allowed_providers, updated.description) == (
        Decimal("3.1"),
        ("openai",),
        None,
    )
    assert assigned == 2 and unassigned == 1
    assert {a.key_hash for a in of_guardrail} == {first.hash, second.hash}
    assert [(a.key_hash, a.guardrail_id, a.key_name) for a in every] == [
        (first.hash, created.id, "a")
    ]
    [layer] = current.budgets
    assert (layer.scope, layer.guardrail_id) == ("api_key", created.id)
    assert (layer.limit_usd, layer.spend_usd, layer.remaining_usd) == (
        Decimal("3.1"),
        Decimal("0.1"),
        Decimal("3.0"),
    )
    assert layer.resets_at == datetime(2026, 11, 30, tzinfo=UTC)  # the next Monday
    assert current.effective_budget == layer

    default = next(g for g in await timed_openrouter.list_all_guardrails() if g.id != created.id)
    with pytest.raises(OpenRouterNotFound):
        await timed_openrouter.get_guardrail(default.id)  # not configured yet
    with pytest.raises(OpenRouterBadRequest):
        await timed_openrouter.update_guardrail(default.id, name="renamed")
    with pytest.raises(ValueError, match="limit_usd and reset_interval"):
        await timed_openrouter.create_guardrail(name="half", limit_usd=Decimal(1))
    with pytest.raises(ValueError, match="allowed_models"):
        await timed_openrouter.update_guardrail(created.id, allowed_models=[])
    assert await timed_openrouter.delete_guardrail(created.id) is True
    assert await timed_openrouter.delete_guardrail(created.id) is False
    assert await timed_openrouter.list_all_key_assignments() == []


async def test_our_client_pages_through_more_than_a_page_of_guardrails(
    timed_emulator: Emulator, timed_openrouter: OpenRouterClient
) -> None:
    """GIVEN 105 guardrails and the workspace default
    WHEN our client lists them all
    THEN it pages (100, then the rest) and returns each once."""
    made = {(await timed_openrouter.create_guardrail(name=f"g{i}")).id for i in range(105)}

    listed = await timed_openrouter.list_all_guardrails()

    assert len(listed) == 106 and made <= {g.id for g in listed}
    pages = [p for m, p in timed_emulator.requests if m == "GET" and p.endswith("/guardrails")]
    assert len(pages) == 106 // PAGE_SIZE + 1


async def test_our_client_retries_assignments_but_never_a_create(
    timed_emulator: Emulator, timed_openrouter: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    """GIVEN a guardrail and a key, and a 500 injected on the next guardrail POST each time
    WHEN our client assigns the key, then creates another guardrail
    THEN the assignment is retried (repeating it is harmless) and succeeds; the create is not
    retried and raises OpenRouterOutcomeUnknown (the caller reconciles by name)."""
    key = timed_emulator.add_key(name="retried")
    guardrail = await timed_openrouter.create_guardrail(name="target")
    timed_emulator.inject(Fault(kind="status", method="POST", path="/guardrails", status=500))

    assert await timed_openrouter.assign_keys_to_guardrail(guardrail.id, [key.hash]) == 1
    assert len(recording_sleep.waits) == 1
    timed_emulator.inject(Fault(kind="status", method="POST", path="/guardrails", status=500))
    with pytest.raises(OpenRouterOutcomeUnknown):
        await timed_openrouter.create_guardrail(name="lost")
    posts = [p for m, p in timed_emulator.requests if m == "POST" and p.endswith("/guardrails")]
    assert len(posts) == 2  # "target" once, "lost" once


async def test_guardrails_and_assignments_survive_a_restart(
    tmp_path: Path, clock: ManualClock
) -> None:
    """GIVEN an emulator with a state directory, a guardrail ($1 a day, one model) assigned to
    a key that spent its budget, and the workspace default guardrail configured
    WHEN another emulator starts on the same directory
    THEN the guardrails, the assignment and the spend are there: the key is still refused,
    and the next day allowed only its model."""
    first = Emulator(state_dir=tmp_path, clock=clock, generation_delay_s=0)
    key = first.add_key(name="persistent")
    async with httpx.AsyncClient(
        transport=first.transport(),
        base_url=f"http://emulator{API_PREFIX}",
        headers={"Authorization": f"Bearer {first.management_key}"},
    ) as management:
        daily = await _guardrail(
            management,
            name="daily",
            limit_usd=1,
            reset_interval="daily",
            allowed_models=[FREE_MODEL],
        )
        await _assign(management, daily, key.hash)
        [default] = (await management.get("/guardrails")).json()["data"][:1]
        await management.patch(f"/guardrails/{default['id']}", json={"description": "set"})
    first.charge(key.secret, Decimal(1))

    restarted = Emulator(state_dir=tmp_path, clock=clock, generation_delay_s=0)
    restarted_key = restarted.key_by_hash(key.hash)

    assert restarted_key is not None
    restored = restarted.guardrail_of(key.hash)
    assert restored is not None
    assert (restored.id, restored.limit_usd, restored.allowed_models) == (
        daily,
        Decimal(1),
        [FREE_MODEL],
    )
    default_restored = restarted.guardrail(default["id"])
    assert default_restored is not None and default_restored.configured
    assert default_restored.description == "set"
    with pytest.raises(EmulatorApiError) as refused:
        restarted.charge(key.secret, Decimal("0.01"))  # the secret stays this process's
    assert refused.value.status == 403
    clock.advance(days=1)
    with pytest.raises(EmulatorApiError) as other_model:
        restarted.charge(key.secret, Decimal("0.01"), model=OTHER_MODEL)
    assert other_model.value.status == 403
    restarted.charge(key.secret, Decimal("0.01"))
