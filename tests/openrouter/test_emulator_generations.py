"""Every billed charge leaves a generation record, served by GET /generation as OpenRouter does:
404 until its stats are ready, 200 after, with what the request cost and who made it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from shared.openrouter.emulator import (
    API_PREFIX,
    DEFAULT_MODEL,
    Emulator,
    EmulatorApiError,
    new_generation_id,
)
from tests.openrouter.conftest import READINESS_DELAY_S, ManualClock


@pytest.fixture
async def http(timed_emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=timed_emulator.transport(), base_url="http://emulator"
    ) as client:
        yield client


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def _generation(http: httpx.AsyncClient, secret: str, generation_id: str) -> httpx.Response:
    return await http.get(
        f"{API_PREFIX}/generation", params={"id": generation_id}, headers=_bearer(secret)
    )


async def test_a_generation_is_404_until_the_readiness_delay_has_passed_then_200(
    timed_emulator: Emulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """GIVEN a key with an external user, charged $0.004 for 12 prompt and 3 completion tokens
    WHEN its generation is read just before and just after the readiness delay (2 s)
    THEN it is 404 before and 200 after, with the charge's id, model, tokens, cost, external
    user and time."""
    created = await http.post(
        f"{API_PREFIX}/keys",
        json={"name": "gen", "external": {"user": "user-9"}},
        headers=_bearer(timed_emulator.management_key),
    )
    secret = created.json()["key"]
    charged_at = clock()
    timed_emulator.charge(
        secret,
        Decimal("0.004"),
        generation_id="gen-1",
        model="openai/gpt-4.1",
        prompt_tokens=12,
        completion_tokens=3,
    )

    at_once = await _generation(http, timed_emulator.management_key, "gen-1")
    clock.advance(seconds=READINESS_DELAY_S - 0.001)
    just_before = await _generation(http, timed_emulator.management_key, "gen-1")
    clock.advance(seconds=0.001)
    ready = await _generation(http, timed_emulator.management_key, "gen-1")

    assert at_once.status_code == just_before.status_code == 404
    assert at_once.json()["error"]["code"] == 404
    assert ready.status_code == 200
    data = ready.json()["data"]
    assert data["id"] == "gen-1"
    assert data["model"] == "openai/gpt-4.1"
    assert (data["tokens_prompt"], data["tokens_completion"]) == (12, 3)
    assert data["total_cost"] == data["usage"] == 0.004
    assert data["is_byok"] is False
    assert data["external_user"] == "user-9"
    assert datetime.fromisoformat(data["created_at"]) == charged_at
    # the record behind it also names the key, which OpenRouter's JSON does not
    record = timed_emulator.generation("gen-1")
    assert record is not None
    assert record.key_hash == created.json()["data"]["hash"]
    assert "key_hash" not in data and "api_key_hash" not in data


async def test_unknown_generations_are_404_and_a_missing_id_is_400(
    timed_emulator: Emulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """GIVEN an emulator long past any readiness delay
    WHEN an id nobody charged is read, or no id at all
    THEN the first is 404 and the second 400."""
    clock.advance(hours=1)
    unknown = await _generation(http, timed_emulator.management_key, "gen-nobody")
    missing = await http.get(
        f"{API_PREFIX}/generation", headers=_bearer(timed_emulator.management_key)
    )
    assert unknown.status_code == 404
    assert missing.status_code == 400


async def test_any_valid_key_may_read_a_generation_and_an_invalid_one_may_not(
    timed_emulator: Emulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """GIVEN a generation made with a user key, ready
    WHEN that user key, another user key and an unknown key read it
    THEN both keys of the account get 200 (OpenRouter: any key) and the unknown one 401."""
    spender = timed_emulator.add_key(name="spender")
    other = timed_emulator.add_key(name="other")
    timed_emulator.charge(spender.secret, Decimal(1), generation_id="gen-shared")
    clock.advance(seconds=READINESS_DELAY_S)

    own = await _generation(http, spender.secret, "gen-shared")
    neighbour = await _generation(http, other.secret, "gen-shared")
    stranger = await _generation(http, "sk-or-v1-" + "0" * 64, "gen-shared")

    assert (own.status_code, neighbour.status_code, stranger.status_code) == (200, 200, 401)


async def test_a_charge_over_http_returns_its_generation_id_given_or_made(
    timed_emulator: Emulator, http: httpx.AsyncClient
) -> None:
    """GIVEN a user key
    WHEN it is charged over HTTP once with a generation id and once without
    THEN each answer carries its id at the top level (as a chat completion does): the given
    one, then a new `gen-...` one, and each has a record with the charge's details."""
    key = timed_emulator.add_key(name="http-charges")
    given = await http.post(
        "/_emulator/charge",
        json={"cost": "0.5", "generation_id": "gen-given", "model": "x/y", "prompt_tokens": 4},
        headers=_bearer(key.secret),
    )
    made = await http.post("/_emulator/charge", json={"cost": 0.25}, headers=_bearer(key.secret))

    assert given.status_code == made.status_code == 200
    assert given.json()["id"] == "gen-given"
    made_id = made.json()["id"]
    assert made_id.startswith("gen-") and made_id != "gen-given"
    assert made.json()["data"]["usage"] == 0.75  # GET /key of the key, as before
    first, second = timed_emulator.generations(key.hash)
    assert (first.id, first.model, first.prompt_tokens, first.cost) == (
        "gen-given",
        "x/y",
        4,
        Decimal("0.5"),
    )
    assert (second.id, second.model, second.cost) == (made_id, DEFAULT_MODEL, Decimal("0.25"))


