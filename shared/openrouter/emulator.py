"""A stateful local stand-in for OpenRouter's key management API (openrouter-api.md §1-§4).

It serves GET/POST /keys, GET/PATCH/DELETE /keys/{hash}, GET /key, GET /credits,
GET /generation and GET /activity with the documented shapes, errors and status codes (every
answer validates under the official SDK's models: tests/openrouter/test_sdk_conformance.py),
keeps limit windows the way OpenRouter does (UTC days, Monday-to-Sunday weeks, calendar
months), lets tests spend on a key the way inference would, and injects faults: latency, 429
with Retry-After, 5xx, timeouts and a create whose response is lost after the key was made.

Every billed request leaves a generation record, as OpenRouter's do: GET /generation?id= serves
it once `generation_delay_s` has passed since it was billed (404 before, as OpenRouter lags),
and GET /activity sums them per completed UTC day (of each request's start), model and
endpoint, for one key or the whole account. Python-side: Emulator.generation(id) and
Emulator.generations(key_hash) read the records whatever their readiness.

Spending, as OpenRouter bills it: a request is admitted against the key's limit as it stands
(what was billed, plus the worst case of requests still in flight on that key), and billed when
it completes, `duration_s` later; a request admitted before a limit was lowered, or before the
key was disabled or deleted, is still billed. Deleted keys keep their books here (state()), as
OpenRouter keeps the account's spend, so a checker can sum everything a user's keys spent.

Guardrails (GET/POST /guardrails, GET/PATCH/DELETE /guardrails/{id}, key assignments under
/guardrails/{id}/assignments/keys and /guardrails/assignments/keys; management key only) are
kept and enforced as OpenRouter documents them: a key holds at most one guardrail (assigning it
to another moves it), each workspace has a default guardrail that applies to all its keys once
configured, and on every charge the guardrails' budgets (per key, over the guardrail's UTC
window), model allowlists and provider allowlists are checked before the key's own limit.
GET /key reports each budget layer (budgets[], effective_budget). What OpenRouter does not
document is marked "(guess)" where it is decided.

Latency is applied after a request has been handled, before its answer is sent: a crash of the
caller during it lands between "key made" and "answer received".

Two ways to run it: in process through `Emulator.transport()` (httpx's ASGI transport; connection
faults surface as httpx exceptions), or as a local server (`openrouter-agent emulator`;
connection faults surface as a stalled response that the client's timeout cuts off).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

API_PREFIX = "/api/v1"
PAGE_SIZE = 100
LIMIT_RESETS = ("daily", "weekly", "monthly")
_PATCHABLE = ("name", "disabled", "limit", "limit_reset", "include_byok_in_limit", "workspace_id")
DEFAULT_WORKSPACE_ID = "00000000-0000-4000-8000-000000000000"
# What a charge was made with when it does not say: a cheap, real model slug and its provider.
DEFAULT_MODEL = "openai/gpt-4o-mini"
DEFAULT_PROVIDER = "OpenAI"
CHAT_USD_PER_TOKEN = Decimal("0.00001")
CHAT_REPLY_TOKENS = 12  # what an emulated reply costs in completion tokens (at most max_tokens)
ACTIVITY_DAYS = 30  # GET /activity serves the last 30 completed UTC days
# Free-model requests per UTC day for accounts under / at or above $10 of credits (DOC-limits).
FREE_MODEL_DAILY_LIMITS = (50, 1000)
FREE_MODEL_CREDITS_THRESHOLD = Decimal(10)
# Guardrail lists (GET /guardrails and the assignment lists) page by offset and limit: the
# limit defaults to 50 and may be 1 to 100 (SDK ListGuardrailsRequest; the OpenAPI spec).
GUARDRAIL_PAGE_DEFAULT = 50
GUARDRAIL_PAGE_MAX = 100
GUARDRAIL_LISTS = ("allowed_models", "allowed_providers", "ignored_models", "ignored_providers")
# Per-model-group zero data retention; the deprecated enforce_zdr is copied into those of them
# a request does not set (SDK CreateGuardrailRequest).
ZDR_FLAGS = (
    "enforce_zdr_anthropic",
    "enforce_zdr_google",
    "enforce_zdr_openai",
    "enforce_zdr_other",
    "enforce_zdr_xai",
)
# A guardrail's privacy switches: kept and answered, never enforced here (the emulator has no
# endpoint catalog with retention or training policies).
GUARDRAIL_FLAGS = (
    "allow_safety_retention_google",
    "allow_safety_retention_other",
    "enable_free_model_publication",
    "enable_free_model_training",
    "enable_paid_model_training",
    "enforce_zdr",
    *ZDR_FLAGS,
)
DATA_REGIONS = ("global", "europe", "us")
# The emulated account has no regional routing: its requests arrive through openrouter.ai.
ACCOUNT_DATA_REGIONS = ("global",)
GUARDRAIL_SETTINGS_URL = "https://openrouter.ai/settings/privacy"
# OpenRouter's answer when the endpoints left after guardrail filtering are none (404, observed
# verbatim in many reports, e.g. https://github.com/truefoundry/models/pull/826).
NO_ENDPOINTS_MESSAGE = (
    "No endpoints available matching your guardrail restrictions and data policy. "
    f"Configure: {GUARDRAIL_SETTINGS_URL}"
)
# Budget scopes (SDK KeyBudgetScope) as the guardrail_scope a refusal's metadata names them.
_GUARDRAIL_SCOPES = {"workspace_default_key": "workspace-default", "api_key": "api-key"}

FaultKind = Literal["status", "latency", "timeout", "lost_response"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(amount: Decimal | None) -> float | None:
    # JSON has no decimal type; OpenRouter sends plain numbers, and so do we.
    return None if amount is None else float(amount)


def new_secret() -> str:
    return "sk-or-v1-" + secrets.token_hex(32)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_generation_id() -> str:
    """A fresh id shaped like OpenRouter's (`gen-<unix seconds>-<20 letters and digits>`).

    Pass one to Emulator.charge/spend (generation_id=) to know a charge's id beforehand.
    """
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    tail = "".join(secrets.choice(alphabet) for _ in range(20))
    return f"gen-{int(datetime.now(UTC).timestamp())}-{tail}"


def endpoint_id(model: str, provider_name: str) -> str:
    """The stable uuid the emulator gives a model's endpoint at a provider (/activity rows)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"openrouter-emulator:{provider_name}:{model}"))


@dataclass(slots=True)
class Charge:
    at: datetime
    amount: Decimal
    byok: bool


@dataclass(slots=True)
class EmulatedGeneration:
    """What OpenRouter records of one billed request: the source of GET /generation and
    GET /activity. `cost` is what the request cost, in credits unless `byok` (then it is the
    provider's bill, and OpenRouter's credit charge is zero here: the emulator takes no BYOK
    fee). `created_at` is the request's start (activity is dated by it), `billed_at` its
    completion, when its cost entered the key's usage; GET /generation serves it from
    billed_at + Emulator.generation_delay_s on. `key_hash` is the emulator's own bookkeeping:
    OpenRouter's generation JSON names no key."""

    id: str
    key_hash: str
    model: str
    provider_name: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cost: Decimal
    byok: bool
    external_user: str | None
    workspace_id: str
    created_at: datetime
    billed_at: datetime


@dataclass(frozen=True, slots=True)
class _RequestDetails:
    """What a charge says about the request it stands for, checked (see _request_details)."""

    generation_id: str
    model: str
    provider_name: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int


@dataclass(slots=True)
class EmulatedKey:
    hash: str
    secret: str  # in this process's memory only ("" otherwise): a state file keeps its digest
    name: str
    sequence: int
    created_at: datetime
    limit: Decimal | None = None
    limit_reset: str | None = None
    include_byok_in_limit: bool = False
    disabled: bool = False
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    creator_user_id: str | None = None
    workspace_id: str = DEFAULT_WORKSPACE_ID
    external_user: str | None = None
    last_used_at: datetime | None = None
    is_management: bool = False
    charges: list[Charge] = field(default_factory=list)
    in_flight: Decimal = Decimal(0)  # worst case of requests admitted and not yet billed
    deleted_at: datetime | None = None
    secret_digest: str = ""
    label: str = ""
    # Worst case of the requests in flight on the key, by kind, whatever the key's limit
    # counts: guardrail budgets count BYOK spend by their own switch (in_flight is the key
    # limit's share).
    pending_credit: Decimal = Decimal(0)
    pending_byok: Decimal = Decimal(0)


@dataclass(slots=True)
class EmulatedGuardrail:
    """A guardrail as OpenRouter keeps it (SDK components.Guardrail). `flags` holds the privacy
    switches (GUARDRAIL_FLAGS), kept and answered but not enforced; content filters likewise.
    A workspace's default guardrail (`workspace_default`) exists from the start, is listed,
    but reads as 404 until a PATCH configures it (`configured`), as OpenRouter's spec says."""

    id: str
    name: str
    workspace_id: str | None
    created_at: datetime
    description: str | None = None
    limit_usd: Decimal | None = None
    reset_interval: str | None = None
    include_byok_in_budgets: bool = False
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    ignored_models: list[str] | None = None
    ignored_providers: list[str] | None = None
    allowed_data_regions: list[str] | None = None
    content_filters: list[dict[str, Any]] | None = None
    content_filter_builtins: list[dict[str, Any]] | None = None
    flags: dict[str, bool | None] = field(default_factory=dict)
    updated_at: datetime | None = None
    workspace_default: bool = False
    configured: bool = True


@dataclass(slots=True)
class EmulatedKeyAssignment:
    """A key's (single) guardrail assignment (SDK components.KeyAssignment)."""

    id: str
    key_hash: str
    guardrail_id: str
    created_at: datetime
    assigned_by: str | None = None


@dataclass(slots=True)
class Fault:
    """One injected misbehaviour, matched by method and path prefix (after /api/v1)."""

    kind: FaultKind
    method: str | None = None
    path: str | None = None
    status: int = 500
    retry_after_s: float | None = None
    delay_s: float = 0.0
    times: int | None = 1  # None: every matching request until cleared

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or path.startswith(self.path)
        )


class EmulatedConnectionFault(Exception):
    """Raised inside the app for faults that no HTTP response can express."""

    def __init__(self, kind: FaultKind) -> None:
        super().__init__(kind)
        self.kind = kind


class EmulatorApiError(Exception):
    """An error answer in OpenRouter's documented shape; also raised by Emulator.charge()."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.metadata = metadata
        self.headers = headers or {}


def _window_start(moment: datetime, window: str) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "daily":
        return day
    if window == "weekly":
        return day - timedelta(days=day.weekday())  # weeks run Monday to Sunday
    if window == "monthly":
        return day.replace(day=1)
    raise ValueError(window)


def _next_window_start(moment: datetime, window: str) -> datetime:
    """When the window holding `moment` rolls over (a budget's resets_at)."""
    start = _window_start(moment, window)
    if window == "daily":
        return start + timedelta(days=1)
    if window == "weekly":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)  # the next month's 1st


