"""The service's error envelope, and OpenRouter's refusals, as exceptions."""

from __future__ import annotations

import re
from datetime import UTC, datetime
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
    def metadata(self) -> dict[str, Any]:
        """OpenRouter's ``error.metadata`` ({} when the answer has none)."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        metadata = error.get("metadata") if isinstance(error, dict) else None
        return metadata if isinstance(metadata, dict) else {}

    @property
    def limit_source(self) -> str | None:
        """Which limit refused the call, when OpenRouter names it (``metadata.limit_source``):
        "openrouter_key_limit", "openrouter_guardrail_budget", ..."""
        source = self.metadata.get("limit_source")
        return source if isinstance(source, str) else None

    @property
    def spent(self) -> bool:
        """A budget is spent: 402 (this call costs more than is left) or 403 "Key limit
        exceeded", or any 403 whose metadata names the limit that refused it (nothing is
        left). A new key would not help: the user's budget would."""
        return self.status == 402 or (
            self.status == 403
            and ("key limit exceeded" in self.message.lower() or self.limit_source is not None)
        )

    @property
    def guardrail_budget_spent(self) -> bool:
        """The budget that refused is a guardrail's (with the service: the user's tier's daily
        cap), not the key's own limit: ``metadata.limit_source`` "openrouter_guardrail_budget"."""
        return self.spent and self.limit_source == GUARDRAIL_BUDGET

    @property
    def guardrail_restricted(self) -> bool:
        """A guardrail's allowlists refused the request, not the key: a 403 for the model (its
        metadata names the guardrail; its message the restriction), or a 404 "No endpoints
        available matching your guardrail restrictions" when no allowed provider is left."""
        if self.status not in (403, 404) or self.spent:
            return False
        if "guardrail" in self.message.lower():
            return True
        metadata = self.metadata
        return self.status == 403 and (
            isinstance(metadata.get("guardrail_id"), str)
            or isinstance(metadata.get("guardrail_scope"), str)
        )

    @property
    def key_refused(self) -> bool:
        """The key itself was refused (rotated out, disabled by an emergency, deleted): the
        user's current key is another one. A 403 is, unless it is about money or a guardrail's
        allowlists."""
        return self.status == 401 or (
            self.status == 403 and not self.spent and not self.guardrail_restricted
        )


GUARDRAIL_BUDGET = "openrouter_guardrail_budget"
INTERVALS = ("daily", "weekly", "monthly")


class BudgetExhausted(OpenRouterError):
    """The user's budget for this period is spent at OpenRouter (402, or 403 "Key limit
    exceeded"): tell the user, do not retry until their budget is raised or the month turns."""

    def __init__(self, user_id: str, refused: OpenRouterError) -> None:
        super().__init__(refused.status, refused.message, refused.body)
        self.user_id = user_id


class DailyCapReached(BudgetExhausted):
    """A guardrail's budget refused the request (``metadata.limit_source``
    "openrouter_guardrail_budget"): the user's tier caps spend per UTC day (or week, or
    month: ``interval``), and this window's cap is spent (403) or cannot pay for this
    request's worst case (402). Nothing to retry before ``resets_at``; the user's monthly
    budget may have plenty left."""

    def __init__(self, user_id: str, refused: OpenRouterError) -> None:
        super().__init__(user_id, refused)
        metadata = refused.metadata
        #: When the window rolls over and the key may spend again (``metadata.resets_at``).
        self.resets_at: datetime | None = _moment(metadata.get("resets_at"))
        said = metadata.get("reset_interval", metadata.get("interval"))
        #: The window: ``metadata.reset_interval`` when OpenRouter gives it, else the one its
        #: message names ("Guardrail daily budget of $1.00 exceeded"); None when neither does.
        self.interval: str | None = said if said in INTERVALS else _interval_named(self.message)


class ModelNotAllowed(OpenRouterError):
    """The user's tier does not allow this model (OpenRouter's 403 from the guardrail's model
    allowlist) or leaves no provider to serve it (404 "No endpoints available matching your
    guardrail restrictions..."). The key is fine (it is not revealed again): another model or
    provider may be asked for; this one is refused until the tier's policy changes."""

    def __init__(self, user_id: str, model: str | None, refused: OpenRouterError) -> None:
        super().__init__(refused.status, refused.message, refused.body)
        self.user_id = user_id
        self.model = model  # what the request asked for
        guardrail = refused.metadata.get("guardrail_id")
        self.guardrail_id: str | None = guardrail if isinstance(guardrail, str) else None


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _interval_named(message: str) -> str | None:
    return next((i for i in INTERVALS if re.search(rf"\b{i}\b", message, re.IGNORECASE)), None)
