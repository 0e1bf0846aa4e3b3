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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
        with self._lock:
            return self._keys.get(key_hash)

    def user_keys(self) -> list[EmulatedKey]:
        """Every user key (not management keys), newest first."""
        return sorted(
            (k for k in self._keys.values() if not k.is_management),
            key=lambda k: k.sequence,
            reverse=True,
        )

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
        expired key. A billed charge leaves a generation record (EmulatedGeneration) with
        generation_id (else a new `gen-...` id: new_generation_id()), the model, provider and
        token counts given, the key's hash and external user; a refused one leaves none. 400
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
            key = self._admit(secret, cost, byok=byok, max_cost=max_cost)
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
            key = self._admit(secret, cost, byok=byok, max_cost=worst)
            started = self.clock()
            counts = not (byok and not key.include_byok_in_limit)
            reserved = worst if counts else Decimal(0)
            key.in_flight += reserved
        try:
            if duration_s > 0:
                await asyncio.sleep(duration_s)
        finally:
            with self._lock:
                self._bill(
                    key, cost, reserved=reserved, byok=byok, details=details, started=started
                )
        return key

    def generation(self, generation_id: str) -> EmulatedGeneration | None:
        """The generation record with this id, ready or not (GET /generation waits for it)."""
        with self._lock:
            return self._generations.get(generation_id)

    def generations(self, key_hash: str | None = None) -> list[EmulatedGeneration]:
        """Every generation record (of one key, deleted keys included), oldest billed first."""
        with self._lock:
            return [
                g for g in self._generations.values() if key_hash is None or g.key_hash == key_hash
            ]

    def _refuse_known_generation(self, generation_id: str) -> None:
        if generation_id in self._generations:
            raise EmulatorApiError(400, f"generation_id {generation_id} was already used")

    def _admit(
        self, secret: str, cost: Decimal, *, byok: bool, max_cost: Decimal | None
    ) -> EmulatedKey:
        key = self._by_secret.get(_digest(secret))
        now = self.clock()
        if key is None or key.disabled or key.is_management or self._expired(key, now):
            raise EmulatorApiError(401, "User not found.")
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
        return key

    def _bill(
        self,
        key: EmulatedKey,
        cost: Decimal,
        *,
        reserved: Decimal,
        byok: bool,
        details: _RequestDetails,
        started: datetime,
    ) -> None:
        now = self.clock()
        key.in_flight -= reserved
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
        with self._lock:
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
            for name in ("limit", "in_flight"):
                data[name] = None if data[name] is None else str(data[name])
            return data

        def generation_data(generation: EmulatedGeneration) -> dict[str, Any]:
            data = asdict(generation)
            data["cost"] = str(generation.cost)
            data["created_at"] = _iso(generation.created_at)
            data["billed_at"] = _iso(generation.billed_at)
            return data

        every = [*self._keys.values(), *self._deleted.values()]
        return {
            "version": 2,
            "sequence": self._sequence,
            "total_credits": str(self.total_credits),
            "keys": [key_data(k) for k in sorted(every, key=lambda k: k.sequence)],
            "generations": [generation_data(g) for g in self._generations.values()],
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
        """GET /key's budgets: every layer enforcement checks, in its order. The emulator has
        no guardrails or workspace budgets, so that is the key's own limit (scope key_limit)
        when it has one, else nothing."""
        if key.limit is None:
            return []
        spent = self._limit_spend(key, now)
        return [
            {
                "scope": "key_limit",
                "limit_usd": _number(key.limit),
                "spend_usd": _number(spent),
                # limit - spend, not clamped: zero or less means this layer rejects (403)
                "remaining_usd": _number(key.limit - spent),
                "reset_interval": key.limit_reset,
                "resets_at": None
                if key.limit_reset is None
                else _iso(_next_window_start(now, key.limit_reset)),
                "include_byok": key.include_byok_in_limit,
                "budget_id": None,
                "guardrail_id": None,
            }
        ]

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
            # No guardrail restricts regions here, and an account without regional routing
            # is served globally.
            "allowed_data_regions": ["global"],
            "organization_id": None,  # an individual account, not an organization
            "workspace_id": key.workspace_id,
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
        with self._lock:
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
        with self._lock:
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
        with self._lock:
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
            key.deleted_at = self.clock()
            self._deleted[key.hash] = key
        return _json(200, {"deleted": True})

    async def _current_key(self, request: Request) -> Response:
        key = self._authenticate(request, management=False)
        with self._lock:
            return _json(200, {"data": self.current_key_json(key)})

    async def _credits(self, request: Request) -> Response:
        self._authenticate(request, management=True)
        with self._lock:
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
        with self._lock:
            return _json(200, {"id": details.generation_id, "data": self.current_key_json(key)})

    async def _chat_completions(self, request: Request) -> Response:
        """POST /chat/completions, OpenAI-compatible and not streamed, with the user key in the
        Authorization header: admitted against the key's limit for its worst case (prompt plus
        max_tokens), billed at completion, answered with the generation id as `id` and OpenRouter's
        usage accounting (tokens and `cost` in USD) in `usage`. Refusals are OpenRouter's:
        401 for an unknown or disabled key, 403 "Key limit exceeded", 402 when the worst case
        is more than the key has left."""
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
        generation_id = new_generation_id()
        await self.spend(
            header[7:].strip(),
            cost,
            duration_s=self.billing_delay_s,
            max_cost=worst,
            generation_id=generation_id,
            model=model,
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
                "provider": DEFAULT_PROVIDER,
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

    async def _generation(self, request: Request) -> Response:
        """GET /generation?id=: any valid key of the account; 404 until ready, or unknown."""
        self._authenticate(request, management=False)
        generation_id = request.query_params.get("id", "")
        if not generation_id:
            raise EmulatorApiError(400, "id: Required")
        with self._lock:
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
        with self._lock:
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


def _parse_limit(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise EmulatorApiError(400, "limit: Expected number, received " + type(value).__name__)
    amount = Decimal(str(value))
    if amount < 0:
        raise EmulatorApiError(400, "limit: Number must be greater than or equal to 0")
    return amount


def _parse_limit_reset(value: Any) -> str | None:
    if value is None or value in LIMIT_RESETS:
        return value  # type: ignore[no-any-return]
    raise EmulatorApiError(
        400, "limit_reset: Invalid enum value. Expected 'daily' | 'weekly' | 'monthly'"
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


class _SharedState:
    """The emulator's lock. With a state directory it is also the state's file lock: every
    section first reads what another process (the local server, a command beside it) wrote, and
    afterwards writes what it changed, so they all share one emulator. Reentrant."""

    def __init__(self, emulator: Emulator, directory: Path | None) -> None:
        self._emulator = emulator
        self._directory = directory
        self._lock = threading.RLock()
        self._depth = 0
        self._seen: tuple[int, int] | None = None
        self._written: str | None = None
        self._lock_file: Any = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._state_path = directory / "openrouter-emulator.json"
            self._key_path = directory / "openrouter-emulator.key"
            self._lock_path = directory / "openrouter-emulator.lock"

    def management_key(self) -> str | None:
        """The management key kept from an earlier process, if the state and its key exist."""
        if self._directory is None or not self._key_path.exists():
            return None
        with self:
            key = self._key_path.read_text().strip()
            known = self._emulator._by_secret.get(_digest(key))
            return key if known is not None and known.is_management else None

    def keep_management_key(self, key: str) -> None:
        if self._directory is None:
            return
        with self:
            if not self._key_path.exists() or self._key_path.read_text().strip() != key:
                descriptor = os.open(self._key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(key + "\n")

    def __enter__(self) -> _SharedState:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._directory is not None:
            if self._lock_file is None:
                self._lock_file = open(self._lock_path, "a")  # held for the process's life
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._reload()
        return self

    def __exit__(self, *_: object) -> None:
        try:
            if self._depth == 1 and self._directory is not None:
                try:
                    self._save()
                finally:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        finally:
            self._depth -= 1
            self._lock.release()

    def _reload(self) -> None:
        try:
            stat = self._state_path.stat()
        except FileNotFoundError:
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._seen:
            return
        text = self._state_path.read_text()
        self._emulator.restore(json.loads(text))
        self._seen, self._written = stamp, text

    def _save(self) -> None:
        text = json.dumps(self._emulator.snapshot(), indent=1)
        if text == self._written:
            return
        temporary = self._state_path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self._state_path)
        stat = self._state_path.stat()
        self._seen, self._written = (stat.st_mtime_ns, stat.st_size), text


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