def _effective_budget(budgets: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The layer that blocks first (SDK KeyBudget docs): the first one already spent, else the
    one with the least left; None when nothing is budgeted."""
    for budget in budgets:
        if budget["remaining_usd"] <= 0:
            return budget
    return min(budgets, key=lambda b: b["remaining_usd"], default=None)


def _budget_json(
    scope: str,
    limit: Decimal,
    spent: Decimal,
    interval: str | None,
    now: datetime,
    *,
    include_byok: bool,
    guardrail_id: str | None = None,
) -> dict[str, Any]:
    """One of GET /key's budget layers (SDK components.KeyBudget)."""
    return {
        "scope": scope,
        "limit_usd": _number(limit),
        "spend_usd": _number(spent),
        # limit - spend, not clamped: zero or less means this layer rejects (403)
        "remaining_usd": _number(limit - spent),
        "reset_interval": interval,
        "resets_at": None if interval is None else _iso(_next_window_start(now, interval)),
        "include_byok": include_byok,
        "budget_id": None,
        "guardrail_id": guardrail_id,
    }


def _copy(value: list[Any] | None) -> list[Any] | None:
    return None if value is None else [dict(v) if isinstance(v, dict) else v for v in value]


def _request_details(
    *,
    generation_id: str | None,
    model: str,
    provider_name: str,
    prompt_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int,
    cached_tokens: int,
) -> _RequestDetails:
    """A charge's request details, or a 400 naming what is wrong."""
    if generation_id is not None and (
        not isinstance(generation_id, str) or not 1 <= len(generation_id) <= 256
    ):
        raise EmulatorApiError(400, "generation_id: String must be 1 to 256 characters")
    for name, text in (("model", model), ("provider_name", provider_name)):
        if not isinstance(text, str) or not 1 <= len(text) <= 256:
            raise EmulatorApiError(400, f"{name}: String must be 1 to 256 characters")
    counts = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "reasoning_tokens": reasoning_tokens,
        "cached_tokens": cached_tokens,
    }
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise EmulatorApiError(400, f"{name}: Expected a non-negative integer")
    return _RequestDetails(
        generation_id=generation_id or new_generation_id(),
        model=model,
        provider_name=provider_name,
        **counts,
    )


