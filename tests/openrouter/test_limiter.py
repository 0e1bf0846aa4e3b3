"""The adaptive limit on concurrent OpenRouter calls."""

from __future__ import annotations

import asyncio

from shared.openrouter.limiter import AdaptiveLimiter
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
