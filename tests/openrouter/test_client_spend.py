"""Spend as OpenRouter counts it, through our client against the emulator: one request's
generation, the daily activity of a key or of the account, and the external user that ties
OpenRouter's records to our user."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator, Fault
from shared.openrouter.errors import (
    OpenRouterBadRequest,
    OpenRouterGenerationNotFound,
    OpenRouterNotFound,
)
from shared.openrouter.models import ActivityItem, Generation
from tests.conftest import RecordingSleep
from tests.openrouter.conftest import READINESS_DELAY_S, START, ManualClock


async def test_a_generation_is_not_found_until_ready_then_typed_with_exact_money(
    timed_emulator: Emulator,
    timed_openrouter: OpenRouterClient,
    clock: ManualClock,
    recording_sleep: RecordingSleep,
) -> None:
    """GIVEN a key charged $0.004 (a sum floats cannot hold exactly) for 12 + 3 tokens
    WHEN the client reads its generation at once, then after the readiness delay
    THEN the first read raises OpenRouterGenerationNotFound (a 404, not retried by the client)
    and the second returns a Generation with Decimal money and the charge's details."""
    created = await timed_openrouter.create_key(name="spender")
    timed_emulator.charge(
        created.secret.get_secret_value(),
        Decimal("0.004"),
        generation_id="gen-exact",
        model="openai/gpt-4.1",
        prompt_tokens=12,
        completion_tokens=3,
    )

    with pytest.raises(OpenRouterGenerationNotFound) as early:
        await timed_openrouter.get_generation("gen-exact")
    clock.advance(seconds=READINESS_DELAY_S)
    generation = await timed_openrouter.get_generation("gen-exact")

    assert isinstance(early.value, OpenRouterNotFound)  # still a 404 to generic handlers
    assert early.value.status_code == 404
    assert recording_sleep.waits == []  # a 404 is the caller's to retry, later
    assert isinstance(generation, Generation)
    assert generation.id == "gen-exact"
    assert generation.total_cost == Decimal("0.004")
    assert isinstance(generation.total_cost, Decimal)
    assert generation.usage == Decimal("0.004")
    assert (generation.model, generation.tokens_prompt, generation.tokens_completion) == (
        "openai/gpt-4.1",
        12,
        3,
    )
    assert generation.is_byok is False
    assert generation.created_at == START


async def test_an_unknown_generation_is_not_found(
    timed_openrouter: OpenRouterClient, clock: ManualClock
) -> None:
    """GIVEN no charge with that id, long after any readiness delay
    WHEN the client reads it
    THEN it raises OpenRouterGenerationNotFound; an empty id is refused before any call."""
    clock.advance(hours=1)
    with pytest.raises(OpenRouterGenerationNotFound):
        await timed_openrouter.get_generation("gen-never")
    with pytest.raises(ValueError, match="generation id"):
        await timed_openrouter.get_generation("")


async def test_generation_and_activity_reads_are_retried_like_every_read(
    timed_emulator: Emulator,
    timed_openrouter: OpenRouterClient,
    clock: ManualClock,
    recording_sleep: RecordingSleep,
) -> None:
    """GIVEN OpenRouter answering 503 once to /generation and 429 (Retry-After 3) once to
    /activity
    WHEN the client reads both
    THEN each is retried through the same path as every read (a backoff, then the limiter's
    pause) and succeeds."""
    key = timed_emulator.add_key(name="retried")
    timed_emulator.charge(key.secret, Decimal(1), generation_id="gen-retried")
    clock.advance(seconds=READINESS_DELAY_S)
    timed_emulator.inject(Fault("status", method="GET", path="/generation", status=503))
    timed_emulator.inject(
        Fault("status", method="GET", path="/activity", status=429, retry_after_s=3)
    )

    generation = await timed_openrouter.get_generation("gen-retried")
    activity = await timed_openrouter.get_activity()

    assert generation.total_cost == Decimal(1)
    assert activity == []  # the charge is today's: no completed day holds it yet
    assert len(recording_sleep.waits) == 2
    assert recording_sleep.waits[1] == 3
    assert [p for m, p in timed_emulator.requests if m == "GET"].count("/api/v1/activity") == 2


