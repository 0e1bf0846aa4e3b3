"""The service's error envelope, and OpenRouter's refusals, as exceptions."""

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


class OpenRouterError(Exception):
    """OpenRouter refused a call made with a user's key (status 0: it did not answer)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"OpenRouter {status}: {message}")
        self.status = status
        self.message = message
        self.body = body

    @classmethod
    def of(cls, response: httpx.Response) -> OpenRouterError:
        try:
            body = response.json()
        except ValueError:
            return cls(response.status_code, response.text[:200])
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return cls(response.status_code, str(message or response.reason_phrase), body)

    @property
    def spent(self) -> bool:
        """The key's budget is spent: 402 (this call costs more than is left) or 403 "Key
        limit exceeded" (nothing is left). A new key would not help: the user's month would."""
        return self.status == 402 or (
            self.status == 403 and "key limit exceeded" in self.message.lower()
        )

    @property
    def key_refused(self) -> bool:
        """The key itself was refused (rotated out, disabled by an emergency, deleted): the
        user's current key is another one."""
        return self.status == 401 or (self.status == 403 and not self.spent)


class BudgetExhausted(OpenRouterError):
    """The user's budget for this period is spent at OpenRouter (402 or 403 "Key limit
    exceeded"): tell the user, do not retry until their budget is raised or the month turns."""

    def __init__(self, user_id: str, refused: OpenRouterError) -> None:
        super().__init__(refused.status, refused.message, refused.body)
        self.user_id = user_id
