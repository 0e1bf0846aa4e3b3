"""Typed views of OpenRouter's JSON, parsed leniently.

OpenRouter adds fields monthly and omits optional ones (../shared/reference/openrouter-api.md §0):
unknown fields are ignored, missing optional ones become None or zero. Only what we cannot work
without (a key's hash, a created key's secret) is required. Money is Decimal, never float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import SecretStr


class InvalidOpenRouterPayload(ValueError):
    """A response lacks something we cannot do without, or holds a value of the wrong type."""


def parse_money(value: object, *, field: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidOpenRouterPayload(f"{field}: expected a number")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float | str):
        try:
            # str() first: Decimal(0.1) would carry the float's binary error into our books.
            return Decimal(str(value))
        except InvalidOperation as exc:
            raise InvalidOpenRouterPayload(f"{field}: expected a number") from exc
    raise InvalidOpenRouterPayload(f"{field}: expected a number")


def _money_or_zero(data: Mapping[str, Any], field: str) -> Decimal:
    return parse_money(data.get(field), field=field) or Decimal(0)


def parse_timestamp(value: object, *, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidOpenRouterPayload(f"{field}: expected an ISO 8601 string")
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidOpenRouterPayload(f"{field}: expected an ISO 8601 string") from exc


def _optional_str(data: Mapping[str, Any], field: str) -> str | None:
    value = data.get(field)
    return value if isinstance(value, str) else None


def _bool(data: Mapping[str, Any], field: str) -> bool:
    return data.get(field) is True


def _optional_int(data: Mapping[str, Any], field: str) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidOpenRouterPayload(f"{field}: expected an integer")
    if isinstance(value, int):
        return value
    # A count sent as 12.0 (or, parsed with parse_float=Decimal, Decimal("12.0")) is still 12.
    if isinstance(value, float | Decimal) and value == int(value):
        return int(value)
    raise InvalidOpenRouterPayload(f"{field}: expected an integer")


def _int_or_zero(data: Mapping[str, Any], field: str) -> int:
    return _optional_int(data, field) or 0


def _optional_strings(data: Mapping[str, Any], field: str) -> tuple[str, ...] | None:
    """A list of strings (a guardrail's allowlist): None when absent or null."""
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidOpenRouterPayload(f"{field}: expected a list of strings")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """The key object of GET/POST/PATCH /keys (openrouter-api.md §1). Never holds the secret."""

    hash: str
    name: str
    label: str
    disabled: bool
    limit: Decimal | None
    limit_remaining: Decimal | None
    limit_reset: str | None
    include_byok_in_limit: bool
    usage: Decimal
    usage_daily: Decimal
    usage_weekly: Decimal
    usage_monthly: Decimal
    byok_usage: Decimal
    byok_usage_daily: Decimal
    byok_usage_weekly: Decimal
    byok_usage_monthly: Decimal
    created_at: datetime | None
    updated_at: datetime | None
    creator_user_id: str | None
    workspace_id: str | None
    expires_at: datetime | None
    external_user: str | None
    last_used_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> ApiKey:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("key object: expected a JSON object")
        key_hash = data.get("hash")
        if not isinstance(key_hash, str) or not key_hash:
            raise InvalidOpenRouterPayload("key object: missing hash")
        return cls(
            hash=key_hash,
            name=_optional_str(data, "name") or "",
            label=_optional_str(data, "label") or "",
            disabled=_bool(data, "disabled"),
            limit=parse_money(data.get("limit"), field="limit"),
            limit_remaining=parse_money(data.get("limit_remaining"), field="limit_remaining"),
            limit_reset=_optional_str(data, "limit_reset"),
            include_byok_in_limit=_bool(data, "include_byok_in_limit"),
            usage=_money_or_zero(data, "usage"),
            usage_daily=_money_or_zero(data, "usage_daily"),
            usage_weekly=_money_or_zero(data, "usage_weekly"),
            usage_monthly=_money_or_zero(data, "usage_monthly"),
            byok_usage=_money_or_zero(data, "byok_usage"),
            byok_usage_daily=_money_or_zero(data, "byok_usage_daily"),
            byok_usage_weekly=_money_or_zero(data, "byok_usage_weekly"),
            byok_usage_monthly=_money_or_zero(data, "byok_usage_monthly"),
            created_at=parse_timestamp(data.get("created_at"), field="created_at"),
            updated_at=parse_timestamp(data.get("updated_at"), field="updated_at"),
            creator_user_id=_optional_str(data, "creator_user_id"),
            workspace_id=_optional_str(data, "workspace_id"),
            expires_at=parse_timestamp(data.get("expires_at"), field="expires_at"),
            external_user=_optional_str(data, "external_user"),
            last_used_at=parse_timestamp(data.get("last_used_at"), field="last_used_at"),
        )


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A POST /keys result: the only moment the secret exists outside OpenRouter."""

    key: ApiKey
    secret: SecretStr

    @classmethod
    def from_json(cls, body: object) -> CreatedKey:
        if not isinstance(body, Mapping):
            raise InvalidOpenRouterPayload("create response: expected a JSON object")
        data = body.get("data")
        secret = body.get("key")
        # The spec puts the secret at the top level; some docs show data.key. Read both.
        if not isinstance(secret, str) and isinstance(data, Mapping):
            secret = data.get("key")
        if not isinstance(secret, str) or not secret:
            raise InvalidOpenRouterPayload("create response: missing the key secret")
        return cls(key=ApiKey.from_json(data), secret=SecretStr(secret))


@dataclass(frozen=True, slots=True)
class KeyBudget:
    """One budget layer of GET /key's `budgets` (SDK KeyBudget): a guardrail's
    (`workspace_default_key`, `member`, `api_key`...), a workspace budget's (`workspace`) or the
    key's own limit (`key_limit`), with what enforcement counts against it in its UTC window.
    `remaining_usd` zero or less means this layer refuses requests (403) until `resets_at`."""

    scope: str
    limit_usd: Decimal
    spend_usd: Decimal
    remaining_usd: Decimal
    reset_interval: str | None
    resets_at: datetime | None
    include_byok: bool
    guardrail_id: str | None
    budget_id: str | None

    @classmethod
    def from_json(cls, data: object) -> KeyBudget:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("key budget: expected a JSON object")
        limit_usd = _money_or_zero(data, "limit_usd")
        spend_usd = _money_or_zero(data, "spend_usd")
        remaining = parse_money(data.get("remaining_usd"), field="remaining_usd")
        if remaining is None:
            try:
                remaining = limit_usd - spend_usd
            except InvalidOperation as exc:  # "Infinity" less "Infinity"
                raise InvalidOpenRouterPayload("key budget: remaining_usd unknown") from exc
        return cls(
            scope=_optional_str(data, "scope") or "",
            limit_usd=limit_usd,
            spend_usd=spend_usd,
            remaining_usd=remaining,
            reset_interval=_optional_str(data, "reset_interval"),
            resets_at=parse_timestamp(data.get("resets_at"), field="resets_at"),
            include_byok=_bool(data, "include_byok"),
            guardrail_id=_optional_str(data, "guardrail_id"),
            budget_id=_optional_str(data, "budget_id"),
        )


@dataclass(frozen=True, slots=True)
class CurrentKey:
    """GET /key: the key that authenticated the call (it has no hash field).

    `budgets` are every layer enforcement checks, in its order (guardrails, workspace budgets,
    the key's own limit); `effective_budget` the one that refuses first. Both are absent from
    older answers: then empty and None.
    """

    label: str
    limit: Decimal | None
    limit_remaining: Decimal | None
    limit_reset: str | None
    usage: Decimal
    usage_monthly: Decimal
    is_free_tier: bool
    is_management_key: bool
    expires_at: datetime | None
    budgets: tuple[KeyBudget, ...] = ()
    effective_budget: KeyBudget | None = None

    @classmethod
    def from_json(cls, data: object) -> CurrentKey:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("current key: expected a JSON object")
        budgets = data.get("budgets")
        if budgets is not None and not isinstance(budgets, list):
            raise InvalidOpenRouterPayload("budgets: expected a list")
        effective = data.get("effective_budget")
        return cls(
            label=_optional_str(data, "label") or "",
            limit=parse_money(data.get("limit"), field="limit"),
            limit_remaining=parse_money(data.get("limit_remaining"), field="limit_remaining"),
            limit_reset=_optional_str(data, "limit_reset"),
            usage=_money_or_zero(data, "usage"),
            usage_monthly=_money_or_zero(data, "usage_monthly"),
            is_free_tier=_bool(data, "is_free_tier"),
            # is_provisioning_key is the deprecated name of the same flag.
            is_management_key=_bool(data, "is_management_key")
            or _bool(data, "is_provisioning_key"),
            expires_at=parse_timestamp(data.get("expires_at"), field="expires_at"),
            budgets=tuple(KeyBudget.from_json(item) for item in budgets or []),
            effective_budget=None if effective is None else KeyBudget.from_json(effective),
        )


@dataclass(frozen=True, slots=True)
class Credits:
    total_credits: Decimal
    total_usage: Decimal

    @property
    def balance(self) -> Decimal:
        return self.total_credits - self.total_usage

    @classmethod
    def from_json(cls, data: object) -> Credits:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("credits: expected a JSON object")
        return cls(
            total_credits=_money_or_zero(data, "total_credits"),
            total_usage=_money_or_zero(data, "total_usage"),
        )


@dataclass(frozen=True, slots=True)
class Generation:
    """GET /generation?id=: what OpenRouter counted for one request (openrouter-api.md §2.10).

    `total_cost` is what the request cost in USD, the figure to book; for a BYOK request
    (`is_byok`) it is only OpenRouter's credit charge, and the provider's own bill is
    `upstream_inference_cost`. OpenRouter's generation carries no key hash: which key made it is
    known from who made the request (or from `external_user`, set at the key's creation).
    `created_at` is when the request started, the instant /activity dates it by.

    Only `id` and `total_cost` are required: a generation without its cost is of no use.
    """

    id: str
    total_cost: Decimal
    usage: Decimal
    upstream_inference_cost: Decimal | None
    cache_discount: Decimal | None
    model: str
    provider_name: str | None
    created_at: datetime | None
    is_byok: bool
    tokens_prompt: int | None
    tokens_completion: int | None
    native_tokens_reasoning: int | None
    native_tokens_cached: int | None
    external_user: str | None
    workspace_id: str | None
    api_type: str | None
    finish_reason: str | None
    cancelled: bool

    @classmethod
    def from_json(cls, data: object) -> Generation:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("generation: expected a JSON object")
        generation_id = data.get("id")
        if not isinstance(generation_id, str) or not generation_id:
            raise InvalidOpenRouterPayload("generation: missing id")
        total_cost = parse_money(data.get("total_cost"), field="total_cost")
        if total_cost is None:
            raise InvalidOpenRouterPayload("generation: missing total_cost")
        return cls(
            id=generation_id,
            total_cost=total_cost,
            usage=_money_or_zero(data, "usage"),
            upstream_inference_cost=parse_money(
                data.get("upstream_inference_cost"), field="upstream_inference_cost"
            ),
            cache_discount=parse_money(data.get("cache_discount"), field="cache_discount"),
            model=_optional_str(data, "model") or "",
            provider_name=_optional_str(data, "provider_name"),
            created_at=parse_timestamp(data.get("created_at"), field="created_at"),
            is_byok=_bool(data, "is_byok"),
            tokens_prompt=_optional_int(data, "tokens_prompt"),
            tokens_completion=_optional_int(data, "tokens_completion"),
            native_tokens_reasoning=_optional_int(data, "native_tokens_reasoning"),
            native_tokens_cached=_optional_int(data, "native_tokens_cached"),
            external_user=_optional_str(data, "external_user"),
            workspace_id=_optional_str(data, "workspace_id"),
            api_type=_optional_str(data, "api_type"),
            finish_reason=_optional_str(data, "finish_reason"),
            cancelled=_bool(data, "cancelled"),
        )


@dataclass(frozen=True, slots=True)
class ActivityItem:
    """One row of GET /activity (openrouter-api.md §2.9): a UTC day's use of one model endpoint.

    Rows are summed over every key of the account unless the call filtered by api_key_hash:
    a row names no key. `usage` is OpenRouter-credit spend in USD, `byok_usage_inference` BYOK
    spend. Days are those of each request's start, and only completed UTC days are served
    (today never is). Only `date` is required; missing sums are zero.
    """

    date: date
    model: str
    model_permaslug: str
    endpoint_id: str
    provider_name: str
    usage: Decimal
    byok_usage_inference: Decimal
    requests: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    workspace_id: str | None

    @classmethod
    def from_json(cls, data: object) -> ActivityItem:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("activity item: expected a JSON object")
        day = data.get("date")
        try:
            # "2025-08-24"; tolerate a timestamp form ("2025-08-24 00:00:00") some clients saw.
            parsed = date.fromisoformat(day[:10]) if isinstance(day, str) else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise InvalidOpenRouterPayload("activity item: missing or malformed date")
        return cls(
            date=parsed,
            model=_optional_str(data, "model") or "",
            model_permaslug=_optional_str(data, "model_permaslug") or "",
            endpoint_id=_optional_str(data, "endpoint_id") or "",
            provider_name=_optional_str(data, "provider_name") or "",
            usage=_money_or_zero(data, "usage"),
            byok_usage_inference=_money_or_zero(data, "byok_usage_inference"),
            requests=_int_or_zero(data, "requests"),
            prompt_tokens=_int_or_zero(data, "prompt_tokens"),
            completion_tokens=_int_or_zero(data, "completion_tokens"),
            reasoning_tokens=_int_or_zero(data, "reasoning_tokens"),
            cached_tokens=_int_or_zero(data, "cached_tokens"),
            workspace_id=_optional_str(data, "workspace_id"),
        )


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A guardrail (GET/POST/PATCH /guardrails): a budget per key (or per member) over a UTC
    window, and model and provider allowlists, for the keys assigned to it.

    `limit_usd` and `reset_interval` are both set or both None. An allowlist of None allows
    everything. Only `id` is required; the workspace default guardrail is one of these too
    (named "Workspace <workspace id> Default").
    """

    id: str
    name: str
    description: str | None
    workspace_id: str | None
    limit_usd: Decimal | None
    reset_interval: str | None
    include_byok_in_budgets: bool
    allowed_models: tuple[str, ...] | None
    allowed_providers: tuple[str, ...] | None
    ignored_models: tuple[str, ...] | None
    ignored_providers: tuple[str, ...] | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> Guardrail:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("guardrail: expected a JSON object")
        guardrail_id = data.get("id")
        if not isinstance(guardrail_id, str) or not guardrail_id:
            raise InvalidOpenRouterPayload("guardrail: missing id")
        return cls(
            id=guardrail_id,
            name=_optional_str(data, "name") or "",
            description=_optional_str(data, "description"),
            workspace_id=_optional_str(data, "workspace_id"),
            limit_usd=parse_money(data.get("limit_usd"), field="limit_usd"),
            reset_interval=_optional_str(data, "reset_interval"),
            include_byok_in_budgets=_bool(data, "include_byok_in_budgets"),
            allowed_models=_optional_strings(data, "allowed_models"),
            allowed_providers=_optional_strings(data, "allowed_providers"),
            ignored_models=_optional_strings(data, "ignored_models"),
            ignored_providers=_optional_strings(data, "ignored_providers"),
            created_at=parse_timestamp(data.get("created_at"), field="created_at"),
            updated_at=parse_timestamp(data.get("updated_at"), field="updated_at"),
        )


@dataclass(frozen=True, slots=True)
class GuardrailKeyAssignment:
    """A key's guardrail assignment (GET /guardrails[/{id}]/assignments/keys): a key holds at
    most one. `key_hash` and `guardrail_id` are required."""

    id: str
    key_hash: str
    guardrail_id: str
    key_name: str
    key_label: str
    assigned_by: str | None
    created_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> GuardrailKeyAssignment:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("key assignment: expected a JSON object")
        key_hash, guardrail_id = data.get("key_hash"), data.get("guardrail_id")
        if not isinstance(key_hash, str) or not key_hash:
            raise InvalidOpenRouterPayload("key assignment: missing key_hash")
        if not isinstance(guardrail_id, str) or not guardrail_id:
            raise InvalidOpenRouterPayload("key assignment: missing guardrail_id")
        return cls(
            id=_optional_str(data, "id") or "",
            key_hash=key_hash,
            guardrail_id=guardrail_id,
            key_name=_optional_str(data, "key_name") or "",
            key_label=_optional_str(data, "key_label") or "",
            assigned_by=_optional_str(data, "assigned_by"),
            created_at=parse_timestamp(data.get("created_at"), field="created_at"),
        )
