"""Logs are JSON lines carrying the request id; anything shaped like a secret is masked."""

from __future__ import annotations

import io
import json

import httpx

from shared.redaction import redact

OPENROUTER_SECRET = "sk-or-v1-" + "d" * 64


async def test_a_key_in_a_request_is_redacted_in_the_log_line(
    api: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    # WHEN a request carries a key in its path and a bearer token in its header
    response = await api.get(
        f"/api/keys/user/{OPENROUTER_SECRET}",
        headers={"Authorization": f"Bearer {OPENROUTER_SECRET}"},
    )

    # THEN its access log line is JSON with the request id, and the key is masked
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    access = next(line for line in lines if line["message"] == "request")
    assert access["request_id"] == response.headers["x-request-id"]
    assert access["path"] == "/api/keys/user/sk-or-***"
    assert access["status"] == 401  # an OpenRouter key is not one of our credentials
    assert OPENROUTER_SECRET not in log_stream.getvalue()


def test_redact_masks_keys_and_bearer_tokens_wherever_they_stand() -> None:
    text = (
        f"key={OPENROUTER_SECRET}; Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig "
        "and bearer opaque-token_123"
    )
    assert redact(text) == ("key=sk-or-***; Authorization: Bearer *** and bearer ***")


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "rotated key 6f1c... for user 42 (sk-or is the prefix)"
    assert redact(text) == text


async def test_vercel_s_request_id_is_the_correlation_id(
    api: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    # GIVEN a request as Vercel forwards it, carrying its invocation id
    vercel_id = "cdg1::iad1::abcde-1795723747597-0123456789ab"

    # WHEN it is served
    response = await api.get("/health", headers={"x-vercel-id": vercel_id})

    # THEN the response and the log line carry Vercel's id, so both logs can be joined
    assert response.headers["x-request-id"] == vercel_id
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert next(line for line in lines if line["message"] == "request")["request_id"] == vercel_id