class Emulator:
    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utcnow,
        total_credits: Decimal = Decimal(1000),
        latency_s: float = 0.0,
        connection_faults: Literal["raise", "stall"] = "raise",
        stall_s: float = 120.0,
        billing_delay_s: float = 0.0,
        state_dir: Path | None = None,
        max_concurrent_requests: int | None = None,
        generation_delay_s: float = 1.0,
    ) -> None:
        """clock: the emulator's now (UTC-aware); inject one to move time in tests: windows,
        expiry, generation readiness and /activity's days all read it.
        generation_delay_s: how long after a request is billed GET /generation starts to find
        it (404 before, as OpenRouter lags "a second or more"); 0 serves it at once."""
        self.clock = clock
        self.generation_delay_s = generation_delay_s
        # What a chat completion costs per token, prompt and completion alike: the emulator
        # answers every model at this one price.
        self.chat_usd_per_token = CHAT_USD_PER_TOKEN
        self.total_credits = total_credits
        self.latency_s = latency_s
        # How long a charge through /_emulator/charge takes before it is billed (unless the
        # charge says): OpenRouter bills a request when it completes.
        self.billing_delay_s = billing_delay_s
        self.connection_faults = connection_faults
        self.stall_s = stall_s
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        # OpenRouter takes so many management calls at once and answers 429 beyond: the rate
        # a fleet must learn. None: no limit.
        self.max_concurrent_requests = max_concurrent_requests
        self.in_flight = 0
        self.peak_in_flight = 0
        self.rate_limited = 0  # 429s answered for being over max_concurrent_requests
        self._keys: dict[str, EmulatedKey] = {}
        self._by_secret: dict[str, EmulatedKey] = {}  # by the secret's digest
        self._deleted: dict[str, EmulatedKey] = {}  # still billed for requests in flight
        self._generations: dict[str, EmulatedGeneration] = {}  # by id, in billing order
        self._guardrails: dict[str, EmulatedGuardrail] = {}  # by id, in creation order
        self._assignments: dict[str, EmulatedKeyAssignment] = {}  # by key hash: one each
        self._sequence = 0
        self._lock = _SharedState(self, state_dir)
        self.management_key = self._lock.management_key() or self.add_management_key()
        self._lock.keep_management_key(self.management_key)
        self.app = self._build_app()

    # ----- Python-side controls (tests, benchmarks) -----

    def add_management_key(self) -> str:
        with self._lock:
            key = self._new_key(name="management", is_management=True)
        return key.secret

    def add_key(
        self, *, name: str, limit: Decimal | None = None, limit_reset: str | None = None
    ) -> EmulatedKey:
        """A user key made directly, as if created earlier through POST /keys."""
        with self._lock:
            key = self._new_key(name=name)
            key.limit, key.limit_reset = limit, limit_reset
        return key

    def inject(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def key_by_hash(self, key_hash: str) -> EmulatedKey | None:
        """The key with this hash, if it exists (deleted keys do not)."""
        with self._lock.reading():
            return self._keys.get(key_hash)

    def user_keys(self) -> list[EmulatedKey]:
        """Every user key (not management keys), newest first."""
        return sorted(
            (k for k in self._keys.values() if not k.is_management),
            key=lambda k: k.sequence,
            reverse=True,
        )

    def guardrail(self, guardrail_id: str) -> EmulatedGuardrail | None:
        """The guardrail with this id, if it exists (a workspace's default one included)."""
        with self._lock.reading():
            return self._guardrails.get(guardrail_id)

    def guardrails(self) -> list[EmulatedGuardrail]:
        """Every guardrail, in creation order."""
        with self._lock.reading():
            return list(self._guardrails.values())

    def guardrail_of(self, key_hash: str) -> EmulatedGuardrail | None:
        """The guardrail assigned to this key, if any (the workspace default is not)."""
        with self._lock.reading():
            assignment = self._assignments.get(key_hash)
            return None if assignment is None else self._guardrails[assignment.guardrail_id]

    def charge(
        self,
        secret: str,
        cost: Decimal,
        *,
        byok: bool = False,
        max_cost: Decimal | None = None,
        generation_id: str | None = None,
        model: str = DEFAULT_MODEL,
        provider_name: str = DEFAULT_PROVIDER,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        reasoning_tokens: int = 0,
        cached_tokens: int = 0,
    ) -> EmulatedKey:
        """Spend on a key as an instant inference request would: admitted and billed at once.

        403 "Key limit exceeded (<window> limit)" once nothing is left; 402 when the worst-case
        cost (max_cost, else cost) is more than what is left; 401 for an unknown, disabled or
        expired key. The key's guardrails (its workspace's default one once configured, and the
        one assigned to it) are checked first, the same way for their budgets (403 and 402 with
        metadata.limit_source "openrouter_guardrail_budget"), then for the model (403 when not
        in allowed_models) and the provider (404 "No endpoints available matching your
        guardrail restrictions..." when not in allowed_providers, or ignored).
        A billed charge leaves a generation record (EmulatedGeneration) with generation_id
        (else a new `gen-...` id: new_generation_id()), the model, provider and token counts
        given, the key's hash and external user; a refused one leaves none. 400
        (EmulatorApiError) for a generation_id already used or malformed details.
        Returns the key (charged); Emulator.generation(generation_id) has the record.
        """
        details = _request_details(
            generation_id=generation_id,
            model=model,
            provider_name=provider_name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            reasoning_tokens=reasoning_tokens,
            cached_tokens=cached_tokens,
        )
        with self._lock:
            self._refuse_known_generation(details.generation_id)
            key = self._admit(
                secret,
                cost,
                byok=byok,
                max_cost=max_cost,
                model=details.model,
                provider_name=details.provider_name,
            )
            self._bill(
                key, cost, reserved=Decimal(0), byok=byok, details=details, started=self.clock()
            )
            return key

    async def spend(
        self,
        secret: str,
        cost: Decimal,
        *,
        duration_s: float = 0.0,
        byok: bool = False,
        max_cost: Decimal | None = None,
        generation_id: str | None = None,
        model: str = DEFAULT_MODEL,
        provider_name: str = DEFAULT_PROVIDER,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        reasoning_tokens: int = 0,
        cached_tokens: int = 0,
    ) -> EmulatedKey:
        """Spend as a request that takes duration_s: admitted now against the key's limit (and
        what is in flight on it), billed when it completes, whatever happened to the key since
        (a lower limit, disabled, deleted). Its generation record (see charge) is made when it
        is billed, dated (created_at) by its start, as OpenRouter dates /activity."""
        details = _request_details(
            generation_id=generation_id,
            model=model,
            provider_name=provider_name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            reasoning_tokens=reasoning_tokens,
            cached_tokens=cached_tokens,
        )
        worst = max_cost if max_cost is not None and max_cost > cost else cost
        with self._lock:
            self._refuse_known_generation(details.generation_id)
            key = self._admit(
                secret,
                cost,
                byok=byok,
                max_cost=worst,
                model=details.model,
                provider_name=details.provider_name,
            )
            started = self.clock()
            counts = not (byok and not key.include_byok_in_limit)
            reserved = worst if counts else Decimal(0)
            key.in_flight += reserved
            if byok:
                key.pending_byok += worst
            else:
                key.pending_credit += worst
        try:
            if duration_s > 0:
                await asyncio.sleep(duration_s)
        finally:
            with self._lock:
                self._bill(
                    key,
                    cost,
                    reserved=reserved,
                    pending=worst,
                    byok=byok,
                    details=details,
                    started=started,
                )
        return key

    def generation(self, generation_id: str) -> EmulatedGeneration | None:
        """The generation record with this id, ready or not (GET /generation waits for it)."""
        with self._lock.reading():
            return self._generations.get(generation_id)

    def generations(self, key_hash: str | None = None) -> list[EmulatedGeneration]:
        """Every generation record (of one key, deleted keys included), oldest billed first."""
        with self._lock.reading():
            return [
                g for g in self._generations.values() if key_hash is None or g.key_hash == key_hash
            ]

    def _refuse_known_generation(self, generation_id: str) -> None:
        if generation_id in self._generations:
            raise EmulatorApiError(400, f"generation_id {generation_id} was already used")

    def _admit(
        self,
        secret: str,
        cost: Decimal,
        *,
        byok: bool,
        max_cost: Decimal | None,
        model: str = DEFAULT_MODEL,
        provider_name: str = DEFAULT_PROVIDER,
    ) -> EmulatedKey:
        key = self._by_secret.get(_digest(secret))
        now = self.clock()
        if key is None or key.disabled or key.is_management or self._expired(key, now):
            raise EmulatorApiError(401, "User not found.")
        guardrails = self._guardrails_of(key)
        for scope, guardrail in guardrails:
            worst_case = max_cost if max_cost is not None else cost
            self._refuse_over_guardrail_budget(
                key, scope, guardrail, now, byok=byok, worst_case=worst_case
            )
        if key.limit is not None and not (byok and not key.include_byok_in_limit):
            remaining = self._limit_remaining(key, now)
            assert remaining is not None
            remaining = max(remaining - key.in_flight, Decimal(0))
            window = key.limit_reset or "total"
            if remaining <= 0:
                raise EmulatorApiError(
                    403,
                    f"Key limit exceeded ({window} limit). "
                    "Manage it using https://openrouter.ai/settings/keys",
                )
            worst_case = max_cost if max_cost is not None else cost
            if worst_case > remaining:
                raise EmulatorApiError(
                    402,
                    "This request requires more credits, or fewer max_tokens. "
                    f"This key can only afford {remaining}.",
                    metadata={"limit_source": "openrouter_key_limit"},
                )
        self._refuse_unroutable(guardrails, model, provider_name)
        return key

    def _guardrails_of(self, key: EmulatedKey) -> list[tuple[str, EmulatedGuardrail]]:
        """The guardrails that govern a user key's requests, in the order enforcement checks
        them, each with its budget scope (SDK KeyBudgetScope): the key's workspace default
        guardrail once configured (workspace_default_key), then the guardrail assigned to the
        key (api_key). The emulated account has no organization members, so no member layers."""
        if key.is_management:
            return []
        layers: list[tuple[str, EmulatedGuardrail]] = []
        default = self._guardrails.get(_workspace_default_id(key.workspace_id))
        if default is not None and default.configured:
            layers.append(("workspace_default_key", default))
        assignment = self._assignments.get(key.hash)
        if assignment is not None:
            layers.append(("api_key", self._guardrails[assignment.guardrail_id]))
        return layers

    def _guardrail_spend(
        self, key: EmulatedKey, guardrail: EmulatedGuardrail, now: datetime
    ) -> Decimal:
        """What counts against a guardrail's budget for this key: the key's spend in the
        guardrail's current UTC window (before its assignment too: OpenRouter counts the key's
        usage), BYOK spend only if the guardrail includes it. Budgets are per key, not pooled."""
        assert guardrail.reset_interval is not None
        since = _window_start(now, guardrail.reset_interval)
        spent = self._spent(key, since, byok=False)
        if guardrail.include_byok_in_budgets:
            spent += self._spent(key, since, byok=True)
        return spent

    def _refuse_over_guardrail_budget(
        self,
        key: EmulatedKey,
        scope: str,
        guardrail: EmulatedGuardrail,
        now: datetime,
        *,
        byok: bool,
        worst_case: Decimal,
    ) -> None:
        """403 once a guardrail budget has nothing left for this key (what was billed in its
        window plus what is in flight), 402 when the request's worst case is more than is left:
        the key limit's two refusals, with metadata naming the layer. OpenRouter documents the
        403 ("budget limits ... produce 403 responses") and the metadata's limit_source
        "openrouter_guardrail_budget"; the message text is a guess (in the words of its
        documented workspace-budget refusal), and so is the 402."""
        limit, interval = guardrail.limit_usd, guardrail.reset_interval
        if limit is None or interval is None or (byok and not guardrail.include_byok_in_budgets):
            return
        spent = self._guardrail_spend(key, guardrail, now)
        pending = key.pending_credit + (
            key.pending_byok if guardrail.include_byok_in_budgets else Decimal(0)
        )
        remaining = max(limit - spent - pending, Decimal(0))
        metadata: dict[str, Any] = {
            "limit_source": "openrouter_guardrail_budget",
            "scope": scope,
            "guardrail_id": guardrail.id,
            "limit_usd": _number(limit),
            "spend_usd": _number(spent),
            "resets_at": _iso(_next_window_start(now, interval)),
        }
        if remaining <= 0:
            raise EmulatorApiError(
                403,
                f"Guardrail {interval} budget of ${limit:.2f} exceeded. "
                "Contact your workspace admin.",
                metadata={"error_type": "permission_denied", **metadata},
            )
        if worst_case > remaining:
            raise EmulatorApiError(
                402,
                "This request requires more credits, or fewer max_tokens. "
                f"This key's guardrail budget can only afford {remaining}.",
                metadata={"error_type": "payment_required", **metadata},
            )

    @staticmethod
    def _refuse_unroutable(
        guardrails: list[tuple[str, EmulatedGuardrail]], model: str, provider_name: str
    ) -> None:
        """A model outside a guardrail's allowed_models: 403 (OpenRouter: "allowlist
        restrictions also produce 403 responses"; the message is a guess). Guardrails intersect:
        every one must allow it. Models are matched exactly, variants (":free") included: the
        docs speak of slugs and canonical slugs, never of wildcards. A provider outside
        allowed_providers (or in ignored_providers), or a model in ignored_models, leaves no
        endpoint to route to: OpenRouter's 404 for that, verbatim."""
        for scope, guardrail in guardrails:
            if guardrail.allowed_models is not None and model not in guardrail.allowed_models:
                raise EmulatorApiError(
                    403,
                    f"Model {model} is not allowed by your guardrail restrictions. "
                    f"Configure: {GUARDRAIL_SETTINGS_URL}",
                    metadata={
                        "error_type": "permission_denied",
                        "guardrail_id": guardrail.id,
                        "guardrail_scope": _GUARDRAIL_SCOPES[scope],
                    },
                )
        for _, guardrail in guardrails:
            if model in (guardrail.ignored_models or []) or not _provider_allowed(
                guardrail, provider_name
            ):
                raise EmulatorApiError(404, NO_ENDPOINTS_MESSAGE)

    def _chat_provider(self, secret: str, candidates: list[str]) -> str:
        """The first of a chat completion's candidate providers the key's guardrails allow (the
        first candidate when none is: admission then refuses it, 404)."""
        with self._lock.reading():
            key = self._by_secret.get(_digest(secret))
            guardrails = [] if key is None else self._guardrails_of(key)
            for provider in candidates:
                if all(_provider_allowed(g, provider) for _, g in guardrails):
                    return _provider_name(provider)
            return _provider_name(candidates[0])

    def _bill(
        self,
        key: EmulatedKey,
        cost: Decimal,
        *,
        reserved: Decimal,
        byok: bool,
        details: _RequestDetails,
        started: datetime,
        pending: Decimal = Decimal(0),
    ) -> None:
        now = self.clock()
        key.in_flight -= reserved
        if byok:
            key.pending_byok -= pending
        else:
            key.pending_credit -= pending
        key.charges.append(Charge(at=now, amount=cost, byok=byok))
        key.last_used_at = now
        self._generations[details.generation_id] = EmulatedGeneration(
            id=details.generation_id,
            key_hash=key.hash,
            model=details.model,
            provider_name=details.provider_name,
            prompt_tokens=details.prompt_tokens,
            completion_tokens=details.completion_tokens,
            reasoning_tokens=details.reasoning_tokens,
            cached_tokens=details.cached_tokens,
            cost=cost,
            byok=byok,
            external_user=key.external_user,
            workspace_id=key.workspace_id,
            created_at=started,
            billed_at=now,
        )

    def state(self) -> list[dict[str, Any]]:
        """Every user key ever made, deleted ones included, with what it was billed this
        month and what is in flight: for checkers of the books, never part of the API."""
        now = self.clock()
        month = _window_start(now, "monthly")
        with self._lock.reading():
            every = [*self._keys.values(), *self._deleted.values()]
            return [
                {
                    "hash": k.hash,
                    "name": k.name,
                    "disabled": k.disabled,
                    "deleted": k.deleted_at is not None,
                    "limit": None if k.limit is None else str(k.limit),
                    "usage_monthly": str(self._spent(k, month, byok=False)),
                    "in_flight": str(k.in_flight),
                }
                for k in sorted(every, key=lambda k: k.sequence)
                if not k.is_management
            ]

    # ----- state helpers -----

    def _new_key(self, *, name: str, is_management: bool = False) -> EmulatedKey:
        self._sequence += 1
        secret = new_secret()
        key = EmulatedKey(
            hash=secrets.token_hex(32),
            secret=secret,
            name=name,
            sequence=self._sequence,
            created_at=self.clock(),
            is_management=is_management,
            secret_digest=_digest(secret),
            label=f"{secret[:12]}...{secret[-4:]}",
        )
        self._keys[key.hash] = key
        self._by_secret[key.secret_digest] = key
        return key

    # ----- a state file, for an emulator that outlives its process -----

    def snapshot(self) -> dict[str, Any]:
        """Everything the emulator knows, secrets excepted (digests only), as JSON data."""

        def key_data(key: EmulatedKey) -> dict[str, Any]:
            data = asdict(key)
            data.pop("secret")
            data["charges"] = [[_iso(c.at), str(c.amount), c.byok] for c in key.charges]
            for name in ("created_at", "updated_at", "expires_at", "last_used_at", "deleted_at"):
                data[name] = _iso(data[name])
            for name in ("limit", "in_flight", "pending_credit", "pending_byok"):
                data[name] = None if data[name] is None else str(data[name])
            return data

        def guardrail_data(guardrail: EmulatedGuardrail) -> dict[str, Any]:
            data = asdict(guardrail)
            data["limit_usd"] = None if guardrail.limit_usd is None else str(guardrail.limit_usd)
            data["created_at"] = _iso(guardrail.created_at)
            data["updated_at"] = _iso(guardrail.updated_at)
            return data

        def assignment_data(assignment: EmulatedKeyAssignment) -> dict[str, Any]:
            return {**asdict(assignment), "created_at": _iso(assignment.created_at)}

        def generation_data(generation: EmulatedGeneration) -> dict[str, Any]:
            data = asdict(generation)
            data["cost"] = str(generation.cost)
            data["created_at"] = _iso(generation.created_at)
            data["billed_at"] = _iso(generation.billed_at)
            return data

        every = [*self._keys.values(), *self._deleted.values()]
        return {
            "version": 3,
            "sequence": self._sequence,
            "total_credits": str(self.total_credits),
            "keys": [key_data(k) for k in sorted(every, key=lambda k: k.sequence)],
            "generations": [generation_data(g) for g in self._generations.values()],
            "guardrails": [guardrail_data(g) for g in self._guardrails.values()],
            "guardrail_key_assignments": [assignment_data(a) for a in self._assignments.values()],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace what the emulator knows by a snapshot (secrets stay those in memory)."""
        secrets_known = {k.hash: k.secret for k in [*self._keys.values(), *self._deleted.values()]}
        self._keys, self._by_secret, self._deleted = {}, {}, {}
        self._sequence = int(data["sequence"])
        self.total_credits = Decimal(data["total_credits"])
        for raw in data["keys"]:
            fields_ = dict(raw)
            for name in ("created_at", "updated_at", "expires_at", "last_used_at", "deleted_at"):
                value = fields_[name]
                fields_[name] = None if value is None else datetime.fromisoformat(value)
            fields_["limit"] = None if fields_["limit"] is None else Decimal(fields_["limit"])
            fields_["in_flight"] = Decimal(fields_["in_flight"])
            for name in ("pending_credit", "pending_byok"):  # a version 2 state has none
                fields_[name] = Decimal(fields_.get(name) or 0)
            fields_["charges"] = [
                Charge(at=datetime.fromisoformat(at), amount=Decimal(amount), byok=byok)
                for at, amount, byok in fields_["charges"]
            ]
            key = EmulatedKey(secret=secrets_known.get(fields_["hash"], ""), **fields_)
            if key.deleted_at is None:
                self._keys[key.hash] = key
                self._by_secret[key.secret_digest] = key
            else:
                self._deleted[key.hash] = key
        self._generations = {}
        for raw in data.get("generations", []):  # a version 1 state has none
            fields_ = dict(raw)
            fields_["cost"] = Decimal(fields_["cost"])
            fields_["created_at"] = datetime.fromisoformat(fields_["created_at"])
            fields_["billed_at"] = datetime.fromisoformat(fields_["billed_at"])
            generation = EmulatedGeneration(**fields_)
            self._generations[generation.id] = generation
        self._guardrails, self._assignments = {}, {}
        for raw in data.get("guardrails", []):  # a version 2 state has none
            fields_ = dict(raw)
            limit_usd = fields_["limit_usd"]
            fields_["limit_usd"] = None if limit_usd is None else Decimal(limit_usd)
            fields_["created_at"] = datetime.fromisoformat(fields_["created_at"])
            updated_at = fields_["updated_at"]
            fields_["updated_at"] = (
                None if updated_at is None else datetime.fromisoformat(updated_at)
            )
            guardrail = EmulatedGuardrail(**fields_)
            self._guardrails[guardrail.id] = guardrail
        for raw in data.get("guardrail_key_assignments", []):
            fields_ = {**raw, "created_at": datetime.fromisoformat(raw["created_at"])}
            assignment = EmulatedKeyAssignment(**fields_)
            self._assignments[assignment.key_hash] = assignment

    @staticmethod
    def _expired(key: EmulatedKey, now: datetime) -> bool:
        return key.expires_at is not None and key.expires_at <= now

    @staticmethod
    def _spent(key: EmulatedKey, since: datetime | None, *, byok: bool) -> Decimal:
        return sum(
            (c.amount for c in key.charges if c.byok == byok and (since is None or c.at >= since)),
            Decimal(0),
        )

    def _limit_spend(self, key: EmulatedKey, now: datetime) -> Decimal:
        """What counts against the key's own limit in its current window."""
        since = None if key.limit_reset is None else _window_start(now, key.limit_reset)
        spent = self._spent(key, since, byok=False)
        if key.include_byok_in_limit:
            spent += self._spent(key, since, byok=True)
        return spent

    def _limit_remaining(self, key: EmulatedKey, now: datetime) -> Decimal | None:
        if key.limit is None:
            return None
        return max(key.limit - self._limit_spend(key, now), Decimal(0))

    def _budgets(self, key: EmulatedKey, now: datetime) -> list[dict[str, Any]]:
        """GET /key's budgets: every layer enforcement checks, in its order ("guardrail
        budgets, workspace budgets, then the key's own limit", SDK GetCurrentKeyData.budgets):
        the workspace default guardrail's and the key's guardrail's (scopes
        workspace_default_key and api_key) when they have a budget, then the key's own limit
        (key_limit) when it has one. The emulator has no workspace budgets or members."""
        budgets = []
        for scope, guardrail in self._guardrails_of(key):
            limit, interval = guardrail.limit_usd, guardrail.reset_interval
            if limit is None or interval is None:
                continue
            budgets.append(
                _budget_json(
                    scope,
                    limit,
                    self._guardrail_spend(key, guardrail, now),
                    interval,
                    now,
                    include_byok=guardrail.include_byok_in_budgets,
                    guardrail_id=guardrail.id,
                )
            )
        if key.limit is not None:
            budgets.append(
                _budget_json(
                    "key_limit",
                    key.limit,
                    self._limit_spend(key, now),
                    key.limit_reset,
                    now,
                    include_byok=key.include_byok_in_limit,
                )
            )
        return budgets

    def _allowed_data_regions(self, key: EmulatedKey) -> list[str]:
        """The regions the key's requests may arrive through: the account's, narrowed by every
        guardrail that restricts them (their intersection; empty when none is left)."""
        regions = list(ACCOUNT_DATA_REGIONS)
        for _, guardrail in self._guardrails_of(key):
            if guardrail.allowed_data_regions is not None:
                regions = [r for r in regions if r in guardrail.allowed_data_regions]
        return regions

    def _free_model_daily_requests(self, now: datetime) -> dict[str, int]:
        """The account's `:free` model requests today (UTC) against its tier's daily cap."""
        today = _window_start(now, "daily")
        used = sum(
            1
            for g in self._generations.values()
            if g.model.endswith(":free") and not g.byok and g.created_at >= today
        )
        low, high = FREE_MODEL_DAILY_LIMITS
        limit = high if self.total_credits >= FREE_MODEL_CREDITS_THRESHOLD else low
        return {"used": used, "limit": limit, "remaining": max(limit - used, 0)}

    def _usage_fields(self, key: EmulatedKey, now: datetime) -> dict[str, float | None]:
        fields: dict[str, float | None] = {}
        for prefix, byok in (("usage", False), ("byok_usage", True)):
            fields[prefix] = _number(self._spent(key, None, byok=byok))
            for window in LIMIT_RESETS:
                suffix = window  # usage_daily, usage_weekly, usage_monthly
                fields[f"{prefix}_{suffix}"] = _number(
                    self._spent(key, _window_start(now, window), byok=byok)
                )
        return fields

    def key_json(self, key: EmulatedKey) -> dict[str, Any]:
        """The documented key object (openrouter-api.md §1), every field present."""
        now = self.clock()
        return {
            "hash": key.hash,
            "name": key.name,
            "label": key.label,
            "disabled": key.disabled,
            "limit": _number(key.limit),
            "limit_remaining": _number(self._limit_remaining(key, now)),
            "limit_reset": key.limit_reset,
            "include_byok_in_limit": key.include_byok_in_limit,
            **self._usage_fields(key, now),
            "created_at": _iso(key.created_at),
            "updated_at": _iso(key.updated_at),
            "creator_user_id": key.creator_user_id,
            "workspace_id": key.workspace_id,
            "expires_at": _iso(key.expires_at),
            "external_user": key.external_user,
            "last_used_at": _iso(key.last_used_at),
        }

    def current_key_json(self, key: EmulatedKey) -> dict[str, Any]:
        """GET /key's data (openrouter-api.md §2.7): every field the SDK's model requires."""
        now = self.clock()
        usage = self._usage_fields(key, now)
        budgets = self._budgets(key, now)
        return {
            "label": key.label,
            "limit": _number(key.limit),
            "limit_remaining": _number(self._limit_remaining(key, now)),
            "limit_reset": key.limit_reset,
            "include_byok_in_limit": key.include_byok_in_limit,
            **usage,
            "is_free_tier": False,
            "is_management_key": key.is_management,
            "is_provisioning_key": key.is_management,
            "creator_user_id": key.creator_user_id,
            "expires_at": _iso(key.expires_at),
            "rate_limit": {"requests": -1, "interval": "10s", "note": "deprecated; always -1"},
            "budgets": budgets,
            "effective_budget": _effective_budget(budgets),
            "free_model_daily_requests": self._free_model_daily_requests(now),
            # An account without regional routing is served globally, unless a guardrail
            # restricts the regions.
            "allowed_data_regions": self._allowed_data_regions(key),
            "organization_id": None,  # an individual account, not an organization
            "workspace_id": key.workspace_id,
        }

    @staticmethod
    def guardrail_json(guardrail: EmulatedGuardrail) -> dict[str, Any]:
        """A guardrail as OpenRouter answers it (SDK components.Guardrail), every field present
        (null where unset), as the documented examples show them."""
        return {
            "id": guardrail.id,
            "name": guardrail.name,
            "description": guardrail.description,
            "workspace_id": guardrail.workspace_id,
            "limit_usd": _number(guardrail.limit_usd),
            "reset_interval": guardrail.reset_interval,
            "include_byok_in_budgets": guardrail.include_byok_in_budgets,
            **{name: _copy(getattr(guardrail, name)) for name in GUARDRAIL_LISTS},
            "allowed_data_regions": _copy(guardrail.allowed_data_regions),
            "content_filters": _copy(guardrail.content_filters),
            "content_filter_builtins": _copy(guardrail.content_filter_builtins),
            **{name: guardrail.flags.get(name) for name in GUARDRAIL_FLAGS},
            "created_at": _iso(guardrail.created_at),
            "updated_at": _iso(guardrail.updated_at),
        }

    def key_assignment_json(self, assignment: EmulatedKeyAssignment) -> dict[str, Any]:
        """A key assignment as OpenRouter answers it (SDK components.KeyAssignment)."""
        key = self._keys[assignment.key_hash]
        return {
            "id": assignment.id,
            "key_hash": assignment.key_hash,
            "guardrail_id": assignment.guardrail_id,
            "key_name": key.name,
            "key_label": key.label,
            "assigned_by": assignment.assigned_by,
            "created_at": _iso(assignment.created_at),
        }

    def generation_json(self, generation: EmulatedGeneration) -> dict[str, Any]:
        """GET /generation's data (openrouter-api.md §2.10), every field the SDK requires.

        total_cost and usage are the credits charged (zero for BYOK: no fee here);
        upstream_inference_cost is what the provider billed (the cost, BYOK or not)."""
        latency_ms = max((generation.billed_at - generation.created_at).total_seconds(), 0) * 1000
        credits = Decimal(0) if generation.byok else generation.cost
        endpoint = endpoint_id(generation.model, generation.provider_name)
        return {
            "id": generation.id,
            "model": generation.model,
            "provider_name": generation.provider_name,
            "created_at": _iso(generation.created_at),
            "api_type": "completions",
            "total_cost": _number(credits),
            "usage": _number(credits),
            "upstream_inference_cost": _number(generation.cost),
            "cache_discount": None,
            "is_byok": generation.byok,
            "tokens_prompt": generation.prompt_tokens,
            "tokens_completion": generation.completion_tokens,
            "native_tokens_prompt": generation.prompt_tokens,
            "native_tokens_completion": generation.completion_tokens,
            "native_tokens_reasoning": generation.reasoning_tokens,
            "native_tokens_cached": generation.cached_tokens,
            "native_tokens_completion_images": 0,
            "num_media_prompt": 0,
            "num_media_completion": 0,
            "num_input_audio_prompt": 0,
            "num_search_results": 0,
            "num_fetches": 0,
            "latency": latency_ms,
            "generation_time": latency_ms,
            "moderation_latency": None,
            "finish_reason": "stop",
            "native_finish_reason": "stop",
            "streamed": False,
            "cancelled": False,
            "external_user": generation.external_user,
            "app_id": None,
            "http_referer": None,
            "user_agent": None,
            "origin": "",
            "router": None,
            "service_tier": None,
            "preset_id": None,
            "upstream_id": None,
            "web_search_engine": None,
            "provider_responses": [
                {
                    "status": 200,
                    "provider_name": generation.provider_name,
                    "endpoint_id": endpoint,
                    "model_permaslug": generation.model,
                    "latency": latency_ms,
                    "is_byok": generation.byok,
                }
            ],
            "data_region": "global",
            "workspace_id": generation.workspace_id,
        }

    def activity_days(self) -> tuple[date, date]:
        """The first and last UTC day GET /activity serves now: the last 30 completed days."""
        today = self.clock().astimezone(UTC).date()
        return today - timedelta(days=ACTIVITY_DAYS), today - timedelta(days=1)

    def activity_json(
        self,
        *,
        api_key_hash: str | None = None,
        day: date | None = None,
        workspace_id: str | None = None,
        by_workspace: bool = False,
    ) -> list[dict[str, Any]]:
        """GET /activity's rows: generations summed per UTC day of their start, model and
        endpoint (and workspace, by_workspace), over the last 30 completed UTC days (or one of
        them), for one key or every key of the account; newest day first."""
        first, last = self.activity_days()
        if day is not None:
            first = last = day
        groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for g in self._generations.values():
            started = g.created_at.astimezone(UTC).date()
            if not first <= started <= last:
                continue
            if api_key_hash is not None and g.key_hash != api_key_hash:
                continue
            if workspace_id is not None and g.workspace_id != workspace_id:
                continue
            group = (
                started.isoformat(),
                g.model,
                g.provider_name,
                g.workspace_id if by_workspace else "",
            )
            row = groups.setdefault(
                group,
                {
                    "usage": Decimal(0),
                    "byok_usage_inference": Decimal(0),
                    "requests": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "reasoning_tokens": 0,
                    "cached_tokens": 0,
                },
            )
            row["byok_usage_inference" if g.byok else "usage"] += g.cost
            row["requests"] += 1
            row["prompt_tokens"] += g.prompt_tokens
            row["completion_tokens"] += g.completion_tokens
            row["reasoning_tokens"] += g.reasoning_tokens
            row["cached_tokens"] += g.cached_tokens
        rows = []
        for (day_text, model, provider, workspace), sums in sorted(groups.items()):
            row = {
                "date": day_text,
                "model": model,
                "model_permaslug": model,
                "endpoint_id": endpoint_id(model, provider),
                "provider_name": provider,
                **sums,
                "usage": _number(sums["usage"]),
                "byok_usage_inference": _number(sums["byok_usage_inference"]),
            }
            if by_workspace:
                row["workspace_id"] = workspace
            rows.append(row)
        rows.sort(key=lambda r: r["date"], reverse=True)  # stable: ties keep model order
        return rows

    # ----- HTTP -----

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport that reaches this emulator in process."""
        return _InProcessTransport(self)

    def _build_app(self) -> Starlette:
        routes = [
            Route(f"{API_PREFIX}/keys", self._list_keys, methods=["GET"]),
            Route(f"{API_PREFIX}/keys", self._create_key, methods=["POST"]),
            Route(f"{API_PREFIX}/keys/{{key_hash}}", self._get_key, methods=["GET"]),
            Route(f"{API_PREFIX}/keys/{{key_hash}}", self._update_key, methods=["PATCH"]),
            Route(f"{API_PREFIX}/keys/{{key_hash}}", self._delete_key, methods=["DELETE"]),
            Route(f"{API_PREFIX}/key", self._current_key, methods=["GET"]),
            Route(f"{API_PREFIX}/credits", self._credits, methods=["GET"]),
            Route(f"{API_PREFIX}/generation", self._generation, methods=["GET"]),
            Route(f"{API_PREFIX}/activity", self._activity, methods=["GET"]),
            Route(f"{API_PREFIX}/chat/completions", self._chat_completions, methods=["POST"]),
            Route(f"{API_PREFIX}/guardrails", self._list_guardrails, methods=["GET"]),
            Route(f"{API_PREFIX}/guardrails", self._create_guardrail, methods=["POST"]),
            Route(
                f"{API_PREFIX}/guardrails/assignments/keys",
                self._list_key_assignments,
                methods=["GET"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/assignments/members",
                self._list_member_assignments,
                methods=["GET"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}", self._get_guardrail, methods=["GET"]
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}",
                self._update_guardrail,
                methods=["PATCH"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}",
                self._delete_guardrail,
                methods=["DELETE"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}/assignments/keys",
                self._list_key_assignments,
                methods=["GET"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}/assignments/keys",
                self._assign_keys,
                methods=["POST"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}/assignments/keys/remove",
                self._unassign_keys,
                methods=["POST"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}/assignments/members",
                self._list_member_assignments,
                methods=["GET"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}/assignments/members",
                self._assign_members,
                methods=["POST"],
            ),
            Route(
                f"{API_PREFIX}/guardrails/{{guardrail_id}}/assignments/members/remove",
                self._assign_members,
                methods=["POST"],
            ),
            Route("/_emulator/charge", self._charge, methods=["POST"]),
            Route("/_emulator/state", self._state, methods=["GET"]),
            Route("/_emulator/faults", self._faults, methods=["POST", "DELETE"]),
        ]

        async def api_error(_: Request, exc: Exception) -> Response:
            assert isinstance(exc, EmulatorApiError)
            return _error_response(exc)

        async def unknown_route(_: Request, exc: Exception) -> Response:
            status = getattr(exc, "status_code", 404)
            message = "Not Found" if status == 404 else "Method Not Allowed"
            return _error_response(EmulatorApiError(status, message))

        return Starlette(
            routes=routes,
            exception_handlers={
                EmulatorApiError: api_error,
                404: unknown_route,
                405: unknown_route,
            },
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        self.requests.append((method, path))
        cap = self.max_concurrent_requests
        if cap is not None and path.startswith(API_PREFIX) and self.in_flight >= cap:
            self.rate_limited += 1
            refused = EmulatorApiError(429, "Rate limit exceeded", headers={"Retry-After": "1"})
            await _error_response(refused)(scope, receive, send)
            return
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await self._serve(method, path, scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _serve(self, method: str, path: str, scope: Any, receive: Any, send: Any) -> None:
        fault = self._take_fault(method, path.removeprefix(API_PREFIX))
        delay = self.latency_s
        if fault is not None:
            if fault.kind == "latency":
                delay += fault.delay_s
            elif fault.kind == "status":
                headers = {}
                if fault.retry_after_s is not None:
                    headers["Retry-After"] = f"{fault.retry_after_s:g}"
                messages = {429: "Rate limit exceeded", 500: "Internal Server Error"}
                response = _error_response(
                    EmulatorApiError(
                        fault.status, messages.get(fault.status, "Upstream error"), headers=headers
                    )
                )
                await _after(delay, response(scope, receive, send))
                return
            elif fault.kind == "timeout":
                await self._connection_fault("timeout")
                return
            elif fault.kind == "lost_response":
                await self.app(scope, receive, _discard)
                await self._connection_fault("lost_response")
                return
        if not delay:
            await self.app(scope, receive, send)
            return
        # Handled now, answered after the latency: what changed, changed before the answer.
        held: list[Any] = []

        async def hold(message: Any) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        await asyncio.sleep(delay)
        for message in held:
            await send(message)

    async def _connection_fault(self, kind: FaultKind) -> None:
        if self.connection_faults == "raise":
            raise EmulatedConnectionFault(kind)
        await asyncio.sleep(self.stall_s)  # over a real socket, silence is what a client sees
        raise EmulatedConnectionFault(kind)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        # Faults live in this process's memory, never in the state file: a reading section.
        with self._lock.reading():
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def _authenticate(self, request: Request, *, management: bool) -> EmulatedKey:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise EmulatorApiError(401, "Missing Authentication header")
        key = self._by_secret.get(_digest(header[7:].strip()))
        if key is None or key.disabled or self._expired(key, self.clock()):
            raise EmulatorApiError(401, "User not found.")
        if management and not key.is_management:
            raise EmulatorApiError(403, "Only management keys can perform this operation")
        return key

    def _managed_key(self, key_hash: str) -> EmulatedKey:
        key = self._keys.get(key_hash)
        if key is None or key.is_management:
            raise EmulatorApiError(404, "Resource not found")
        return key

    async def _list_keys(self, request: Request) -> Response:
        self._authenticate(request, management=True)
        query = request.query_params
        try:
            offset = int(query.get("offset", "0") or 0)
        except ValueError as exc:
            raise EmulatorApiError(400, "Invalid request parameters") from exc
        if offset < 0:
            raise EmulatorApiError(400, "Invalid request parameters")
        include_disabled = query.get("include_disabled", "false").lower() == "true"
        include_expired = query.get("include_expired", "false").lower() == "true"
        workspace = query.get("workspace_id", DEFAULT_WORKSPACE_ID)
        now = self.clock()
        with self._lock.reading():
            selected = [
                k
                for k in self.user_keys()
                if (include_disabled or not k.disabled)
                and (include_expired or not self._expired(k, now))
                and k.workspace_id == workspace
            ]
            page = selected[offset : offset + PAGE_SIZE]
            return _json(200, {"data": [self.key_json(k) for k in page]})

    async def _create_key(self, request: Request) -> Response:
        body = await _json_body(request)
        creator = self._authenticate(request, management=True)
        if not isinstance(body, dict):
            raise EmulatorApiError(400, "Invalid request parameters")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise EmulatorApiError(400, "name: String must contain at least 1 character(s)")
        limit = _parse_limit(body.get("limit"))
        limit_reset = _parse_limit_reset(body.get("limit_reset"))
        include_byok = _parse_bool(body, "include_byok_in_limit", default=False)
        expires_at = _parse_expires_at(body.get("expires_at"))
        external = body.get("external")
        external_user = None
        if external is not None:
            user = external.get("user") if isinstance(external, dict) else None
            if not isinstance(user, str) or not 1 <= len(user) <= 512:
                raise EmulatorApiError(400, "external.user: String must be 1 to 512 characters")
            partner_key = external.get("api_key")  # stored hashed by OpenRouter, never returned
            if partner_key is not None and (
                not isinstance(partner_key, str) or len(partner_key) < 32
            ):
                raise EmulatorApiError(
                    400, "external.api_key: String must contain at least 32 characters"
                )
            external_user = user
        workspace = body.get("workspace_id", DEFAULT_WORKSPACE_ID)
        if not isinstance(workspace, str):
            raise EmulatorApiError(400, "workspace_id: Expected string")
        with self._lock:
            key = self._new_key(name=name)
            key.limit, key.limit_reset, key.include_byok_in_limit = limit, limit_reset, include_byok
            key.expires_at, key.external_user, key.workspace_id = (
                expires_at,
                external_user,
                workspace,
            )
            key.creator_user_id = body.get("creator_user_id") or creator.creator_user_id
            return _json(201, {"data": self.key_json(key), "key": key.secret})

    async def _get_key(self, request: Request) -> Response:
        self._authenticate(request, management=True)
        with self._lock.reading():
            key = self._managed_key(request.path_params["key_hash"])
            return _json(200, {"data": self.key_json(key)})

    async def _update_key(self, request: Request) -> Response:
        body = await _json_body(request)
        self._authenticate(request, management=True)
        if not isinstance(body, dict):
            raise EmulatorApiError(400, "Invalid request parameters")
        # Unknown fields are ignored, as OpenRouter does; none of the known ones is an error.
        updates = {f: body[f] for f in _PATCHABLE if f in body}
        if not updates:
            raise EmulatorApiError(400, "No update fields provided")
        with self._lock:
            key = self._managed_key(request.path_params["key_hash"])
            if "name" in updates:
                if not isinstance(updates["name"], str) or not updates["name"]:
                    raise EmulatorApiError(400, "name: Expected non-empty string")
                key.name = updates["name"]
            if "disabled" in updates:
                key.disabled = _parse_bool(updates, "disabled", default=key.disabled)
            if "limit" in updates:
                key.limit = _parse_limit(updates["limit"])
            if "limit_reset" in updates:
                key.limit_reset = _parse_limit_reset(updates["limit_reset"])
            if "include_byok_in_limit" in updates:
                key.include_byok_in_limit = _parse_bool(
                    updates, "include_byok_in_limit", default=key.include_byok_in_limit
                )
            if "workspace_id" in updates:
                key.workspace_id = str(updates["workspace_id"])
            key.updated_at = self.clock()
            return _json(200, {"data": self.key_json(key)})

    async def _delete_key(self, request: Request) -> Response:
        self._authenticate(request, management=True)
        with self._lock:
            key = self._managed_key(request.path_params["key_hash"])
            del self._keys[key.hash]
            del self._by_secret[key.secret_digest]
            self._assignments.pop(key.hash, None)  # a deleted key holds no guardrail
            key.deleted_at = self.clock()
            self._deleted[key.hash] = key
        return _json(200, {"deleted": True})

    async def _current_key(self, request: Request) -> Response:
        key = self._authenticate(request, management=False)
        with self._lock.reading():
            return _json(200, {"data": self.current_key_json(key)})

    async def _credits(self, request: Request) -> Response:
        self._authenticate(request, management=True)
        with self._lock.reading():
            every = [*self._keys.values(), *self._deleted.values()]
            used = sum((self._spent(k, None, byok=False) for k in every), Decimal(0))
        return _json(
            200,
            {"data": {"total_credits": _number(self.total_credits), "total_usage": _number(used)}},
        )

    async def _charge(self, request: Request) -> Response:
        """Spend on the key in the Authorization header, as an inference call would.

        Body: {"cost": <USD>, "max_cost"?, "duration_s"?, "byok"?, "generation_id"?, "model"?,
        "provider_name"?, "prompt_tokens"?, "completion_tokens"?, "reasoning_tokens"?,
        "cached_tokens"?}. Answers {"id": "<generation id>", "data": <GET /key of the key>}
        once billed: `id` is where a chat completion carries it, for GET /generation?id=."""
        body = await _json_body(request)
        header = request.headers.get("authorization", "")
        if not isinstance(body, dict) or "cost" not in body:
            raise EmulatorApiError(400, "cost is required")
        try:
            cost = Decimal(str(body["cost"]))
            max_cost = None if body.get("max_cost") is None else Decimal(str(body["max_cost"]))
            duration_s = float(body.get("duration_s") or self.billing_delay_s)
        except (InvalidOperation, TypeError, ValueError) as exc:
            raise EmulatorApiError(400, "cost and duration_s must be numbers") from exc
        if not (cost.is_finite() and cost >= 0 and 0 <= duration_s <= 600):
            raise EmulatorApiError(400, "cost must be >= 0 and duration_s within 0 to 600")
        details = _request_details(
            generation_id=body.get("generation_id"),
            model=body.get("model", DEFAULT_MODEL),
            provider_name=body.get("provider_name", DEFAULT_PROVIDER),
            prompt_tokens=body.get("prompt_tokens", 0),
            completion_tokens=body.get("completion_tokens", 0),
            reasoning_tokens=body.get("reasoning_tokens", 0),
            cached_tokens=body.get("cached_tokens", 0),
        )
        key = await self.spend(
            header.removeprefix("Bearer ").strip(),
            cost,
            duration_s=duration_s,
            byok=body.get("byok") is True,
            max_cost=max_cost,
            generation_id=details.generation_id,
            model=details.model,
            provider_name=details.provider_name,
            prompt_tokens=details.prompt_tokens,
            completion_tokens=details.completion_tokens,
            reasoning_tokens=details.reasoning_tokens,
            cached_tokens=details.cached_tokens,
        )
        with self._lock.reading():
            return _json(200, {"id": details.generation_id, "data": self.current_key_json(key)})

    async def _chat_completions(self, request: Request) -> Response:
        """POST /chat/completions, OpenAI-compatible and not streamed, with the user key in the
        Authorization header: admitted against the key's limit for its worst case (prompt plus
        max_tokens), billed at completion, answered with the generation id as `id` and OpenRouter's
        usage accounting (tokens and `cost` in USD) in `usage`. Refusals are OpenRouter's:
        401 for an unknown or disabled key, 403 "Key limit exceeded", 402 when the worst case
        is more than the key has left, and the guardrails' (see charge). The provider is the
        first the body's `provider` preferences (only, order, ignore, allow_fallbacks) and the
        key's guardrails allow, the default provider when the body names none."""
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise EmulatorApiError(401, "Missing Authentication header")
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise EmulatorApiError(400, "Input required: specify a request body")
        model, messages = body.get("model", DEFAULT_MODEL), body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise EmulatorApiError(400, "messages: Input required: specify an array of messages")
        if body.get("stream") is True:
            raise EmulatorApiError(400, "stream: the emulator answers only whole completions")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise EmulatorApiError(400, "max_tokens: Expected a positive integer")
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        prompt_tokens = 3 * len(messages) + (prompt_chars + 3) // 4
        completion_tokens = min(CHAT_REPLY_TOKENS, max_tokens or CHAT_REPLY_TOKENS)
        price = self.chat_usd_per_token
        cost = price * (prompt_tokens + completion_tokens)
        worst = price * (prompt_tokens + (max_tokens or completion_tokens))
        candidates = _chat_providers(body)
        if not candidates:
            # (guess) the words OpenRouter uses when provider preferences leave nothing
            raise EmulatorApiError(
                404, "No allowed providers are available for the selected model."
            )
        provider = self._chat_provider(header[7:].strip(), candidates)
        generation_id = new_generation_id()
        await self.spend(
            header[7:].strip(),
            cost,
            duration_s=self.billing_delay_s,
            max_cost=worst,
            generation_id=generation_id,
            model=model,
            provider_name=provider,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        reply = f"Emulated reply to {len(messages)} message(s)."
        return _json(
            200,
            {
                "id": generation_id,
                "object": "chat.completion",
                "created": int(self.clock().timestamp()),
                "model": model,
                "provider": provider,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply, "refusal": None},
                        "finish_reason": "stop",
                        "native_finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "cost": _number(cost),
                    "is_byok": False,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                    "cost_details": {"upstream_inference_cost": None},
                },
            },
        )

    # ----- guardrails (management key) -----

    def _workspace_default(self, workspace_id: str) -> EmulatedGuardrail:
        """A workspace's default guardrail, made when the workspace is first looked at: named
        "Workspace <id> Default" (OpenRouter's guardrails guide), listed, unconfigured (404 to
        GET, enforcing nothing) until a PATCH materializes it."""
        guardrail_id = _workspace_default_id(workspace_id)
        if guardrail_id not in self._guardrails:
            self._guardrails[guardrail_id] = EmulatedGuardrail(
                id=guardrail_id,
                name=f"Workspace {workspace_id} Default",
                workspace_id=workspace_id,
                created_at=self.clock(),
                workspace_default=True,
                configured=False,
            )
        return self._guardrails[guardrail_id]

    def _managed_guardrail(self, request: Request, *, readable: bool = True) -> EmulatedGuardrail:
        """The guardrail of the path, 404 when unknown (or, readable, an unconfigured default)."""
        guardrail = self._guardrails.get(_guardrail_id(request.path_params["guardrail_id"]))
        if guardrail is None or (readable and not guardrail.configured):
            raise EmulatorApiError(404, "Resource not found")
        return guardrail

    async def _list_guardrails(self, request: Request) -> Response:
        """GET /guardrails?offset=&limit=&workspace_id=: a workspace's guardrails (the default
        workspace's unless named), its default guardrail among them, oldest first (guess: no
        order is documented), with the workspace's total_count."""
        self._authenticate(request, management=True)
        offset, limit = _page_params(request.query_params)
        workspace = request.query_params.get("workspace_id") or DEFAULT_WORKSPACE_ID

        def listed() -> Response:
            selected = [g for g in self._guardrails.values() if g.workspace_id == workspace]
            page = selected[offset : offset + limit]
            return _json(
                200,
                {"data": [self.guardrail_json(g) for g in page], "total_count": len(selected)},
            )

        with self._lock.reading():
            if _workspace_default_id(workspace) in self._guardrails:
                return listed()
        with self._lock:  # the workspace's first look makes its default guardrail
            self._workspace_default(workspace)
            return listed()

    async def _create_guardrail(self, request: Request) -> Response:
        """POST /guardrails: 201 {"data": guardrail}. It enforces nothing until keys are
        assigned to it, whatever its workspace (OpenRouter's spec)."""
        body = await _json_body(request)
        self._authenticate(request, management=True)
        if not isinstance(body, dict):
            raise EmulatorApiError(400, "Invalid request parameters")
        if "name" not in body:
            raise EmulatorApiError(400, "name: Required")
        fields, flags = _guardrail_changes(body)
        workspace = body.get("workspace_id", DEFAULT_WORKSPACE_ID)
        if not isinstance(workspace, str) or not workspace:
            raise EmulatorApiError(400, "workspace_id: Expected string")
        with self._lock:
            self._workspace_default(workspace)
            guardrail = EmulatedGuardrail(
                id=str(uuid.uuid4()),
                workspace_id=workspace,
                created_at=self.clock(),
                **fields,
                flags=flags,
            )
            _check_budget_pair(guardrail)
            self._guardrails[guardrail.id] = guardrail
            return _json(201, {"data": self.guardrail_json(guardrail)})

    async def _get_guardrail(self, request: Request) -> Response:
        self._authenticate(request, management=True)
        with self._lock.reading():
            guardrail = self._managed_guardrail(request)
            return _json(200, {"data": self.guardrail_json(guardrail)})

    async def _update_guardrail(self, request: Request) -> Response:
        """PATCH /guardrails/{id}: the fields sent, lists replaced whole; 400 when none is
        known (guess, as PATCH /keys), or for a new name of a workspace default guardrail
        (derived from its workspace, OpenRouter's spec), which this also materializes.
        Changing a budget does not reset its spend (DOC-spend: no manual reset)."""
        body = await _json_body(request)
        self._authenticate(request, management=True)
        if not isinstance(body, dict):
            raise EmulatorApiError(400, "Invalid request parameters")
        fields, flags = _guardrail_changes(body)
        if not fields and not flags:
            raise EmulatorApiError(400, "No update fields provided")
        with self._lock:
            current = self._managed_guardrail(request, readable=False)
            if current.workspace_default and fields.get("name", current.name) != current.name:
                raise EmulatorApiError(
                    400, "The name of a workspace default guardrail cannot be changed"
                )
            guardrail = replace(
                current,
                **fields,
                flags={**current.flags, **flags},
                updated_at=self.clock(),
                configured=True,
            )
            _check_budget_pair(guardrail)
            self._guardrails[guardrail.id] = guardrail
            return _json(200, {"data": self.guardrail_json(guardrail)})

    async def _delete_guardrail(self, request: Request) -> Response:
        """DELETE /guardrails/{id}: {"deleted": true}; its keys are unassigned (free of it).
        A workspace default guardrail cannot be deleted: 400 (guess)."""
        self._authenticate(request, management=True)
        with self._lock:
            guardrail = self._managed_guardrail(request, readable=False)
            if guardrail.workspace_default:
                raise EmulatorApiError(400, "A workspace default guardrail cannot be deleted")
            del self._guardrails[guardrail.id]
            for key_hash in [
                h for h, a in self._assignments.items() if a.guardrail_id == guardrail.id
            ]:
                del self._assignments[key_hash]
        return _json(200, {"deleted": True})

    async def _list_key_assignments(self, request: Request) -> Response:
        """GET /guardrails/{id}/assignments/keys (one guardrail's) or
        /guardrails/assignments/keys (all): oldest first, paged, with total_count."""
        self._authenticate(request, management=True)
        offset, limit = _page_params(request.query_params)
        with self._lock.reading():
            selected = list(self._assignments.values())
            if "guardrail_id" in request.path_params:
                guardrail = self._managed_guardrail(request, readable=False)
                selected = [a for a in selected if a.guardrail_id == guardrail.id]
            page = selected[offset : offset + limit]
            return _json(
                200,
                {
                    "data": [self.key_assignment_json(a) for a in page],
                    "total_count": len(selected),
                },
            )

    async def _assign_keys(self, request: Request) -> Response:
        """POST /guardrails/{id}/assignments/keys {"key_hashes": [...]}: {"assigned_count"}.
        "A key may hold at most one guardrail; assigning replaces any existing assignment"
        (OpenRouter's spec): a key of another guardrail moves here. Hashes of no (user) key are
        skipped and not counted (guess: the count is of keys "successfully assigned"); a key
        already here counts and keeps its assignment. The workspace default guardrail applies
        to all keys of its workspace and takes no assignment: 400 (guess)."""
        body = await _json_body(request)
        self._authenticate(request, management=True)
        key_hashes = _key_hashes(body)
        with self._lock:
            guardrail = self._managed_guardrail(request, readable=False)
            if guardrail.workspace_default:
                raise EmulatorApiError(
                    400, "The workspace default guardrail applies to every key of its workspace"
                )
            assigned = 0
            for key_hash in key_hashes:
                key = self._keys.get(key_hash)
                if key is None or key.is_management:
                    continue
                assigned += 1
                current = self._assignments.get(key_hash)
                if current is not None and current.guardrail_id == guardrail.id:
                    continue
                self._assignments.pop(key_hash, None)
                self._assignments[key_hash] = EmulatedKeyAssignment(
                    id=str(uuid.uuid4()),
                    key_hash=key_hash,
                    guardrail_id=guardrail.id,
                    created_at=self.clock(),
                    # the management key's creator, none for an individual account
                    assigned_by=None,
                )
            return _json(200, {"assigned_count": assigned})

    async def _unassign_keys(self, request: Request) -> Response:
        """POST /guardrails/{id}/assignments/keys/remove: {"unassigned_count"}, of the keys
        that held this guardrail (others are left as they are, uncounted)."""
        body = await _json_body(request)
        self._authenticate(request, management=True)
        key_hashes = _key_hashes(body)
        with self._lock:
            guardrail = self._managed_guardrail(request, readable=False)
            unassigned = 0
            for key_hash in key_hashes:
                current = self._assignments.get(key_hash)
                if current is not None and current.guardrail_id == guardrail.id:
                    del self._assignments[key_hash]
                    unassigned += 1
            return _json(200, {"unassigned_count": unassigned})

    async def _list_member_assignments(self, request: Request) -> Response:
        """The member assignment lists: the emulated account is an individual one, with no
        organization members, so they are empty."""
        self._authenticate(request, management=True)
        _page_params(request.query_params)
        with self._lock.reading():
            if "guardrail_id" in request.path_params:
                self._managed_guardrail(request, readable=False)
        return _json(200, {"data": [], "total_count": 0})

    async def _assign_members(self, request: Request) -> Response:
        """Bulk (un)assign members: no user id is a member of an individual account, so none
        is (un)assigned (counted as the key calls count unknown hashes)."""
        body = await _json_body(request)
        self._authenticate(request, management=True)
        _key_hashes(body, "member_user_ids")
        with self._lock.reading():
            self._managed_guardrail(request, readable=False)
        removing = request.url.path.endswith("/remove")
        return _json(200, {"unassigned_count" if removing else "assigned_count": 0})

    async def _generation(self, request: Request) -> Response:
        """GET /generation?id=: any valid key of the account; 404 until ready, or unknown."""
        self._authenticate(request, management=False)
        generation_id = request.query_params.get("id", "")
        if not generation_id:
            raise EmulatorApiError(400, "id: Required")
        with self._lock.reading():
            generation = self._generations.get(generation_id)
            ready = generation is not None and self.clock() >= generation.billed_at + timedelta(
                seconds=self.generation_delay_s
            )
            if generation is None or not ready:
                raise EmulatorApiError(404, f"Generation {generation_id} not found")
            return _json(200, {"data": self.generation_json(generation)})

    async def _activity(self, request: Request) -> Response:
        """GET /activity (management key): date, api_key_hash, workspace_id, group_by."""
        self._authenticate(request, management=True)
        query = request.query_params
        day = None
        if (text := query.get("date")) is not None:
            day = _parse_activity_date(text)
            first, last = self.activity_days()
            if not first <= day <= last:
                raise EmulatorApiError(400, "Invalid date format or date range")
        group_by = query.get("group_by")
        if group_by not in (None, "workspace"):
            raise EmulatorApiError(400, "group_by: Invalid enum value. Expected 'workspace'")
        # user_id filters an organization's members; an individual account has one: ignored.
        with self._lock.reading():
            rows = self.activity_json(
                api_key_hash=query.get("api_key_hash") or None,
                day=day,
                workspace_id=query.get("workspace_id") or None,
                by_workspace=group_by == "workspace",
            )
        return _json(200, {"data": rows})

    async def _state(self, _: Request) -> Response:
        return _json(200, {"data": self.state()})

    async def _faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_faults()
            return Response(status_code=204)
        body = await _json_body(request)
        try:
            # JSON numbers arrive as Decimal; the fault's seconds are floats for asyncio.
            fields: dict[str, Any] | None = (
                {k: float(v) if isinstance(v, Decimal) else v for k, v in body.items()}
                if isinstance(body, dict)
                else None
            )
            fault = Fault(**fields) if fields is not None else None
        except TypeError:
            fault = None
        if fault is None or fault.kind not in ("status", "latency", "timeout", "lost_response"):
            return _error_response(EmulatorApiError(400, "invalid fault"))
        self.inject(fault)
        return Response(status_code=204)


