"""The async client of openrouter-agent: a platform's view of its users' keys and usage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from openrouter_agent_client.errors import (
    AgentError,
    BudgetExhausted,
    DailyCapReached,
    ModelNotAllowed,
    OpenRouterError,
)
from openrouter_agent_client.models import (
    BudgetIncreaseGranted,
    RotationPolicy,
    Usage,
    UsageReport,
    UserInfo,
)

logger = logging.getLogger("openrouter_agent_client")

# A revealed key is cached for as long as the service says (cache_for_s: 80 % of its rotation
# grace period, after which a rotated-out key stops working); this when it says nothing.
DEFAULT_KEY_TTL_S = 75.0
MAX_BATCH_EVENTS = 1000  # the service's limit per POST /api/usage/log
OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
# After OpenRouter refuses a key, how long chat() waits for the user's new key to appear: an
# emergency rotation disables every key first and makes the new ones after.
DEFAULT_REFRESH_WAIT_S = 10.0


class AgentClient:
    """Async client of openrouter-agent. Use it as ``async with AgentClient(...) as client``.

    The token is a service token: keys:read and keys:reveal for user_key() and chat(),
    usage:write for report() and chat(), usage:read for usage(), users:write for put_user().
    ``key_ttl_s`` caps how long a revealed key is cached (default: what the service says).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        openrouter_base_url: str = OPENROUTER_BASE_URL,
        key_ttl_s: float | None = None,
        refresh_wait_s: float = DEFAULT_REFRESH_WAIT_S,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        buffer_size: int = 10_000,
        batch_size: int = 100,
        batch_age_s: float = 2.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be within 1..{MAX_BATCH_EVENTS}")
        if buffer_size < 1 or max_attempts < 1:
            raise ValueError("buffer_size and max_attempts must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout_s)
        self._openrouter_base_url = openrouter_base_url.rstrip("/")
        self._key_ttl_s = key_ttl_s
        self._refresh_wait_s = refresh_wait_s
        self._clock = clock
        self._keys: dict[str, tuple[str, float, str | None]] = {}  # secret, until, key id
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._refreshing: dict[str, tuple[str, asyncio.Future[str | None]]] = {}
        self._unreplaced: dict[str, str] = {}  # user: id of a refused key with no successor
        self._generation: dict[str, int] = {}
        self._buffer: deque[UsageReport] = deque()
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._batch_age_s = batch_age_s
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0  # reports refused because the buffer was full
        self.failed = 0  # reports given up on: retries exhausted or refused by the service
        self.rejected = 0  # reports the service answered "rejected" for (invalid events)
        self.stored = 0
        self.duplicates = 0
        self.unpriced = 0  # completions whose response carried no usage cost (not reported)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush what is buffered, stop the background flusher, close the HTTP client."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:  # it sends what is buffered and stops
            self._wake.set()
            await self._flusher
            self._flusher = None
        try:
            await self.flush()
        finally:
            if self._owns_http:
                await self._http.aclose()

    # -- requests ------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(
                method, self._base_url + path, headers=self._headers, **kwargs
            )
        except httpx.HTTPError as error:
            raise AgentError(0, "network_error", _described(error)) from error
        if response.is_error:
            raise AgentError.of(response)
        return _decimal_json(response)

    # -- keys ----------------------------------------------------------------------------

    async def user_key(self, user_id: str) -> str:
        """The user's current OpenRouter key, revealed once per cache period and user.

        Concurrent calls for one user share one reveal. When OpenRouter refuses the key
        (401/403), call forget_key(): the next call reveals the current key. chat() does it.
        """
        cached = self._keys.get(user_id)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        pending = self._pending.get(user_id)
        if pending is None:
            # the generation when asked: a forget from now on keeps this reveal out of the cache
            generation = self._generation.get(user_id, 0)
            pending = asyncio.ensure_future(self._reveal(user_id, generation))
            pending.add_done_callback(self._reveal_done(user_id))
            self._pending[user_id] = pending
        return await asyncio.shield(pending)

    def _reveal_done(self, user_id: str) -> Callable[[asyncio.Future[str]], None]:
        def done(future: asyncio.Future[str]) -> None:
            if self._pending.get(user_id) is future:
                del self._pending[user_id]
            if not future.cancelled():
                future.exception()  # retrieved here, so an unawaited failure is not logged

        return done

    async def _reveal(self, user_id: str, generation: int) -> str:
        body = await self._request(
            "GET",
            f"/api/keys/user/{quote(user_id, safe='')}",
            params={"reveal": "true", "budget_layers": "false"},  # the key only: no OpenRouter
        )
        secret = body.get("secret") if isinstance(body, dict) else None
        if not isinstance(secret, str) or not secret:
            raise AgentError(200, "no_secret", "the service revealed no secret")
        ttl_s = self._cache_period(body.get("cache_for_s"))
        key = body.get("key")
        key_id = key.get("id") if isinstance(key, dict) else None
        if self._generation.get(user_id, 0) == generation:  # not forgotten meanwhile
            self._keys[user_id] = (secret, self._clock() + ttl_s, key_id)
        return secret

    def _cache_period(self, advised: Any) -> float:
        service_s = float(advised) if isinstance(advised, int | Decimal) else None
        periods = [p for p in (self._key_ttl_s, service_s) if p is not None]
        return min(periods) if periods else DEFAULT_KEY_TTL_S

    def forget_key(self, user_id: str, secret: str | None = None) -> None:
        """Drop the user's cached key (and any reveal in flight): the next call reveals.

        With ``secret``: only if that is the key cached, so that many requests finding the
        same refused key at once cost one reveal, not one each.
        """
        cached = self._keys.get(user_id)
        if secret is not None and cached is not None and cached[0] != secret:
            return  # another key is cached now: the refused one is already gone
        self._keys.pop(user_id, None)
        self._pending.pop(user_id, None)
        self._generation[user_id] = self._generation.get(user_id, 0) + 1

    async def _fresh_key(self, user_id: str, refused: str) -> str | None:
        """The user's key after OpenRouter refused ``refused``, or None when the service names
        no other (an admin disabled it). Until the service names another current key (an
        emergency disables the old one before it makes the new one), its metadata is read, up
        to refresh_wait_s: no reveal, so no audit row, until a new key is there to reveal. One
        wait per user however many calls found the key refused; a key already known to have no
        replacement costs one metadata read, no wait."""
        running = self._refreshing.get(user_id)
        if running is not None and running[0] == refused:  # found by another call: wait with it
            return await asyncio.shield(running[1])
        cached = self._keys.get(user_id)
        if cached is None or cached[0] != refused:  # another call refreshed it already
            return await self.user_key(user_id)
        wait_s = 0.0 if self._unreplaced.get(user_id) == cached[2] else self._refresh_wait_s
        refreshing = asyncio.ensure_future(self._new_key(user_id, refused, cached[2], wait_s))
        self._refreshing[user_id] = (refused, refreshing)

        def done(future: asyncio.Future[str | None]) -> None:
            if self._refreshing.get(user_id, (None, None))[1] is future:
                del self._refreshing[user_id]
            if not future.cancelled():
                future.exception()

        refreshing.add_done_callback(done)
        return await asyncio.shield(refreshing)

    async def _new_key(
        self, user_id: str, refused: str, refused_id: str | None, wait_s: float
    ) -> str | None:
        deadline = self._clock() + wait_s
        delay = 0.1
        while refused_id is not None:
            try:
                body = await self._request(
                    "GET",
                    f"/api/keys/user/{quote(user_id, safe='')}",
                    params={"budget_layers": "false"},
                )
            except AgentError as error:
                if error.status != 404 and not error.retryable:
                    raise
                body = None
            key = body.get("key") if isinstance(body, dict) else None
            if isinstance(key, dict) and key.get("id") != refused_id and not key.get("disabled"):
                break
            left = deadline - self._clock()
            if left <= 0:
                # No other key: keep the refused one cached (a reveal a call would fill the
                # audit; and if it is enabled again, the cached secret simply works again) and
                # remember it, so the next call does not wait again.
                self._unreplaced[user_id] = refused_id
                return None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
        self._unreplaced.pop(user_id, None)
        self.forget_key(user_id, refused)
        return await self.user_key(user_id)

    # -- one chat completion -------------------------------------------------------------

    async def chat(
        self, user_id: str, request: Mapping[str, Any], *, agent_name: str | None = None
    ) -> dict[str, Any]:
        """One OpenAI-compatible chat completion for the user, the whole sequence: their key,
        the call to OpenRouter (asking for its usage accounting), the usage report.

        A key OpenRouter refuses (a rotation or an emergency happened) is replaced by the
        user's current one and the call made once more. Raises BudgetExhausted when the
        user's budget is spent (402, or 403 "Key limit exceeded"): DailyCapReached when it is
        their tier's daily cap (a guardrail's budget), with when it resets; ModelNotAllowed
        when their tier does not allow the model or provider (the key is not revealed again);
        OpenRouterError for other refusals, AgentError when the service cannot give the key.
        Returns OpenRouter's answer (numbers as Decimal).
        """
        body = {**request, "usage": {"include": True}}
        key = await self.user_key(user_id)
        for attempt in (1, 2):
            try:
                response = await self._http.post(
                    self._openrouter_base_url + "/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json=body,
                )
            except httpx.HTTPError as error:
                raise OpenRouterError(0, _described(error)) from error
            if response.is_success:
                completion = _decimal_json(response)
                self._report_completion(user_id, completion, agent_name)
                return completion  # type: ignore[no-any-return]
            refused = OpenRouterError.of(response)
            if refused.guardrail_budget_spent:
                raise DailyCapReached(user_id, refused)
            if refused.spent:
                raise BudgetExhausted(user_id, refused)
            if refused.guardrail_restricted:
                model = request.get("model")
                raise ModelNotAllowed(user_id, model if isinstance(model, str) else None, refused)
            if not refused.key_refused or attempt == 2:
                raise refused
            logger.info("OpenRouter refused %s key (%d): revealing again", user_id, refused.status)
            fresh = await self._fresh_key(user_id, key)
            if fresh is None:  # the service names no other key: the refusal stands
                raise refused
            key = fresh
        raise AssertionError("unreachable")

    def _report_completion(self, user_id: str, completion: Any, agent_name: str | None) -> None:
        usage = completion.get("usage") if isinstance(completion, dict) else None
        cost = usage.get("cost") if isinstance(usage, dict) else None
        if not isinstance(cost, Decimal | int) or not isinstance(completion.get("id"), str):
            self.unpriced += 1
            logger.warning("a completion for %s carried no usage cost: not reported", user_id)
            return
        assert isinstance(usage, dict)
        self.report(
            user_id,
            completion["id"],
            str(completion.get("model") or "unknown"),
            Decimal(cost),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            agent_name,
        )

    # -- users and usage -----------------------------------------------------------------

    async def usage(self, user_id: str) -> Usage:
        """The user's current month: spent, limit and remaining in USD, and what OpenRouter
        enforces on their key now: ``budget_layers`` (the key's monthly limit, their tier's
        daily cap...) and ``blocked_by``, the layer with nothing left, if any."""
        body = await self._request("GET", f"/api/usage/{quote(user_id, safe='')}")
        return Usage.model_validate(body)

    async def put_user(
        self,
        user_id: str,
        tier: str | None = None,
        rotation_policy: RotationPolicy | None = None,
        reason: str | None = None,
    ) -> UserInfo:
        """Create or update the user (their tier and rotation policy)."""
        payload: dict[str, str] = {}
        if tier is not None:
            payload["tier"] = tier
        if rotation_policy is not None:
            payload["rotation_policy"] = rotation_policy
        if reason is not None:
            payload["reason"] = reason
        body = await self._request("PUT", f"/api/users/{quote(user_id, safe='')}", json=payload)
        return UserInfo.model_validate(body)

    async def grant_budget_increase(
        self,
        user_id: str,
        amount_usd: Decimal | str | int,
        reason: str,
        ends_at: datetime | None = None,
    ) -> BudgetIncreaseGranted:
        """Give the user extra budget until ``ends_at`` (default: the month's end), with a
        reason (users:write); their key's limit follows at once."""
        payload: dict[str, str] = {"amount_usd": str(_money(amount_usd)), "reason": reason}
        if ends_at is not None:
            if ends_at.tzinfo is None:
                raise ValueError("ends_at must carry a timezone")
            payload["ends_at"] = ends_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        body = await self._request(
            "POST", f"/api/users/{quote(user_id, safe='')}/budget-increases", json=payload
        )
        return BudgetIncreaseGranted.model_validate(body)

    # -- usage reports -------------------------------------------------------------------

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
        """Buffer one generation for the background flusher. Never blocks and never raises
        for the service's sake: an invalid report, one after close() and one that finds the
        buffer full are dropped (counted in ``dropped``, logged)."""
        if self._closed:
            self._drop(generation_id, "the client is closed")
            return
        try:
            event = UsageReport(
                user_id=user_id,
                generation_id=generation_id,
                model=model,
                cost_usd=_money(cost_usd),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                agent_name=agent_name,
            )
        except (ValueError, TypeError, ArithmeticError):
            self._drop(generation_id, "invalid")
            return
        if len(self._buffer) >= self._buffer_size:
            self._drop(generation_id, "the buffer is full")
            return
        self._buffer.append(event)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()
        if self._flusher is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside the loop: flush() or close() will send it
                return
            self._flusher = loop.create_task(self._flush_forever())

    def _drop(self, generation_id: object, why: str) -> None:
        self.dropped += 1
        logger.warning(
            "usage report of %.80s dropped: %s (%d dropped in all)",
            generation_id,
            why,
            self.dropped,
        )

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def _flush_forever(self) -> None:
        while not self._closed:
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(self._wake.wait(), timeout=self._batch_age_s)
            self._wake.clear()
            try:
                # woken by a full batch: full batches only, so a steady stream of reports is
                # not sent a few at a time; after batch_age_s: whatever waits
                await self._drain(full_only=woken and not self._closed)
            except Exception:  # the flusher outlives any one failure
                logger.exception("usage flush failed")

    async def flush(self) -> None:
        """Send everything buffered now, in batches, retrying what may succeed later."""
        await self._drain(full_only=False)

    async def _drain(self, *, full_only: bool) -> None:
        async with self._flush_lock:
            while self._buffer and (len(self._buffer) >= self._batch_size or not full_only):
                batch = [
                    self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))
                ]
                await self._send(batch)

    async def _send(self, batch: list[UsageReport]) -> None:
        payload = {"events": [event.body() for event in batch]}
        delay = self._backoff_s
        for attempt in range(1, self._max_attempts + 1):
            try:
                body = await self._request("POST", "/api/usage/log", json=payload)
            except AgentError as error:
                if error.status == 413 and len(batch) > 1:  # one large event: not the others
                    half = len(batch) // 2
                    await self._send(batch[:half])
                    await self._send(batch[half:])
                    return
                if not error.retryable or attempt == self._max_attempts:
                    self.failed += len(batch)
                    logger.error(
                        "usage batch of %d events given up after %d attempts: %s",
                        len(batch),
                        attempt,
                        error,
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
                continue
            self.stored += int(body.get("stored", 0))
            self.duplicates += int(body.get("duplicates", 0))
            rejected = int(body.get("rejected", 0))
            if rejected:
                self.rejected += rejected
                logger.warning("usage batch: %d events rejected by the service", rejected)
            return


def _decimal_json(response: httpx.Response) -> Any:
    # Money stays exact: JSON numbers with a fraction are read as Decimal, never float.
    return json.loads(response.content, parse_float=Decimal)


def _money(amount: Decimal | str | int | float) -> Decimal:
    # A float (from a plain json.loads of OpenRouter's answer) as it prints, 0.00016, not as
    # its binary expansion, 0.000159999999999999995...; bool is no amount.
    if isinstance(amount, bool):
        raise TypeError("a cost is a number")
    if isinstance(amount, float):
        return Decimal(repr(amount))
    return amount if isinstance(amount, Decimal) else Decimal(amount)


_BEARER = re.compile(r"bearer\s+\S+", re.IGNORECASE)


def _described(error: Exception) -> str:
    # httpx quotes an illegal header value in its message: never a credential in an error.
    return f"{type(error).__name__}: " + _BEARER.sub("Bearer [redacted]", str(error))
