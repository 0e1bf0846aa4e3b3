"""The service's error envelope as an exception."""

from __future__ import annotations

from typing import Any

import httpx


class AgentError(Exception):
    """A non-2xx answer of the service, or no answer at all (status 0, code "network_error").

    ``code``, ``message`` and ``request_id`` come from the service's envelope
    ``{"error": {"code", "message", "request_id", "details"}}``; quote the request id when
    asking the operator about a failure.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message} (request {request_id})")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details

    @property
    def retryable(self) -> bool:
        """Worth another try later: no answer, a rate limit or a server failure."""
        return self.status == 0 or self.status == 429 or self.status >= 500

    @classmethod
    def of(cls, response: httpx.Response) -> AgentError:
        request_id = response.headers.get("x-request-id")
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(response.status_code, "http_error", response.text[:200], request_id)
        return cls(
            response.status_code,
            str(error.get("code", "http_error")),
            str(error.get("message", "")),
            error.get("request_id") or request_id,
            error.get("details"),
        )