@pytest.mark.parametrize(
    "body",
    [
        {"cost": 1, "prompt_tokens": -1},
        {"cost": 1, "completion_tokens": 1.5},
        {"cost": 1, "model": ""},
        {"cost": 1, "generation_id": ""},
    ],
)
async def test_malformed_charge_details_are_400_and_bill_nothing(
    timed_emulator: Emulator, http: httpx.AsyncClient, body: dict[str, object]
) -> None:
    """GIVEN a user key
    WHEN a charge comes with negative or fractional tokens, an empty model or an empty id
    THEN it is refused with 400 and neither bills nor records anything."""
    key = timed_emulator.add_key(name="malformed")
    refused = await http.post("/_emulator/charge", json=body, headers=_bearer(key.secret))
    assert refused.status_code == 400
    assert timed_emulator.generations() == []
    assert key.charges == []


def test_refused_charges_and_reused_ids_leave_no_generation(timed_emulator: Emulator) -> None:
    """GIVEN a key with a $1 limit, charged once with a known id
    WHEN it is charged again with the same id, and then beyond its limit
    THEN both are refused (400, then 403) and only the first charge has a record."""
    key = timed_emulator.add_key(name="capped", limit=Decimal(1), limit_reset="monthly")
    generation_id = new_generation_id()
    timed_emulator.charge(key.secret, Decimal("0.6"), generation_id=generation_id)

    with pytest.raises(EmulatorApiError) as reused:
        timed_emulator.charge(key.secret, Decimal("0.1"), generation_id=generation_id)
    with pytest.raises(EmulatorApiError) as over:
        timed_emulator.charge(key.secret, Decimal("0.6"))

    assert (reused.value.status, over.value.status) == (400, 402)
    assert [g.id for g in timed_emulator.generations()] == [generation_id]


async def test_a_byok_generation_costs_no_credits_and_shows_the_providers_bill(
    timed_emulator: Emulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """GIVEN a BYOK request that cost $2 at the provider
    WHEN its generation is read
    THEN it is marked BYOK, costs no OpenRouter credits here (the emulator takes no BYOK fee),
    and upstream_inference_cost is the provider's $2."""
    key = timed_emulator.add_key(name="byok")
    timed_emulator.charge(key.secret, Decimal(2), byok=True, generation_id="gen-byok")
    clock.advance(seconds=READINESS_DELAY_S)

    data = (await _generation(http, key.secret, "gen-byok")).json()["data"]

    assert data["is_byok"] is True
    assert (data["total_cost"], data["usage"], data["upstream_inference_cost"]) == (0, 0, 2)


async def test_a_request_is_dated_by_its_start_and_billed_at_its_end(clock: ManualClock) -> None:
    """GIVEN a request that starts at 23:59:59 UTC and completes after midnight
    WHEN it is billed
    THEN its generation's created_at is its start (the day /activity counts it under) while its
    cost enters the key's usage on the day it completed, and it is readable only after the
    readiness delay counted from completion."""
    clock.now = datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC)
    emulator = Emulator(clock=clock, generation_delay_s=READINESS_DELAY_S)
    key = emulator.add_key(name="slow")
    request = asyncio.create_task(
        emulator.spend(key.secret, Decimal(3), duration_s=0.05, generation_id="gen-slow")
    )
    await asyncio.sleep(0.01)
    clock.now = datetime(2026, 11, 27, 0, 0, 30, tzinfo=UTC)
    await request

    record = emulator.generation("gen-slow")
    assert record is not None
    assert record.created_at == datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC)
    assert record.billed_at == datetime(2026, 11, 27, 0, 0, 30, tzinfo=UTC)
    assert emulator.key_json(key)["usage_daily"] == 3  # billed on the 27th
    assert emulator.generation_json(record)["latency"] == 31_000


async def test_generations_persist_with_the_rest_of_the_state(tmp_path: Path) -> None:
    """GIVEN an emulator on a state directory that billed a charge on a key with an external user
    WHEN another emulator starts on the same directory (a restart, or a command beside it)
    THEN it knows the generation, with its key, cost and external user, and serves it."""
    clock = ManualClock()
    first = Emulator(state_dir=tmp_path, clock=clock, generation_delay_s=0)
    async with httpx.AsyncClient(transport=first.transport(), base_url="http://emulator") as http:
        created = await http.post(
            f"{API_PREFIX}/keys",
            json={"name": "kept", "external": {"user": "user-kept"}},
            headers=_bearer(first.management_key),
        )
    secret, key_hash = created.json()["key"], created.json()["data"]["hash"]
    first.charge(secret, Decimal("0.125"), generation_id="gen-kept", completion_tokens=9)

    restarted = Emulator(state_dir=tmp_path, clock=clock, generation_delay_s=0)

    record = restarted.generation("gen-kept")
    assert record is not None
    assert (record.key_hash, record.cost, record.completion_tokens, record.external_user) == (
        key_hash,
        Decimal("0.125"),
        9,
        "user-kept",
    )
    assert record.created_at == clock()
    async with httpx.AsyncClient(
        transport=restarted.transport(), base_url="http://emulator"
    ) as http:
        served = await _generation(http, restarted.management_key, "gen-kept")
    assert served.status_code == 200
    assert served.json()["data"]["total_cost"] == 0.125
