"""An asyncio event loop whose clock moves only when nothing can happen before the next timer.

The bulk benchmark runs the real code (work lanes, the queue, the sagas, the limiter, the fleet
in PostgreSQL) against the emulator's 300 ms calls for hours of deployed time. Waiting those
hours is not possible, and compressing them would let the database's real time stretch the
figures. So time is virtual: while PostgreSQL is answering (a socket is registered), a thread
is working (an executor job is out), or a callback is ready, the clock stands still; when the
loop would only wait for a timer, the clock jumps to it. Every `asyncio.sleep`, deadline and
`loop.time()` reads this clock, so OpenRouter's latency, Retry-After, the invocations' time
budgets, the lanes' stagger and their once-a-minute schedule cost exactly their simulated time,
and the database and Python cost none: the figures are those of the schedule and of OpenRouter,
the costs that dominate in a deployment (where PostgreSQL has its own machine).

PostgreSQL's now() stays real: the code's leases and retry delays are in database time, so the
benchmark keeps work from failing into a retry delay (429s are waited out in the limiter).
"""

from __future__ import annotations

import asyncio
import selectors
import socket
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")

# With a socket registered but silent this long (a listener, not an answer on its way), the
# clock is allowed to move.
_SILENT_S = 2.0


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None
        self.wakeup_fd: int | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        if loop is None or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        ready = super().select(0)
        if ready:
            return ready
        busy = loop.executor_jobs > 0 or any(
            key.fd != self.wakeup_fd for key in self.get_map().values()
        )
        if busy:
            # Something real is on its way: wait for it in real time, the clock stopped.
            ready = super().select(_SILENT_S)
            if ready:
                return ready
        if timeout is None:
            return super().select(None)
        loop.advance(timeout)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        ssock: socket.socket = self._ssock  # type: ignore[attr-defined]
        selector.wakeup_fd = ssock.fileno()
        self._now = 0.0
        self.executor_jobs = 0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        self.executor_jobs += 1
        future = super().run_in_executor(executor, func, *args)

        def done(_: asyncio.Future[T]) -> None:
            self.executor_jobs -= 1

        future.add_done_callback(done)
        return future


def run(main: Any) -> Any:
    """asyncio.run on a virtual-time loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