async def test_activity_is_typed_summed_per_day_and_model_and_filtered_by_key(
    timed_emulator: Emulator, timed_openrouter: OpenRouterClient, clock: ManualClock
) -> None:
    """GIVEN two keys charged yesterday (0.1 + 0.2 on one model, which floats would sum to
    0.30000000000000004) and the day before
    WHEN the client reads activity for one key, for one day, and for the account
    THEN the rows are ActivityItems with Decimal sums exactly equal to the charges'."""
    first, second = timed_emulator.add_key(name="a1"), timed_emulator.add_key(name="a2")
    clock.advance(days=-2)
    timed_emulator.charge(second.secret, Decimal("1.5"), model="x/m", prompt_tokens=2)
    clock.advance(days=1)
    timed_emulator.charge(first.secret, Decimal("0.1"), model="x/m", completion_tokens=5)
    timed_emulator.charge(first.secret, Decimal("0.2"), model="x/m", completion_tokens=6)
    timed_emulator.charge(second.secret, Decimal("0.7"), model="x/m")
    clock.advance(days=1)
    yesterday = (START - timedelta(days=1)).date()

    of_first = await timed_openrouter.get_activity(first.hash)
    one_day = await timed_openrouter.get_activity(date=yesterday)
    everything = await timed_openrouter.get_activity()

    [row] = of_first
    assert isinstance(row, ActivityItem)
    assert (row.date, row.model, row.requests, row.completion_tokens) == (yesterday, "x/m", 2, 11)
    assert row.usage == Decimal("0.3")
    assert isinstance(row.usage, Decimal)
    assert [(r.date, r.usage) for r in one_day] == [(yesterday, Decimal("1.0"))]
    assert [(r.date, r.usage, r.requests) for r in everything] == [
        (yesterday, Decimal("1.0"), 3),
        (yesterday - timedelta(days=1), Decimal("1.5"), 1),
    ]


async def test_activity_for_today_is_refused_as_openrouter_refuses_it(
    timed_openrouter: OpenRouterClient,
) -> None:
    """GIVEN today, which is not a completed day
    WHEN the client asks for its activity
    THEN OpenRouter's 400 is an OpenRouterBadRequest."""
    with pytest.raises(OpenRouterBadRequest):
        await timed_openrouter.get_activity(date=START.date())


async def test_the_external_user_round_trips_from_create_to_keys_and_generations(
    timed_emulator: Emulator, timed_openrouter: OpenRouterClient, clock: ManualClock
) -> None:
    """GIVEN a key created with external_user "user-42"
    WHEN it is read back (create answer, get, list) and it makes a request
    THEN every key object names user-42, and so do the request's generation record and its
    GET /generation answer."""
    created = await timed_openrouter.create_key(name="ora-user-42", external_user="user-42")
    timed_emulator.charge(
        created.secret.get_secret_value(), Decimal("0.01"), generation_id="gen-42"
    )
    clock.advance(seconds=READINESS_DELAY_S)

    fetched = await timed_openrouter.get_key(created.key.hash)
    listed = await timed_openrouter.list_all_keys()
    generation = await timed_openrouter.get_generation("gen-42")

    assert created.key.external_user == "user-42"
    assert fetched.external_user == "user-42"
    assert [k.external_user for k in listed] == ["user-42"]
    record = timed_emulator.generation("gen-42")
    assert record is not None and record.external_user == "user-42"
    assert generation.external_user == "user-42"


@pytest.mark.parametrize("external_user", ["", "u" * 513])
async def test_an_external_user_out_of_bounds_is_refused_before_anything_is_sent(
    timed_emulator: Emulator, timed_openrouter: OpenRouterClient, external_user: str
) -> None:
    """GIVEN an external user id empty or longer than OpenRouter's 512 characters
    WHEN a key is created with it
    THEN the client refuses it with ValueError and no POST reaches OpenRouter."""
    with pytest.raises(ValueError, match="external_user"):
        await timed_openrouter.create_key(name="bad", external_user=external_user)
    assert timed_emulator.requests == []
