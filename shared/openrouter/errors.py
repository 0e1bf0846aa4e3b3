"""Typed failures of OpenRouter calls, built from the documented error body.

{"error": {"code": <http status>, "message": "...", "metadata": {...}}}
"""

from __future__ import annotations

from typing import Any


class OpenRouterError(Exception):
    """Base of every failure of an OpenRouter call."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        metadata: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.metadata = metadata or {}
        self.retry_after_s = retry_after_s


class OpenRouterBadRequest(OpenRouterError):
    """400: parameters refused; retrying the same call cannot help."""


class OpenRouterUnauthorized(OpenRouterError):
    """401: missing, invalid or disabled key. Never act destructively on one of these."""


class OpenRouterPaymentRequired(OpenRouterError):
    """402: account credits or a key cap cannot cover the request (see metadata.limit_source)."""


class OpenRouterForbidden(OpenRouterError):
    """403: not a management key, or a key/guardrail/workspace limit was hit."""


class OpenRouterNotFound(OpenRouterError):
    """404: unknown key hash (or, as OpenRouterGenerationNotFound, a generation not readable)."""


class OpenRouterGenerationNotFound(OpenRouterNotFound):
    """404 from GET /generation: not ready yet, or unknown. OpenRouter does not tell them apart.

    A generation's stats appear a second or more after its request completed (openrouter-api.md
    §2.10), so right after a request this means "not yet": ask again later, with backoff. Only
    after retrying for minutes does it mean the id is unknown to OpenRouter (or not this
    account's). The client never retries it by itself.
    """


class OpenRouterConflict(OpenRouterError):
    """409: undocumented PATCH conflict."""


class OpenRouterRateLimited(OpenRouterError):
    """429: slow down; retry_after_s says for how long when OpenRouter said so."""


class OpenRouterServerError(OpenRouterError):
    """5xx from OpenRouter."""


class OpenRouterUnavailable(OpenRouterError):
    """No usable answer: connection refused, timed out or broken before a response arrived."""


class OpenRouterOutcomeUnknown(OpenRouterError):
    """A create may or may not have happened (timeout, 5xx, lost or unreadable response).

    POST /keys is not idempotent, so this is never retried blind: the caller reconciles by the
    key's unique name (openrouter-api.md §3.5).
    """


class OpenRouterInvalidResponse(OpenRouterError):
    """A 2xx response whose body we cannot use."""


_BY_STATUS: dict[int, type[OpenRouterError]] = {
    400: OpenRouterBadRequest,
    401: OpenRouterUnauthorized,
    402: OpenRouterPaymentRequired,
    403: OpenRouterForbidden,
    404: OpenRouterNotFound,
    409: OpenRouterConflict,
    429: OpenRouterRateLimited,
}


def error_for_status(
    status_code: int, body: object, *, retry_after_s: float | None
) -> OpenRouterError:
    message = f"OpenRouter answered HTTP {status_code}"
    metadata: dict[str, Any] = {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        if isinstance(error.get("message"), str):
            message = error["message"]
        if isinstance(error.get("metadata"), dict):
            metadata = error["metadata"]
    error_class = _BY_STATUS.get(status_code)
    if error_class is None:
        error_class = OpenRouterServerError if status_code >= 500 else OpenRouterError
    return error_class(
        message, status_code=status_code, metadata=metadata, retry_after_s=retry_after_s
    )
