"""Typed views of OpenRouter's JSON, parsed leniently.

OpenRouter adds fields monthly and omits optional ones (../shared/reference/openrouter-api.md §0):
unknown fields are ignored, missing optional ones become None or zero. Only what we cannot work
without (a key's hash, a created key's secret) is required. Money is Decimal, never float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
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
class CurrentKey:
    """GET /key: the key that authenticated the call (it has no hash field)."""

    label: str
    limit: Decimal | None
    limit_remaining: Decimal | None
    limit_reset: str | None
    usage: Decimal
    usage_monthly: Decimal
    is_free_tier: bool
    is_management_key: bool
    expires_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> CurrentKey:
        if not isinstance(data, Mapping):
            raise InvalidOpenRouterPayload("current key: expected a JSON object")
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