async def _discard(message: Any) -> None:
    """An ASGI send that drops the response: the 'response lost' fault."""


async def _after(delay_s: float, sending: Any) -> None:
    if delay_s:
        await asyncio.sleep(delay_s)
    await sending


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw, parse_float=Decimal)
    except ValueError:
        return _MALFORMED


_MALFORMED = object()


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def _error_response(error: EmulatorApiError) -> Response:
    body: dict[str, Any] = {"code": error.status, "message": error.message}
    if error.metadata:
        body["metadata"] = error.metadata
    return Response(
        json.dumps({"error": body}),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def _parse_bool(body: dict[str, Any], field: str, *, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise EmulatorApiError(400, f"{field}: Expected boolean")
    return value


def _parse_limit(value: Any, field: str = "limit") -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise EmulatorApiError(400, f"{field}: Expected number, received " + type(value).__name__)
    amount = Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        raise EmulatorApiError(400, f"{field}: Number must be greater than or equal to 0")
    return amount


def _parse_limit_reset(value: Any, field: str = "limit_reset") -> str | None:
    if value is None or value in LIMIT_RESETS:
        return value  # type: ignore[no-any-return]
    raise EmulatorApiError(
        400, f"{field}: Invalid enum value. Expected 'daily' | 'weekly' | 'monthly'"
    )


def _parse_expires_at(value: Any) -> datetime | None:
    if value is None:
        return None
    # OpenRouter wants UTC with seconds: YYYY-MM-DDTHH:MM:SS(.fff)Z or +00:00.
    if not isinstance(value, str) or len(value) < 20:
        raise EmulatorApiError(400, "expires_at: must be an ISO 8601 UTC date-time with seconds")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise EmulatorApiError(400, "expires_at: must be an ISO 8601 UTC date-time") from exc
    if moment.utcoffset() != timedelta(0):
        raise EmulatorApiError(400, "expires_at: only UTC is accepted")
    return moment


def _parse_activity_date(text: str) -> date:
    # Exactly YYYY-MM-DD: date.fromisoformat would also take 20250824 or 2025-W34-1.
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        raise EmulatorApiError(400, "Invalid date format or date range")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise EmulatorApiError(400, "Invalid date format or date range") from exc


def _workspace_default_id(workspace_id: str) -> str:
    """The id of a workspace's default guardrail: stable, so a state file need not hold it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"openrouter-emulator:default:{workspace_id}"))


def _provider_slug(provider: str) -> str:
    """A provider's id as guardrails name them ("openai", "google-vertex") from its id or its
    display name ("OpenAI", "Google Vertex"), for comparing the two."""
    return "-".join(provider.strip().lower().split())


def _provider_allowed(guardrail: EmulatedGuardrail, provider: str) -> bool:
    slug = _provider_slug(provider)
    allowed, ignored = guardrail.allowed_providers, guardrail.ignored_providers or []
    if allowed is not None and slug not in {_provider_slug(p) for p in allowed}:
        return False
    return slug not in {_provider_slug(p) for p in ignored}


def _page_params(query: Any) -> tuple[int, int]:
    """offset (>= 0, default 0) and limit (1 to 100, default 50) of a guardrail list."""
    try:
        offset = int(query.get("offset") or 0)
        limit = int(query.get("limit") or GUARDRAIL_PAGE_DEFAULT)
    except ValueError as exc:
        raise EmulatorApiError(400, "Invalid request parameters") from exc
    if offset < 0 or not 1 <= limit <= GUARDRAIL_PAGE_MAX:
        raise EmulatorApiError(400, "Invalid request parameters")
    return offset, limit


def _guardrail_id(text: str) -> str:
    """A guardrail id from a path: a uuid (OpenRouter's spec types it format: uuid)."""
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise EmulatorApiError(400, "id: Invalid uuid") from exc


def _parse_strings(body: dict[str, Any], name: str) -> list[str] | None:
    value = body[name]
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise EmulatorApiError(400, f"{name}: Expected an array of non-empty strings")
    if not value:
        raise EmulatorApiError(400, f"{name}: Array must contain at least 1 element(s)")
    return list(dict.fromkeys(value))


def _parse_content_filters(value: Any, *, builtin: bool) -> list[dict[str, Any]] | None:
    name = "content_filter_builtins" if builtin else "content_filters"
    if value is None:
        return None
    if not isinstance(value, list):
        raise EmulatorApiError(400, f"{name}: Expected array")
    entries = []
    for entry in value:
        key = "slug" if builtin else "pattern"
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("action"), str)
            and isinstance(entry.get(key), str)
            and entry[key]
        ):
            raise EmulatorApiError(400, f"{name}: each entry needs an action and a {key}")
        if builtin:
            # Labels are system-assigned from the slug ("[EMAIL]"); a caller's is ignored.
            kept = {"action": entry["action"], "slug": entry["slug"]}
            kept["label"] = "[" + entry["slug"].upper().replace("-", "_") + "]"
            if isinstance(entry.get("scan_scope"), str):
                kept["scan_scope"] = entry["scan_scope"]
        else:
            label = entry.get("label")
            kept = {"action": entry["action"], "pattern": entry["pattern"]}
            kept["label"] = label if isinstance(label, str) else None
        entries.append(kept)
    return entries


def _guardrail_changes(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool | None]]:
    """The guardrail fields a create or update body sets, checked (400 otherwise), and its
    privacy switches. Unknown fields are ignored, as on PATCH /keys."""
    fields: dict[str, Any] = {}
    flags: dict[str, bool | None] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise EmulatorApiError(400, "name: String must be 1 to 200 characters")
        fields["name"] = name
    if "description" in body:
        description = body["description"]
        if description is not None and (
            not isinstance(description, str) or len(description) > 1000
        ):
            raise EmulatorApiError(400, "description: String must be at most 1000 characters")
        fields["description"] = description
    if "limit_usd" in body:
        fields["limit_usd"] = _parse_limit(body["limit_usd"], "limit_usd")
    if "reset_interval" in body:
        fields["reset_interval"] = _parse_limit_reset(body["reset_interval"], "reset_interval")
    if "include_byok_in_budgets" in body:
        fields["include_byok_in_budgets"] = _parse_bool(
            body, "include_byok_in_budgets", default=False
        )
    for name in GUARDRAIL_LISTS:
        if name in body:
            fields[name] = _parse_strings(body, name)
    if "allowed_data_regions" in body:
        regions = _parse_strings(body, "allowed_data_regions")
        if regions is not None and not set(regions) <= set(DATA_REGIONS):
            raise EmulatorApiError(
                400, "allowed_data_regions: Invalid enum value. Expected 'global' | 'europe' | 'us'"
            )
        fields["allowed_data_regions"] = regions
    for name, builtin in (("content_filters", False), ("content_filter_builtins", True)):
        if name in body:
            fields[name] = _parse_content_filters(body[name], builtin=builtin)
    for name in GUARDRAIL_FLAGS:
        if name in body:
            if body[name] is not None and not isinstance(body[name], bool):
                raise EmulatorApiError(400, f"{name}: Expected boolean")
            flags[name] = body[name]
    if flags.get("enforce_zdr") is not None:
        for name in ZDR_FLAGS:
            flags.setdefault(name, flags["enforce_zdr"])
    return fields, flags


