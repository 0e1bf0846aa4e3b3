"""The key lifecycle's vocabulary: owners, periods, results, and how OpenRouter failures read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING
from uuid import UUID

from shared.errors import AppError, BadGateway, ServiceUnavailable, ValidationFailed
from shared.openrouter.errors import (
    OpenRouterError,
    OpenRouterOutcomeUnknown,
    OpenRouterRateLimited,
)

if TYPE_CHECKING:
    from shared.keys.repository import KeyRecord, OperationRecord

Checkpoint = Callable[[str], None]


def no_checkpoint(_: str) -> None:
    """Production: steps run straight through. Tests inject crashes at named checkpoints."""


def current_period(now: datetime | None = None) -> date:
    """The UTC calendar month, as OpenRouter's monthly limits count it."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return date(moment.year, moment.month, 1)


def parse_period(text: str) -> date:
    """A YYYY-MM month as the first day of it; a 422 for anything else (0000-00 included)."""
    try:
        return date.fromisoformat(f"{text}-01")
    except ValueError as error:
        raise ValidationFailed(
            "period must be a month as YYYY-MM", code="invalid_period"
        ) from error


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose key: a user of the platform, or a named system consumer."""

    kind: str  # "user" or "system"
    name: str

    @classmethod
    def user(cls, user_id: str) -> Owner:
        return cls("user", user_id)

    @classmethod
    def system(cls, name: str) -> Owner:
        return cls("system", name)

    @classmethod
    def parse(cls, owner: str) -> Owner:
        kind, _, name = owner.partition(":")
        return cls(kind, name)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def user_id(self) -> str | None:
        return self.name if self.kind == "user" else None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: KeyRecord
    operation: OperationRecord
    secret: str | None  # only for the operation's own requester
    previous_key: KeyRecord | None = None


@dataclass(frozen=True, slots=True)
class OwnerOutcome:
    """An owner the reconciler could not repair now, and why."""

    owner: str
    reason: str


@dataclass
class ReconcileReport:
    deleted_at_openrouter: list[str] = field(default_factory=list)
    revoked_missing: list[UUID] = field(default_factory=list)
    reprovisioned: list[UUID] = field(default_factory=list)
    too_young_to_judge: int = 0
    skipped: list[OwnerOutcome] = field(default_factory=list)  # held by another invocation
    failed: list[OwnerOutcome] = field(default_factory=list)


def openrouter_failure(error: OpenRouterError, operation_id: UUID) -> AppError:
    """An OpenRouter failure in the middle of a key operation."""
    return openrouter_answer(error, {"operation_id": str(operation_id)})


def openrouter_answer(error: OpenRouterError, details: dict[str, object] | None = None) -> AppError:
    """An OpenRouter failure as our answer: a refusal of the request itself (a 4xx other than
    401, 403, 404, 429) as 502 openrouter_refused, which retrying cannot help; anything else
    as 503, with its Retry-After when it gave one."""
    from shared.openrouter.client import is_refusal

    details = {**(details or {}), "openrouter_status": error.status_code}
    if is_refusal(error):
        return BadGateway(
            f"OpenRouter refused the request: {error.message}",
            code="openrouter_refused",
            details=details,
        )
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    if isinstance(error, OpenRouterOutcomeUnknown):
        return ServiceUnavailable(
            "OpenRouter did not confirm what it did; a retry, or the next job run, "
            "completes or repairs it",
            code="openrouter_outcome_unknown",
            details=details,
            headers=headers,
        )
    if isinstance(error, OpenRouterRateLimited):
        return ServiceUnavailable(
            "OpenRouter is rate-limiting us",
            code="openrouter_rate_limited",
            details=details,
            headers=headers,
        )
    return ServiceUnavailable(
        f"OpenRouter failed: {error.message}",
        code="openrouter_unavailable",
        details=details,
        headers=headers,
    )
