"""Our OpenRouter client against the emulator: every call, paging, retries and their limits."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.openrouter.client import PAGE_SIZE, OpenRouterClient
from shared.openrouter.emulator import Emulator, Fault
from shared.openrouter.errors import (
    OpenRouterBadRequest,
    OpenRouterNotFound,
    OpenRouterOutcomeUnknown,
    OpenRouterRateLimited,
    OpenRouterServerError,
    OpenRouterUnavailable,
)
from tests.conftest import RecordingSleep


def _posts(emulator: Emulator) -> int:
    return sum(
        1 for method, path in emulator.requests if method == "POST" and path.endswith("/keys")
    )


async def test_create_get_update_delete_round_trip(openrouter: OpenRouterClient) -> None:
    # WHEN a key is created with a monthly limit
    created = await openrouter.create_key(
        name="user-1", limit=Decimal("10.005"), limit_reset="monthly"
    )

    # THEN the secret is returned once, the hash identifies the key, money is exact
    assert created.secret.get_secret_value().startswith("sk-or-v1-")
    assert created.secret.get_secret_value() not in repr(created)
    fetched = await openrouter.get_key(created.key.hash)
    assert fetched.name == "user-1"
    assert fetched.limit == Decimal("10.005")
    assert fetched.limit_reset == "monthly"

    updated = await openrouter.update_key(created.key.hash, disabled=True, limit=None)
    assert updated.disabled is True
    assert updated.limit is None
    assert updated.updated_at is not None

    assert await openrouter.delete_key(created.key.hash) is True
    # deleting again is harmless: 404 counts as done
    assert await openrouter.delete_key(created.key.hash) is False
    with pytest.raises(OpenRouterNotFound):
        await openrouter.get_key(created.key.hash)


async def test_list_all_keys_pages_past_250_keys(
    emulator: Emulator, openrouter: OpenRouterClient
) -> None:
    created = {(await openrouter.create_key(name=f"user-{i}")).key.hash for i in range(260)}
    disabled = next(iter(created))
    await openrouter.update_key(disabled, disabled=True)

    listed = await openrouter.list_all_keys()
    enabled_only = await openrouter.list_all_keys(include_disabled=False)

    assert {k.hash for k in listed} == created
    assert len(listed) == 260
    assert {k.hash for k in enabled_only} == created - {disabled}
    list_calls = [p for m, p in emulator.requests if m == "GET" and p.endswith("/keys")]
    assert len(list_calls) == 2 * (260 // PAGE_SIZE + 1)


async def test_current_key_and_credits(emulator: Emulator, openrouter: OpenRouterClient) -> None:
    user_key = await openrouter.create_key(name="spender", limit=Decimal(5), limit_reset="monthly")
    emulator.charge(user_key.secret.get_secret_value(), Decimal("0.004"))
    emulator.charge(user_key.secret.get_secret_value(), Decimal("0.004"))

    current = await openrouter.get_current_key()
    credits = await openrouter.get_credits()

    assert current.is_management_key is True
    assert credits.total_usage == Decimal("0.008")
    assert credits.balance == credits.total_credits - Decimal("0.008")


async def test_429_with_retry_after_is_honoured_on_reads(
    emulator: Emulator, openrouter: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    # GIVEN OpenRouter rate-limits the next two reads and asks for 7 s, then 2.5 s
    emulator.inject(Fault("status", method="GET", path="/keys", status=429, retry_after_s=7))
    emulator.inject(Fault("status", method="GET", path="/keys", status=429, retry_after_s=2.5))

    # WHEN we list keys
    keys = await openrouter.list_keys()

    # THEN the client waited exactly what it was told, then succeeded
    assert keys == []
    assert recording_sleep.waits == [7.0, 2.5]


async def test_reads_give_up_after_max_retries(
    emulator: Emulator, openrouter: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    emulator.inject(Fault("status", method="GET", status=503, times=None))
    with pytest.raises(OpenRouterServerError) as failed:
        await openrouter.get_current_key()
    assert failed.value.status_code == 503
    assert len(recording_sleep.waits) == 3  # the default max_retries
    assert all(0 <= wait <= 8 for wait in recording_sleep.waits)


async def test_a_retry_after_longer_than_the_ceiling_is_not_waited_for(
    emulator: Emulator, openrouter: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    emulator.inject(Fault("status", method="GET", status=429, retry_after_s=3600))
    with pytest.raises(OpenRouterRateLimited) as limited:
        await openrouter.get_credits()
    assert limited.value.retry_after_s == 3600
    assert recording_sleep.waits == []


async def test_timeouts_on_reads_are_retried(
    emulator: Emulator, openrouter: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    emulator.inject(Fault("timeout", method="GET", path="/key"))
    current = await openrouter.get_current_key()
    assert current.is_management_key is True
    assert len(recording_sleep.waits) == 1


async def test_reads_that_never_answer_raise_unavailable(
    emulator: Emulator, openrouter: OpenRouterClient
) -> None:
    emulator.inject(Fault("timeout", method="GET", times=None))
    with pytest.raises(OpenRouterUnavailable):
        await openrouter.get_current_key()


async def test_a_500_on_create_is_not_retried(
    emulator: Emulator, openrouter: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    emulator.inject(Fault("status", method="POST", path="/keys", status=500))

    with pytest.raises(OpenRouterOutcomeUnknown) as unknown:
        await openrouter.create_key(name="once")

    assert unknown.value.status_code == 500
    assert _posts(emulator) == 1
    assert recording_sleep.waits == []


async def test_a_429_on_create_is_retried_after_its_retry_after_and_makes_one_key(
    emulator: Emulator, openrouter: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    """A 429 refuses the call before it does anything: unlike a create whose outcome is
    unknown, it is safe to send again, after the pause it asks for."""
    emulator.inject(Fault("status", method="POST", path="/keys", status=429, retry_after_s=1))
    created = await openrouter.create_key(name="limited")
    assert _posts(emulator) == 2
    assert [k.hash for k in emulator.user_keys()] == [created.key.hash]
    assert recording_sleep.waits == [1]


async def test_a_create_refused_by_429_every_time_is_rate_limited_not_an_unknown_outcome(
    emulator: Emulator, openrouter: OpenRouterClient
) -> None:
    for _ in range(10):
        emulator.inject(Fault("status", method="POST", path="/keys", status=429, retry_after_s=1))
    with pytest.raises(OpenRouterRateLimited):
        await openrouter.create_key(name="limited")
    assert _posts(emulator) == 4  # the first and three retries
    assert emulator.user_keys() == []


async def test_a_lost_create_response_is_an_unknown_outcome_and_the_key_exists(
    emulator: Emulator, openrouter: OpenRouterClient
) -> None:
    # GIVEN OpenRouter creates the key but the response never arrives
    emulator.inject(Fault("lost_response", method="POST", path="/keys"))

    # WHEN we create
    with pytest.raises(OpenRouterOutcomeUnknown):
        await openrouter.create_key(name="user-7-attempt-1")

    # THEN exactly one POST was sent and the key can be found by its unique name
    assert _posts(emulator) == 1
    found = [k for k in await openrouter.list_all_keys() if k.name == "user-7-attempt-1"]
    assert len(found) == 1


async def test_a_create_timeout_is_an_unknown_outcome(
    emulator: Emulator, openrouter: OpenRouterClient
) -> None:
    emulator.inject(Fault("timeout", method="POST", path="/keys"))
    with pytest.raises(OpenRouterOutcomeUnknown):
        await openrouter.create_key(name="slow")
    assert _posts(emulator) == 1


async def test_bad_requests_are_typed_and_not_retried(
    emulator: Emulator, openrouter: OpenRouterClient, recording_sleep: RecordingSleep
) -> None:
    created = await openrouter.create_key(name="x")
    with pytest.raises(OpenRouterBadRequest, match="limit_reset"):
        await openrouter.update_key(created.key.hash, limit_reset="hourly")  # type: ignore[arg-type]
    assert recording_sleep.waits == []


async def test_added_latency_is_real_time(emulator: Emulator, openrouter: OpenRouterClient) -> None:
    import time

    emulator.inject(Fault("latency", method="GET", path="/credits", delay_s=0.05))
    started = time.perf_counter()
    await openrouter.get_credits()
    assert time.perf_counter() - started >= 0.05
