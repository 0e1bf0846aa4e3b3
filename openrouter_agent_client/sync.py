"""The client for synchronous code (a Flask view, a Lambda handler without asyncio): the async
client on its own event loop in a background thread, so batching and flushing still happen in
the background while the caller's thread only waits for what it asked."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar

from openrouter_agent_client.client import AgentClient
from openrouter_agent_client.models import BudgetIncreaseGranted, RotationPolicy, Usage, UserInfo

T = TypeVar("T")


class SyncAgentClient:
    """AgentClient for synchronous callers: same arguments, same methods without ``await``.
    Use it as ``with SyncAgentClient(...) as agent``; close() flushes what is buffered."""

    def __init__(self, base_url: str, token: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="openrouter-agent-client", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def make() -> AgentClient:  # its httpx client belongs to this loop
            return AgentClient(base_url, token, **options)

        self._client = self._run(make())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def close(self) -> None:
        """Flush what is buffered, then stop the background loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    @property
    def client(self) -> AgentClient:
        """The async client underneath (its counters: dropped, failed, stored, ...)."""
        return self._client

    def user_key(self, user_id: str) -> str:
        return self._run(self._client.user_key(user_id))

    def forget_key(self, user_id: str, secret: str | None = None) -> None:
        if not self._closed:
            self._loop.call_soon_threadsafe(self._client.forget_key, user_id, secret)

    def chat(
        self, user_id: str, request: Mapping[str, Any], *, agent_name: str | None = None
    ) -> dict[str, Any]:
        return self._run(self._client.chat(user_id, request, agent_name=agent_name))

    def usage(self, user_id: str) -> Usage:
        return self._run(self._client.usage(user_id))

    def put_user(
        self,
        user_id: str,
        tier: str | None = None,
        rotation_policy: RotationPolicy | None = None,
        reason: str | None = None,
    ) -> UserInfo:
        return self._run(self._client.put_user(user_id, tier, rotation_policy, reason))

    def grant_budget_increase(
        self,
        user_id: str,
        amount_usd: Decimal | str | int,
        reason: str,
        ends_at: datetime | None = None,
    ) -> BudgetIncreaseGranted:
        return self._run(self._client.grant_budget_increase(user_id, amount_usd, reason, ends_at))

    def report(
        self,
        user_id: str,
        generation_id: str,
        model: str,
        cost_usd: Decimal | str | int | float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        agent_name: str | None = None,
    ) -> None:
        """Hand one generation to the background loop's buffer; returns at once."""
        if self._closed:  # the loop is gone: counted and logged as the client does
            self._client.report(user_id, generation_id, model, cost_usd)
            return
        self._loop.call_soon_threadsafe(
            self._client.report,
            user_id,
            generation_id,
            model,
            cost_usd,
            prompt_tokens,
            completion_tokens,
            agent_name,
        )

    def flush(self) -> None:
        self._run(self._client.flush())
