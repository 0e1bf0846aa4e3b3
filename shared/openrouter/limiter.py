"""How many OpenRouter calls a process makes at once, adapting to 429s.

Additive increase, multiplicative decrease: a 429 halves the number of calls allowed at once
and pauses new calls until its Retry-After has passed; every run of successes as long as the
current limit earns one more slot, up to the configured maximum. So a bulk job that hits
OpenRouter's rate limit slows down as a whole instead of every task retrying on its own.

A process working a bulk job is one of a fleet of invocations: it then follows the fleet's
share instead (shared/jobs/fleet.py), reporting its successes and 429s and taking the number of
calls at once the fleet's allowance leaves it, so that the fleet, not each invocation, stays
within what OpenRouter takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

Sleep = Callable[[float], Awaitable[None]]


class FleetLink(Protocol):
    """The fleet's shared allowance: report what was seen, get this process's share."""

    async def sync(
        self, *, successes: int, throttled: bool, retry_after_s: float
    ) -> tuple[int, float, object]:
        """(calls at once this process may make, seconds of a Retry-After still to wait, which
        pause that is: the same pause reported again is not waited again)."""
        ...


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
        self.fleet: FleetLink | None = None
        self.fleet_sync_s = 0.5
        self._fleet_members = 0
        self._fleet_successes = 0
        self._fleet_throttled = False
        self._fleet_retry_after_s = 0.0
        self._fleet_synced_at = float("-inf")
        self._fleet_syncing = False
        self._fleet_pause: object = None  # the fleet's last pause, waited out once

    def join(self, fleet: FleetLink) -> None:
        """Follow the fleet's share while at least one bulk job runs in this process."""
        self._fleet_members += 1
        if self.fleet is not fleet:
            self.fleet = fleet
            self._fleet_synced_at = float("-inf")

    def leave(self) -> bool:
        """Whether that was the last bulk job of this process (it then leaves the fleet)."""
        self._fleet_members = max(0, self._fleet_members - 1)
        if self._fleet_members == 0:
            self.fleet = None
            self.limit = self.max_concurrency
            return True
        return False

    async def _follow_fleet(self) -> None:
        fleet = self.fleet
        due = self._fleet_throttled or self._clock() - self._fleet_synced_at >= self.fleet_sync_s
        if fleet is None or not due or self._fleet_syncing:
            return
        self._fleet_syncing = True
        successes, throttled = self._fleet_successes, self._fleet_throttled
        retry_after_s = self._fleet_retry_after_s
        self._fleet_successes, self._fleet_throttled, self._fleet_retry_after_s = 0, False, 0.0
        try:
            share, resume_in_s, pause = await fleet.sync(
                successes=successes, throttled=throttled, retry_after_s=retry_after_s
            )
        except Exception:  # the database is the fleet's: without it, go on as a lone process
            self._fleet_successes += successes
            self._fleet_throttled = self._fleet_throttled or throttled
            share, resume_in_s, pause = self.limit, 0.0, self._fleet_pause
        finally:
            self._fleet_syncing = False
            self._fleet_synced_at = self._clock()
        if self.fleet is fleet:
            self.limit = max(1, min(self.max_concurrency, share))
            if resume_in_s > 0 and pause != self._fleet_pause:
                self._resume_at = max(self._resume_at, self._clock() + resume_in_s)
            self._fleet_pause = pause
            if self._freed is not None and self._loop is asyncio.get_running_loop():
                async with self._freed:
                    self._freed.notify_all()  # a larger share admits waiters now

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._freed is None or self._loop is not loop:
            # A condition belongs to one loop; Mangum or a job handler may bring another.
            self._freed, self._loop, self.in_flight = asyncio.Condition(), loop, 0
        return self._freed

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        freed = self._condition()
        if self.fleet is not None:
            await self._follow_fleet()
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
        if self.fleet is not None:
            self._fleet_throttled = True
            self._fleet_retry_after_s = max(self._fleet_retry_after_s, wait)

    def succeeded(self) -> None:
        if self.fleet is not None:
            self._fleet_successes += 1
            return  # the fleet's allowance grows, not this process's own
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.max_concurrency:
            # One slot more; the next release wakes a waiter to use it.
            self.limit += 1
            self._successes = 0
