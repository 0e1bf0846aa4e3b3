"""Coverage-guided fuzzing (atheris) of the parsers that take outside input: OpenRouter's
responses, user JWTs, usage events. Each target may refuse its input only with the error its
callers handle; anything else is a crash atheris reports.

    .venv/bin/python -m tests.fuzz.atheris_targets <openrouter|jwt|usage> -runs=20000
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable

import atheris
from pydantic import ValidationError

from shared.access.user_tokens import TokenRejected, UserTokenVerifier
from shared.openrouter.models import (
    ApiKey,
    CreatedKey,
    Credits,
    CurrentKey,
    InvalidOpenRouterPayload,
)
from shared.usage.schemas import UsageEvent

OPENROUTER_FIELDS = (
    "hash",
    "name",
    "label",
    "disabled",
    "limit",
    "limit_remaining",
    "limit_reset",
    "usage",
    "usage_daily",
    "usage_weekly",
    "usage_monthly",
    "byok_usage",
    "created_at",
    "updated_at",
    "expires_at",
    "include_byok_in_limit",
    "is_free_tier",
    "is_management_key",
    "is_provisioning_key",
    "total_credits",
    "total_usage",
    "key",
    "data",
)
USAGE_FIELDS = (
    "user_id",
    "generation_id",
    "model",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "occurred_at",
    "agent_name",
    "endpoint",
    "duration_ms",
)


def _value(provider: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    """A JSON value of any type, as a response or a request could carry."""
    kind = provider.ConsumeIntInRange(0, 8 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return provider.ConsumeBool()
    if kind == 2:
        return provider.ConsumeInt(8)
    if kind == 3:
        return provider.ConsumeFloat()
    if kind in (4, 5):
        return provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 40))
    if kind == 6:
        return [_value(provider, depth + 1) for _ in range(provider.ConsumeIntInRange(0, 3))]
    return _record(provider, OPENROUTER_FIELDS, depth + 1)


def _record(
    provider: atheris.FuzzedDataProvider, names: tuple[str, ...], depth: int = 0
) -> dict[str, object]:
    """A JSON object of the given field names (a random subset), with any values."""
    return {name: _value(provider, depth) for name in names if provider.ConsumeBool()}


def openrouter_responses(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    body = _record(provider, OPENROUTER_FIELDS)
    for parse in (ApiKey.from_json, CreatedKey.from_json, CurrentKey.from_json, Credits.from_json):
        with contextlib.suppress(InvalidOpenRouterPayload):
            parse(body)


VERIFIER = UserTokenVerifier(
    hs256_secret="fuzzing-secret-0123456789abcdef0123456789",
    jwks=None,
    issuer="https://project.supabase.co/auth/v1",
    audience="authenticated",
)
LOOP = asyncio.new_event_loop()


def user_tokens(data: bytes) -> None:
    token = data.decode("utf-8", errors="replace")
    with contextlib.suppress(TokenRejected):
        LOOP.run_until_complete(VERIFIER.verify(token))


def usage_events(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    with contextlib.suppress(ValidationError):
        UsageEvent.model_validate(_record(provider, USAGE_FIELDS))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "openrouter": openrouter_responses,
    "jwt": user_tokens,
    "usage": usage_events,
}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    atheris.instrument_all()  # our parsers and the libraries under them (PyJWT, pydantic)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
