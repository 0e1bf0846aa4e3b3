"""One error hierarchy. Every 4xx/5xx the service returns is one of these, rendered as one envelope:

{"error": {"code": "<machine_readable>", "message": "<human>", "request_id": "...",
           "details": <optional>}}
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """Base of every error the service answers with; subclasses fix status and default code."""

    status_code: ClassVar[int] = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.headers = headers or {}


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class MethodNotAllowed(AppError):
    status_code = 405
    code = "method_not_allowed"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class IdempotencyKeyReused(Conflict):
    """The caller's Idempotency-Key already answered another request (another owner, user or
    amount): reusing it for a new one would silently replay the first."""

    code = "idempotency_key_reused"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class ValidationFailed(AppError):
    status_code = 422
    code = "validation_error"


class TooManyRequests(AppError):
    status_code = 429
    code = "rate_limited"


class InternalError(AppError):
    status_code = 500
    code = "internal_error"


class BadGateway(AppError):
    """An upstream (OpenRouter) answered in a way we cannot use."""

    status_code = 502
    code = "upstream_error"


class ServiceUnavailable(AppError):
    """A dependency (database, OpenRouter, configuration) is not usable right now."""

    status_code = 503
    code = "service_unavailable"
