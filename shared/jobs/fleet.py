"""The fleet of invocations working bulk jobs shares one OpenRouter allowance, in Postgres.

OpenRouter publishes no rate for its management API; it answers 429 when it takes no more.
Each process's limiter learns that on its own, which is right for one process and wrong for a
fleet: ten invocations would each take the whole allowance, ten times over. So while a process
works a bulk job it joins the fleet (schema/migrations/0017_one_work_queue.sql): it reports
its successes and 429s every half second or at once on a 429, and takes as many calls at once
as the fleet's allowance divided among the workers alive. A worker that dies stops counting
when its lease runs out.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.jobs.repository import WorkQueueRepository
from shared.observability import logger
from shared.runtime import Runtime


class Fleet:
    def __init__(self, runtime: Runtime, worker: str, *, lease_s: int) -> None:
        self._runtime = runtime
        self.worker = worker
        self._lease_s = lease_s

    async def sync(
        self, *, successes: int, throttled: bool, retry_after_s: float, leave: bool = False
    ) -> tuple[int, float, object]:
        async with self._runtime.database().connection() as conn:
            share = await WorkQueueRepository(conn).fleet_share(
                self.worker,
                max_allowance=self._runtime.settings.openrouter_max_concurrency,
                lease_s=self._lease_s,
                successes=successes,
                throttled=throttled,
                retry_after_s=retry_after_s,
                leave=leave,
            )
        if throttled:
            logger.info(
                "openrouter fleet throttled",
                extra={"allowance": share.allowance, "workers": share.workers},
            )
        return share.share, share.resume_in_s, share.resume_at


@asynccontextmanager
async def fleet_member(runtime: Runtime, *, lease_s: int) -> AsyncIterator[Fleet]:
    """This process follows the fleet's share of OpenRouter until the block ends. The process
    is one worker of the fleet however many bulk jobs it works at once."""
    limiter = runtime.openrouter().limiter
    fleet = limiter.fleet if isinstance(limiter.fleet, Fleet) else None
    if fleet is None:
        worker = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fleet = Fleet(runtime, worker, lease_s=lease_s)
    limiter.join(fleet)
    try:
        yield fleet
    finally:
        if limiter.leave():
            try:
                await fleet.sync(successes=0, throttled=False, retry_after_s=0, leave=True)
            except Exception as error:  # its lease runs out by itself
                logger.warning("could not leave the fleet", extra={"error": type(error).__name__})
