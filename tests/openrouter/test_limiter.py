"""The adaptive limit on concurrent OpenRouter calls."""

from __future__ import annotations

import asyncio

from shared.openrouter.limiter import AdaptiveLimiter
from shared.runtime import Runtime
from tests.conftest import RecordingSleep


async def test_no_more_calls_run_at_once_than_the_limit() -> None:
    # GIVEN a limit of 4 and 20 calls that each yield while holding their slot
    limiter = AdaptiveLimiter(4)
    running = peak = 0

    async def call() -> None:
        nonlocal running, peak
        async with limiter.slot():
            running += 1
            peak = max(peak, running)
            for _ in range(3):
                await asyncio.sleep(0)
            running -= 1

    # WHEN they all start at once
    await asyncio.gather(*(call() for _ in range(20)))

    # THEN at most 4 ran together, and all of them ran
    assert peak == 4 and running == 0 and limiter.in_flight == 0


async def test_a_429_halves_the_limit_and_pauses_every_caller_then_it_grows_back() -> None:
    # GIVEN a limit of 8 on a virtual clock
    sleep = RecordingSleep()
    limiter = AdaptiveLimiter(8, sleep=sleep, clock=sleep.clock)

    # WHEN OpenRouter answers 429 with Retry-After 5
    limiter.throttled(5.0)

    # THEN the limit halves, and the next calls all wait out the same pause once
    assert limiter.limit == 4 and limiter.throttles == 1

    paused_at = sleep.clock()
    started: list[float] = []

    async def call() -> None:
        async with limiter.slot():
            started.append(sleep.clock())
            limiter.succeeded()

    await asyncio.gather(*(call() for _ in range(3)))
    assert sleep.waits == [5.0]  # one virtual wait; real callers wait it out side by side
    assert min(started) >= paused_at + 5.0

    # AND successes earn the slots back one at a time, up to the maximum
    for _ in range(100):
        await call()
    assert limiter.limit == 8


async def test_repeated_429s_floor_at_one_call_at_a_time() -> None:
    limiter = AdaptiveLimiter(8)
    for _ in range(10):
        limiter.throttled(None)
    assert limiter.limit == 1


async def test_over_openrouters_concurrency_it_answers_429_and_a_limited_client_gets_through() -> (
    None
):
    """GIVEN the emulator takes 4 calls at once (429 with Retry-After beyond) and answers
    after 20 ms WHEN a client allowing 16 at once makes 40 calls together THEN the emulator
    refused some with 429, never served more than 4 at once, and every call succeeded: the
    limiter learned to stay under what OpenRouter takes."""
    from pydantic import SecretStr

    from shared.openrouter.client import OpenRouterClient
    from shared.openrouter.emulator import Emulator
    from shared.runtime import EMULATOR_BASE_URL

    emulator = Emulator(latency_s=0.02, max_concurrent_requests=4)
    key = emulator.add_key(name="k")
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
        limiter=AdaptiveLimiter(16),
        max_retries=10,
    )
    try:
        keys = await asyncio.gather(*(client.get_key(key.hash) for _ in range(40)))
    finally:
        await client.aclose()

    assert all(k.hash == key.hash for k in keys)
    assert emulator.rate_limited > 0
    assert emulator.peak_in_flight == 4


async def test_a_fleet_pause_is_waited_out_once_however_often_it_is_reported(
    runtime: Runtime, recording_sleep: RecordingSleep
) -> None:
    """GIVEN one worker of the fleet saw a 429 asking for 30 s WHEN another worker's limiter
    syncs with the fleet again and again during that pause THEN it waits the pause once: a
    pause read again (its remaining seconds a little smaller each time) is not a new one."""
    from shared.jobs.fleet import Fleet

    seen_it = Fleet(runtime, "worker-a", lease_s=60)
    await seen_it.sync(successes=0, throttled=True, retry_after_s=30)
    limiter = AdaptiveLimiter(8, sleep=recording_sleep, clock=recording_sleep.clock)
    limiter.fleet_sync_s = 0.0  # sync before every call
    limiter.join(Fleet(runtime, "worker-b", lease_s=60))

    for _ in range(3):
        async with limiter.slot():
            pass

    assert len(recording_sleep.waits) == 1
    assert 25 < recording_sleep.waits[0] <= 30
