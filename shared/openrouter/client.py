"""Our thin OpenRouter key-management client on httpx (not the SDK: openrouter-api.md §5).

Retry policy, the part that matters most:
- GET, PATCH and DELETE are safe to repeat: retried on 429, 5xx, timeouts and network errors,
  with exponential backoff and full jitter, honouring Retry-After.
- POST /keys is retried only on 429, which refuses a call before it does anything. A create
  whose outcome we cannot know (timeout, 5xx, lost or unreadable response) raises
  OpenRouterOutcomeUnknown so the caller reconciles by key name. POST /guardrails likewise
  (reconcile by guardrail name).
- The guardrail key (un)assignments are POSTs that set where keys stand, so repeating one is
  harmless: they are retried like reads.
- DELETE answering 404 means the key (or guardrail) is already gone: success.
- GET /generation answering 404 means "not ready yet, or unknown": OpenRouterGenerationNotFound,
  never retried here (the caller asks again later).

Money is Decimal throughout: JSON numbers are parsed with parse_float=Decimal, unknown fields are
ignored and missing optional ones tolerated (shared/openrouter/models.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from enum import Enum, auto
from typing import Any, Final, Literal, TypeVar

import httpx
from pydantic import SecretStr

from shared import __version__
from shared.metrics import OPENROUTER_LATENCY, count_openrouter_error, milliseconds
from shared.observability import logger
from shared.openrouter.errors import (
    OpenRouterError,
    OpenRouterGenerationNotFound,
    OpenRouterInvalidResponse,
    OpenRouterNotFound,
    OpenRouterOutcomeUnknown,
    OpenRouterRateLimited,
    OpenRouterUnavailable,
    error_for_status,
)
from shared.openrouter.limiter import AdaptiveLimiter
from shared.openrouter.models import (
    ActivityItem,
    ApiKey,
    CreatedKey,
    Credits,
    CurrentKey,
    Generation,
    Guardrail,
    GuardrailKeyAssignment,
    InvalidOpenRouterPayload,
)

LimitReset = Literal["daily", "weekly", "monthly"]
PAGE_SIZE: Final = 100  # GET /keys's fixed page, and the largest page the guardrail lists take
_RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 504})
# 4xx answers that do not refuse the request itself: 401 and 403 say our management key does
# not work (our configuration: unavailable until it is fixed), 404 that the key is gone (the
# caller's to handle: a delete's success, a key lost at OpenRouter), 429 to slow down.
_NOT_REFUSALS: Final = frozenset({401, 403, 404, 429})


class _Unset(Enum):
    """Marks a PATCH field as not sent; None is a real value there (it removes a limit)."""

    UNSET = auto()


UNSET: Final = _Unset.UNSET
T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


def parse_retry_after(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from Retry-After (seconds or HTTP date) or retry-after-ms; None if absent."""
    if (milliseconds := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    reference = now or datetime.now(when.tzinfo)
    return max(0.0, (when - reference).total_seconds())


def is_refusal(error: OpenRouterError) -> bool:
    """Whether OpenRouter refused what we asked (any other 4xx: 400, 402, 409, 422...).

    Not an outage: the same call is refused again, so it is never retried and our caller gets
    a 502 openrouter_refused, not a 503 that says to retry later.
    """
    status = error.status_code
    return status is not None and 400 <= status < 500 and status not in _NOT_REFUSALS


def _decode_json(response: httpx.Response) -> Any:
    # parse_float=Decimal keeps 0.004 as 0.004: binary floats never enter our books.
    return json.loads(response.content, parse_float=Decimal)


def _money_to_json(amount: Decimal | None) -> float | None:
    return None if amount is None else float(amount)


def _names_to_json(names: Sequence[str] | None, field: str) -> list[str] | None:
    """An allowlist as OpenRouter takes it: None (no restriction) or at least one name."""
    if names is None:
        return None
    if isinstance(names, str) or not names:
        raise ValueError(f"{field} must be None or a non-empty list of names")
    return list(names)


def expires_at_to_json(moment: datetime) -> str:
    """An expiry as OpenRouter takes it: the same instant in UTC, with seconds, "...Z".

    OpenRouter refuses other offsets and minute precision (openrouter-api.md §2.2), so an aware
    datetime in any zone is converted (12:00+02:00 is sent as 10:00:00Z). A naive datetime is
    refused with ValueError: which instant it means depends on a machine's local zone, and an
    expiry off by hours is a security fault. Sub-second precision is dropped (OpenRouter would
    take it; we have no use for it).
    """
    offset = moment.utcoffset()
    if moment.tzinfo is None or offset is None:
        raise ValueError(
            f"expires_at {moment.isoformat()} has no timezone: pass an aware datetime "
            "(datetime(..., tzinfo=UTC)), it is sent converted to UTC"
        )
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hashes_to_json(key_hashes: Sequence[str]) -> list[str]:
    if isinstance(key_hashes, str) or not key_hashes or not all(key_hashes):
        raise ValueError("key_hashes must be a non-empty list of key hashes")
    return list(key_hashes)


def _count(body: Any, field: str, what: str) -> int:
    value = body.get(field) if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpenRouterInvalidResponse(f"{what}: response has no {field}")
    return value


def _parse(parser: Callable[[Any], T], data: Any, what: str) -> T:
    try:
        return parser(data)
    except InvalidOpenRouterPayload as exc:
        raise OpenRouterInvalidResponse(f"{what}: {exc}") from exc


class OpenRouterClient:
    def __init__(
        self,
        *,
        management_key: SecretStr,
        base_url: str = "https://openrouter.ai/api/v1",
        timeout_s: float = 10.0,
        max_retries: int = 3,
        max_retry_after_s: float = 30.0,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        limiter: AdaptiveLimiter | None = None,
    ) -> None:
        self._management_key = management_key
        self._base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout_s)
        self._max_retries = max_retries
        self._max_retry_after_s = max_retry_after_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._transport = transport
        self._sleep = sleep
        # Every call of this client (of the process, in practice) shares one limit, which a
        # 429 lowers for all: a bulk job slows down as a whole.
        self.limiter = limiter or AdaptiveLimiter(32, sleep=sleep, clock=clock)
        self._http: httpx.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenRouterClient(base_url={self._base_url!r})"

    def _client(self) -> httpx.AsyncClient:
        # Built on first use and kept for warm invocations; rebuilt if the event loop changed,
        # since an httpx.AsyncClient cannot be shared across loops.
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http = httpx.AsyncClient(
                base_url=self._base_url,
                timeout=self._timeout,
                transport=self._transport,
                headers={
                    "Authorization": f"Bearer {self._management_key.get_secret_value()}",
                    "User-Agent": f"openrouter-agent/{__version__}",
                },
            )
            self._http_loop = loop
        return self._http

    async def aclose(self) -> None:
        client, self._http, self._http_loop = self._http, None, None
        if client is not None:
            await client.aclose()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_max_s, self._backoff_base_s * (2**attempt))
        # Jitter, not a secret.
        return random.uniform(0, ceiling)  # noqa: S311  # nosec B311

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
        api_key: str | None = None,
        retries: int | None = None,
    ) -> Any:
        """`api_key`: authenticate as this key instead of the management key (a user's GET
        /key). `retries`: at most this many tries again (default: the client's)."""
        # A POST is retried only when it is idempotent (its caller says so); the rest always.
        retryable = method != "POST" if idempotent is None else idempotent
        max_retries = self._max_retries if retries is None else retries
        headers = None if api_key is None else {"Authorization": f"Bearer {api_key}"}
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                async with self.limiter.slot():
                    started = time.perf_counter()  # the call's own time, not the queue's
                    response = await self._client().request(
                        method, path, params=params, json=body, headers=headers
                    )
            except httpx.TransportError as exc:
                sent = not isinstance(
                    exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
                )
                logger.warning(
                    "openrouter call failed without a response",
                    extra={
                        "method": method,
                        "path": path,
                        "attempt": attempt,
                        "error": type(exc).__name__,
                    },
                )
                count_openrouter_error(0)  # no status: the call got no response
                if not retryable:
                    if sent:
                        raise OpenRouterOutcomeUnknown(
                            f"no response to {method} {path}: {type(exc).__name__}"
                        ) from exc
                    raise OpenRouterUnavailable(f"could not reach OpenRouter: {exc!r}") from exc
                if attempt >= max_retries:
                    raise OpenRouterUnavailable(
                        f"no response to {method} {path} after {attempt + 1} attempts"
                    ) from exc
                await self._sleep(self._backoff(attempt))
                attempt += 1
                continue

            elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
            milliseconds(OPENROUTER_LATENCY, elapsed_ms)
            if response.status_code >= 400:
                count_openrouter_error(response.status_code)
            logger.debug(
                "openrouter call",
                extra={
                    "method": method,
                    "path": path,
                    "status": response.status_code,
                    "attempt": attempt,
                    "duration_ms": elapsed_ms,
                },
            )
            if response.status_code == 429:
                self.limiter.throttled(parse_retry_after(response.headers))
            elif response.status_code < 400:
                self.limiter.succeeded()
            if response.status_code < 400:
                try:
                    return _decode_json(response)
                except ValueError as exc:
                    error_class = (
                        OpenRouterOutcomeUnknown if not retryable else (OpenRouterInvalidResponse)
                    )
                    raise error_class(
                        f"unreadable {response.status_code} body from {method} {path}",
                        status_code=response.status_code,
                    ) from exc

            try:
                error_body = _decode_json(response)
            except ValueError:
                error_body = None
            retry_after = parse_retry_after(response.headers)
            error = error_for_status(response.status_code, error_body, retry_after_s=retry_after)
            if not retryable and response.status_code != 429:
                # A 429 refused the call before doing anything, so a create is retried too.
                if response.status_code >= 500:
                    raise OpenRouterOutcomeUnknown(
                        error.message, status_code=response.status_code
                    ) from error
                raise error
            if response.status_code not in _RETRYABLE_STATUS or attempt >= max_retries:
                raise error
            if retry_after is not None and retry_after > self._max_retry_after_s:
                raise error  # waiting that long would outlive a function invocation
            if response.status_code != 429:
                # A 429 needs no wait here: the limiter pauses every call for its Retry-After,
                # this retry included.
                await self._sleep(
                    retry_after if retry_after is not None else self._backoff(attempt)
                )
            attempt += 1

    @staticmethod
    def _data(body: Any, what: str) -> Any:
        if not isinstance(body, dict) or "data" not in body:
            raise OpenRouterInvalidResponse(f"{what}: response has no data")
        return body["data"]

    async def list_keys(
        self,
        *,
        offset: int = 0,
        include_disabled: bool = False,
        include_expired: bool = False,
        workspace_id: str | None = None,
    ) -> list[ApiKey]:
        """One page (at most 100, newest first) of GET /keys."""
        params: dict[str, str | int] = {
            "offset": offset,
            "include_disabled": "true" if include_disabled else "false",
        }
        if include_expired:
            params["include_expired"] = "true"
        if workspace_id is not None:
            params["workspace_id"] = workspace_id
        data = self._data(await self._request("GET", "/keys", params=params), "list keys")
        if not isinstance(data, list):
            raise OpenRouterInvalidResponse("list keys: data is not a list")
        return [_parse(ApiKey.from_json, item, "list keys") for item in data]

    async def list_all_keys(
        self, *, include_disabled: bool = True, include_expired: bool = True
    ) -> list[ApiKey]:
        """Every key, paging by offset until a short page; de-duplicated by hash.

        A key created while we page shifts later pages by one, so the same key can appear twice.
        """
        seen: dict[str, ApiKey] = {}
        offset = 0
        while True:
            page = await self.list_keys(
                offset=offset, include_disabled=include_disabled, include_expired=include_expired
            )
            for key in page:
                seen.setdefault(key.hash, key)
            if len(page) < PAGE_SIZE:
                return list(seen.values())
            offset += PAGE_SIZE

    async def create_key(
        self,
        *,
        name: str,
        limit: Decimal | None = None,
        limit_reset: LimitReset | None = None,
        include_byok_in_limit: bool | None = None,
        expires_at: datetime | None = None,
        external_user: str | None = None,
    ) -> CreatedKey:
        """POST /keys, exactly once. The secret is in the result and nowhere else.

        expires_at must be timezone-aware (ValueError otherwise, before anything is sent); it
        is sent as the same instant in UTC (see expires_at_to_json). external_user (1 to 512
        characters, ValueError otherwise) is OpenRouter's `external.user`: the partner end-user
        id, returned as `external_user` on the key object and on every generation the key
        makes, so OpenRouter's own records name our user.
        """
        if external_user is not None and not 1 <= len(external_user) <= 512:
            raise ValueError("external_user must be 1 to 512 characters")
        expires = None if expires_at is None else expires_at_to_json(expires_at)
        body: dict[str, Any] = {"name": name, "limit": _money_to_json(limit)}
        if limit_reset is not None:
            body["limit_reset"] = limit_reset
        if include_byok_in_limit is not None:
            body["include_byok_in_limit"] = include_byok_in_limit
        if expires is not None:
            body["expires_at"] = expires
        if external_user is not None:
            body["external"] = {"user": external_user}
        response = await self._request("POST", "/keys", body=body)
        try:
            return CreatedKey.from_json(response)
        except InvalidOpenRouterPayload as exc:
            # The key exists at OpenRouter but we could not read it: only reconciliation helps.
            raise OpenRouterOutcomeUnknown(f"create key: {exc}", status_code=201) from exc

    async def get_key(self, key_hash: str) -> ApiKey:
        data = self._data(await self._request("GET", f"/keys/{key_hash}"), "get key")
        return _parse(ApiKey.from_json, data, "get key")

    async def update_key(
        self,
        key_hash: str,
        *,
        name: str | _Unset = UNSET,
        disabled: bool | _Unset = UNSET,
        limit: Decimal | _Unset | None = UNSET,
        limit_reset: LimitReset | _Unset | None = UNSET,
        include_byok_in_limit: bool | _Unset = UNSET,
    ) -> ApiKey:
        """PATCH /keys/{hash} with only the fields given (None is sent, meaning 'remove')."""
        body: dict[str, Any] = {}
        for field, value in (
            ("name", name),
            ("disabled", disabled),
            ("limit_reset", limit_reset),
            ("include_byok_in_limit", include_byok_in_limit),
        ):
            if value is not UNSET:
                body[field] = value
        if not isinstance(limit, _Unset):
            body["limit"] = _money_to_json(limit)
        if not body:
            raise ValueError("update_key needs at least one field")
        data = self._data(await self._request("PATCH", f"/keys/{key_hash}", body=body), "update")
        return _parse(ApiKey.from_json, data, "update key")

    async def delete_key(self, key_hash: str) -> bool:
        """DELETE /keys/{hash}; True if deleted now, False if it was already gone (404)."""
        try:
            await self._request("DELETE", f"/keys/{key_hash}")
        except OpenRouterNotFound:
            return False
        return True

    async def get_current_key(
        self, *, api_key: str | None = None, retries: int | None = None
    ) -> CurrentKey:
        """GET /key: the management key's, or with `api_key` a user key's own (its budgets)."""
        answer = await self._request("GET", "/key", api_key=api_key, retries=retries)
        return _parse(CurrentKey.from_json, self._data(answer, "current key"), "current key")

    async def get_credits(self) -> Credits:
        data = self._data(await self._request("GET", "/credits"), "credits")
        return _parse(Credits.from_json, data, "credits")

    async def list_guardrails(
        self, *, offset: int = 0, limit: int = PAGE_SIZE, workspace_id: str | None = None
    ) -> list[Guardrail]:
        """One page of GET /guardrails (at most `limit`, 1 to 100): the default workspace's
        guardrails unless workspace_id says, its default guardrail among them."""
        params: dict[str, str | int] = {"offset": offset, "limit": limit}
        if workspace_id is not None:
            params["workspace_id"] = workspace_id
        body = await self._request("GET", "/guardrails", params=params)
        data = self._data(body, "list guardrails")
        if not isinstance(data, list):
            raise OpenRouterInvalidResponse("list guardrails: data is not a list")
        return [_parse(Guardrail.from_json, item, "list guardrails") for item in data]

    async def list_all_guardrails(self, *, workspace_id: str | None = None) -> list[Guardrail]:
        """Every guardrail of a workspace, paging by offset until a short page; de-duplicated
        by id (a guardrail created while we page shifts later pages)."""
        seen: dict[str, Guardrail] = {}
        offset = 0
        while True:
            page = await self.list_guardrails(offset=offset, workspace_id=workspace_id)
            for guardrail in page:
                seen.setdefault(guardrail.id, guardrail)
            if len(page) < PAGE_SIZE:
                return list(seen.values())
            offset += PAGE_SIZE

    async def create_guardrail(
        self,
        *,
        name: str,
        description: str | None = None,
        limit_usd: Decimal | None = None,
        reset_interval: LimitReset | None = None,
        allowed_models: Sequence[str] | None = None,
        allowed_providers: Sequence[str] | None = None,
        include_byok_in_budgets: bool | None = None,
        workspace_id: str | None = None,
    ) -> Guardrail:
        """POST /guardrails, exactly once (it is not idempotent): a guardrail that enforces
        nothing until keys are assigned to it. A budget is limit_usd per key per reset_interval
        (UTC windows); OpenRouter refuses one without the other, so does this (ValueError,
        before anything is sent), and an empty allowlist (None allows everything). An
        unknown outcome raises OpenRouterOutcomeUnknown: reconcile by name
        (list_all_guardrails)."""
        if (limit_usd is None) != (reset_interval is None):
            raise ValueError("limit_usd and reset_interval go together: give both or neither")
        body: dict[str, Any] = {"name": name}
        if description is not None:
            body["description"] = description
        if limit_usd is not None:
            body["limit_usd"] = _money_to_json(limit_usd)
            body["reset_interval"] = reset_interval
        for field, names in (
            ("allowed_models", allowed_models),
            ("allowed_providers", allowed_providers),
        ):
            if names is not None:
                body[field] = _names_to_json(names, field)
        if include_byok_in_budgets is not None:
            body["include_byok_in_budgets"] = include_byok_in_budgets
        if workspace_id is not None:
            body["workspace_id"] = workspace_id
        response = await self._request("POST", "/guardrails", body=body)
        try:
            return Guardrail.from_json(self._data(response, "create guardrail"))
        except (InvalidOpenRouterPayload, OpenRouterInvalidResponse) as exc:
            # The guardrail exists at OpenRouter but we could not read it: reconcile by name.
            raise OpenRouterOutcomeUnknown(f"create guardrail: {exc}", status_code=201) from exc

    async def get_guardrail(self, guardrail_id: str) -> Guardrail:
        """GET /guardrails/{id}; OpenRouterNotFound for an unknown id, and for a workspace
        default guardrail not configured yet."""
        data = self._data(await self._request("GET", f"/guardrails/{guardrail_id}"), "guardrail")
        return _parse(Guardrail.from_json, data, "get guardrail")

    async def update_guardrail(
        self,
        guardrail_id: str,
        *,
        name: str | _Unset = UNSET,
        description: str | _Unset | None = UNSET,
        limit_usd: Decimal | _Unset | None = UNSET,
        reset_interval: LimitReset | _Unset | None = UNSET,
        allowed_models: Sequence[str] | _Unset | None = UNSET,
        allowed_providers: Sequence[str] | _Unset | None = UNSET,
        include_byok_in_budgets: bool | _Unset = UNSET,
    ) -> Guardrail:
        """PATCH /guardrails/{id} with only the fields given (None is sent, meaning 'remove':
        no budget, no allowlist). Lists replace the guardrail's whole. Changing a budget keeps
        what was spent in its window (OpenRouter has no manual reset). To remove a budget send
        limit_usd=None and reset_interval=None together."""
        body: dict[str, Any] = {}
        for field, value in (
            ("name", name),
            ("description", description),
            ("reset_interval", reset_interval),
            ("include_byok_in_budgets", include_byok_in_budgets),
        ):
            if value is not UNSET:
                body[field] = value
        if not isinstance(limit_usd, _Unset):
            body["limit_usd"] = _money_to_json(limit_usd)
        for field, names in (
            ("allowed_models", allowed_models),
            ("allowed_providers", allowed_providers),
        ):
            if not isinstance(names, _Unset):
                body[field] = _names_to_json(names, field)
        if not body:
            raise ValueError("update_guardrail needs at least one field")
        path = f"/guardrails/{guardrail_id}"
        data = self._data(await self._request("PATCH", path, body=body), "update guardrail")
        return _parse(Guardrail.from_json, data, "update guardrail")

    async def delete_guardrail(self, guardrail_id: str) -> bool:
        """DELETE /guardrails/{id}, which frees its keys; True if deleted now, False if it was
        already gone (404)."""
        try:
            await self._request("DELETE", f"/guardrails/{guardrail_id}")
        except OpenRouterNotFound:
            return False
        return True

    async def assign_keys_to_guardrail(self, guardrail_id: str, key_hashes: Sequence[str]) -> int:
        """POST /guardrails/{id}/assignments/keys: the keys now hold this guardrail (a key holds
        at most one: one of another guardrail moves here). Returns OpenRouter's assigned_count;
        fewer than asked means some hashes named no key. Retried like a read (harmless)."""
        body = {"key_hashes": _hashes_to_json(key_hashes)}
        path = f"/guardrails/{guardrail_id}/assignments/keys"
        response = await self._request("POST", path, body=body, idempotent=True)
        return _count(response, "assigned_count", "assign keys")

    async def unassign_keys_from_guardrail(
        self, guardrail_id: str, key_hashes: Sequence[str]
    ) -> int:
        """POST /guardrails/{id}/assignments/keys/remove: the keys no longer hold this
        guardrail. Returns OpenRouter's unassigned_count (keys that held it). Retried like a
        read (harmless)."""
        body = {"key_hashes": _hashes_to_json(key_hashes)}
        path = f"/guardrails/{guardrail_id}/assignments/keys/remove"
        response = await self._request("POST", path, body=body, idempotent=True)
        return _count(response, "unassigned_count", "unassign keys")

    async def list_key_assignments(
        self, *, guardrail_id: str | None = None, offset: int = 0, limit: int = PAGE_SIZE
    ) -> list[GuardrailKeyAssignment]:
        """One page of key assignments: one guardrail's (GET /guardrails/{id}/assignments/keys)
        or, without guardrail_id, the account's (GET /guardrails/assignments/keys)."""
        path = (
            "/guardrails/assignments/keys"
            if guardrail_id is None
            else f"/guardrails/{guardrail_id}/assignments/keys"
        )
        params: dict[str, str | int] = {"offset": offset, "limit": limit}
        data = self._data(await self._request("GET", path, params=params), "key assignments")
        if not isinstance(data, list):
            raise OpenRouterInvalidResponse("key assignments: data is not a list")
        return [_parse(GuardrailKeyAssignment.from_json, item, "key assignments") for item in data]

    async def count_key_assignments(self, guardrail_id: str) -> int:
        """How many keys the guardrail holds (its listing's total_count, one small call)."""
        body = await self._request(
            "GET", f"/guardrails/{guardrail_id}/assignments/keys", params={"offset": 0, "limit": 1}
        )
        total = body.get("total_count") if isinstance(body, dict) else None
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise OpenRouterInvalidResponse("key assignments: no total_count")
        return total

    async def list_all_key_assignments(
        self, *, guardrail_id: str | None = None
    ) -> list[GuardrailKeyAssignment]:
        """Every key assignment (of one guardrail, or of the account), paging until a short
        page; one per key hash (a key holds one guardrail; one moved while we page is kept as
        first seen)."""
        seen: dict[str, GuardrailKeyAssignment] = {}
        offset = 0
        while True:
            page = await self.list_key_assignments(guardrail_id=guardrail_id, offset=offset)
            for assignment in page:
                seen.setdefault(assignment.key_hash, assignment)
            if len(page) < PAGE_SIZE:
                return list(seen.values())
            offset += PAGE_SIZE

    async def get_generation(self, generation_id: str) -> Generation:
        """GET /generation?id=: what OpenRouter counted for one request (its `gen-...` id).

        Any valid key may ask; this client asks with the management key. Raises
        OpenRouterGenerationNotFound on 404, which means "not ready yet" for a second or more
        after the request completed, and "unknown" only if it persists: the caller retries
        later. Like every read, 429 and 5xx are retried here, through the shared limiter.
        """
        if not generation_id:
            raise ValueError("get_generation needs a generation id")
        try:
            body = await self._request("GET", "/generation", params={"id": generation_id})
        except OpenRouterNotFound as missing:
            raise OpenRouterGenerationNotFound(
                missing.message,
                status_code=missing.status_code,
                metadata=missing.metadata,
                retry_after_s=missing.retry_after_s,
            ) from missing
        return _parse(Generation.from_json, self._data(body, "generation"), "generation")

    async def get_activity(
        self, api_key_hash: str | None = None, date: date | None = None
    ) -> list[ActivityItem]:
        """GET /activity: usage per UTC day, model and endpoint over the last 30 completed UTC
        days (today is never included), management key required.

        With api_key_hash, only that key's use (deleted keys included); without, the whole
        account's, summed over its keys (a row names no key). With date, only that day, which
        must be one of the 30 (OpenRouter answers 400 otherwise: OpenRouterBadRequest).
        Requests are dated by their start, so a day's rows may still grow for a while after
        midnight UTC (OpenRouter advises waiting ~30 minutes before reading the day just past).
        """
        params: dict[str, str | int] = {}
        if api_key_hash is not None:
            params["api_key_hash"] = api_key_hash
        if date is not None:
            params["date"] = date.isoformat()
        data = self._data(await self._request("GET", "/activity", params=params), "activity")
        if not isinstance(data, list):
            raise OpenRouterInvalidResponse("activity: data is not a list")
        return [_parse(ActivityItem.from_json, item, "activity") for item in data]


__all__ = [
    "PAGE_SIZE",
    "OpenRouterClient",
    "OpenRouterError",
    "OpenRouterGenerationNotFound",
    "OpenRouterRateLimited",
    "expires_at_to_json",
    "is_refusal",
    "parse_retry_after",
]
