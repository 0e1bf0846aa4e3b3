"""How many OpenRouter calls a process makes at once, adapting to 429s.

Additive increase, multiplicative decrease: a 429 halves the number of calls allowed at once
and pauses new calls until its Retry-After has passed; every run of successes as long as the
current limit earns one more slot, up to the configured maximum. So a bulk job that hits
OpenRouter's rate limit slows down as a whole instead of every task retrying on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Sleep = Callable[[float], Awaitable[None]]


class AdaptiveLimiter:
    def __init__(
        self,
        max_concurrency: int,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.limit = max_concurrency
        self.in_flight = 0
        self.throttles = 0  # 429s seen: what a job's progress can report
        self._successes = 0
        self._resume_at = 0.0
        self._sleep = sleep
        self._clock = clock
        self._freed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._freed is None or self._loop is not loop:
            # A condition belongs to one loop; Mangum or a job handler may bring another.
            self._freed, self._loop, self.in_flight = asyncio.Condition(), loop, 0
        return self._freed

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        freed = self._condition()
        waited_for = 0.0
        while True:
            resume_at = self._resume_at
            pause = resume_at - self._clock()
            if pause > 0 and resume_at != waited_for:
                # Each pause is waited out once; a later 429 sets a new one.
                waited_for = resume_at
                await self._sleep(pause)
                continue
            async with freed:
                if self.in_flight < self.limit:
                    self.in_flight += 1
                    break
                await freed.wait()
        try:
            yield
        finally:
            async with freed:
                self.in_flight -= 1
                freed.notify()

    def throttled(self, retry_after_s: float | None) -> None:
        """OpenRouter answered 429: halve the calls at once, pause until Retry-After."""
        self.throttles += 1
        self.limit = max(1, self.limit // 2)
        self._successes = 0
        wait = retry_after_s if retry_after_s is not None else 1.0
        self._resume_at = max(self._resume_at, self._clock() + wait)

    def succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.max_concurrency:
            # One slot more; the next release wakes a waiter to use it.
            self.limit += 1
            self._successes = 0