def _check_budget_pair(guardrail: EmulatedGuardrail) -> None:
    """limit_usd and reset_interval go together: "a request that sets only one of the two is
    rejected with a 400" (SDK CreateGuardrailRequest.limit_usd). Checked on the result, so a
    PATCH may change one of a pair already set."""
    if (guardrail.limit_usd is None) != (guardrail.reset_interval is None):
        raise EmulatorApiError(400, "limit_usd and reset_interval must be provided together")


def _key_hashes(body: Any, field: str = "key_hashes") -> list[str]:
    values = body.get(field) if isinstance(body, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise EmulatorApiError(400, f"{field}: Expected an array of non-empty strings")
    if not values:
        raise EmulatorApiError(400, f"{field}: Array must contain at least 1 element(s)")
    return list(dict.fromkeys(values))


def _chat_providers(body: dict[str, Any]) -> list[str]:
    """The providers a chat completion may be served by, in preference order: its `provider`
    preferences' `only` (ordered by `order`), else `order` (then the default provider unless
    allow_fallbacks is false), else the default provider; less those in `ignore`. The emulator
    serves every model at every provider named."""
    preferences = body.get("provider")
    if preferences is None:
        return [DEFAULT_PROVIDER]
    if not isinstance(preferences, dict):
        raise EmulatorApiError(400, "provider: Expected object")
    lists: dict[str, list[str]] = {}
    for name in ("only", "order", "ignore"):
        value = preferences.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise EmulatorApiError(400, f"provider.{name}: Expected an array of strings")
        lists[name] = value
    order = lists.get("order", [])
    if "only" in lists:
        only = {_provider_slug(p) for p in lists["only"]}
        ranked = [p for p in order if _provider_slug(p) in only]
        candidates = ranked + [p for p in lists["only"] if p not in ranked]
    elif order:
        fallback = [] if preferences.get("allow_fallbacks") is False else [DEFAULT_PROVIDER]
        candidates = order + fallback
    else:
        candidates = [DEFAULT_PROVIDER]
    ignored = {_provider_slug(p) for p in lists.get("ignore", [])}
    return [p for p in candidates if _provider_slug(p) not in ignored]


def _provider_name(provider: str) -> str:
    """How a generation names a provider: the default one by its display name."""
    return (
        DEFAULT_PROVIDER
        if _provider_slug(provider) == _provider_slug(DEFAULT_PROVIDER)
        else provider
    )


class _SharedState:
    """The emulator's lock. With a state directory it is also the state's file lock, so that
    processes (the local server, a command beside it) share one emulator: every section first
    reloads what another process wrote (a stat when nothing was), then

    - a writing section (`with lock:`) writes the whole state back, atomically (a temporary file
      renamed over it). Leaving normally it writes at once: a writing section is a change. Left
      by an exception (a refusal, mostly before anything changed) it writes only if the state
      differs from what it last wrote, so that a partial change is kept.
    - a reading section (`with lock.reading():`) writes nothing and serialises nothing: a
      lookup costs a stat, whatever the size of the state.

    Sections are writing unless marked: one that changes nothing left unmarked costs a write,
    never a change. A section marked reading that changed the state would lose the change at
    the next reload, so a writing section opened inside a reading one raises, and with
    check_reads (OPENROUTER_EMULATOR_CHECK_READS=1; the emulator's own tests set it) every
    outermost reading section compares the snapshot at its start and end and raises if it
    changed. Reentrant.
    """

    check_reads = os.environ.get("OPENROUTER_EMULATOR_CHECK_READS") == "1"

    def __init__(self, emulator: Emulator, directory: Path | None) -> None:
        self._emulator = emulator
        self._directory = directory
        self._lock = threading.RLock()
        self._depth = 0
        self._reading = False  # the outermost section open is a reading one
        self._before: dict[str, Any] | None = None  # its snapshot, with check_reads
        self._seen: tuple[int, int, int] | None = None  # the state file's inode, mtime, size
        self._written: str | None = None
        self._lock_file: Any = None
        self.writes = 0  # state files written by this process
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._state_path = directory / "openrouter-emulator.json"
            self._key_path = directory / "openrouter-emulator.key"
            self._lock_path = directory / "openrouter-emulator.lock"

    def management_key(self) -> str | None:
        """The management key kept from an earlier process, if the state and its key exist."""
        if self._directory is None or not self._key_path.exists():
            return None
        with self.reading():
            key = self._key_path.read_text().strip()
            known = self._emulator._by_secret.get(_digest(key))
            return key if known is not None and known.is_management else None

    def keep_management_key(self, key: str) -> None:
        """Write the management key to its own file (not the state: a reading section)."""
        if self._directory is None:
            return
        with self.reading():
            if not self._key_path.exists() or self._key_path.read_text().strip() != key:
                descriptor = os.open(self._key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(key + "\n")

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A section that only reads the state: it reloads it and never writes it."""
        self._enter(reading=True)
        try:
            yield
        finally:
            self._leave(failed=False)

    def __enter__(self) -> _SharedState:
        self._enter(reading=False)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._leave(failed=kind is not None)

    def _enter(self, *, reading: bool) -> None:
        self._lock.acquire()
        if self._depth > 0 and self._reading and not reading:
            self._lock.release()
            raise RuntimeError("a writing section inside a reading one: its change would be lost")
        self._depth += 1
        if self._depth > 1:
            return
        self._reading = reading
        try:
            if self._directory is not None:
                if self._lock_file is None:
                    # held for the process's life: closing it would release the lock
                    self._lock_file = open(self._lock_path, "a")  # noqa: SIM115
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
                self._reload()
            if reading and self.check_reads:
                self._before = self._emulator.snapshot()
        except BaseException:
            self._leave(failed=True, entered=False)  # nothing was read: nothing to write
            raise

    def _leave(self, *, failed: bool, entered: bool = True) -> None:
        outermost = self._depth == 1
        try:
            try:
                if outermost and entered:
                    self._finish(failed=failed)
            finally:
                if outermost and self._lock_file is not None:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        finally:
            self._depth -= 1
            self._lock.release()

    def _finish(self, *, failed: bool) -> None:
        """The outermost section's end: a reading one checks (with check_reads) that it changed
        nothing; a writing one writes the state."""
        before, self._before = self._before, None
        if self._reading:
            if before is not None and self._emulator.snapshot() != before:
                raise AssertionError(
                    "a reading section of the emulator changed its state "
                    "(make it a writing one: `with self._lock:`)"
                )
        elif self._directory is not None:
            self._save(unless_unchanged=failed)

    def _stamp(self) -> tuple[int, int, int]:
        stat = self._state_path.stat()
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _reload(self) -> None:
        try:
            stamp = self._stamp()
        except FileNotFoundError:
            return
        if stamp == self._seen:
            return
        text = self._state_path.read_text()
        self._emulator.restore(json.loads(text))
        self._seen, self._written = stamp, text

    def _save(self, *, unless_unchanged: bool) -> None:
        text = json.dumps(self._emulator.snapshot(), indent=1)
        if unless_unchanged and text == self._written:
            return
        temporary = self._state_path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self._state_path)
        self.writes += 1
        self._seen, self._written = self._stamp(), text


class _InProcessTransport(httpx.AsyncBaseTransport):
    """httpx's ASGI transport, turning the emulator's connection faults into httpx errors."""

    def __init__(self, emulator: Emulator) -> None:
        self._asgi = httpx.ASGITransport(app=emulator)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._asgi.handle_async_request(request)
        except EmulatedConnectionFault as fault:
            if fault.kind == "timeout":
                raise httpx.ReadTimeout("emulated timeout", request=request) from fault
            raise httpx.RemoteProtocolError(
                "emulated: server disconnected without sending a response", request=request
            ) from fault
