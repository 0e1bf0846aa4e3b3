"""Reported costs verified against OpenRouter's record of each generation: a job every 5 minutes.

Services report what a request cost (POST /api/usage/log); OpenRouter knows what it charged
(GET /generation?id=). Each run picks at most VERIFY_CALLS_PER_RUN reported events that are
due (pending, their next try reached), asks OpenRouter about each, as many at once as the
client's limiter lets through, and records each outcome with its correction in one statement
(record_usage_verification, schema/migrations/0021_verified_costs.sql):

- found, same cost, on the reporting user's key: verified;
- found, another cost: mismatch, corrected by the difference (OpenRouter's cost - reported);
- found, but made on another user's key (its external_user is not the reporting user):
  foreign, corrected by minus the reported cost: none of it is the reporting user's spend;
- 404 (not ready yet, or unknown): tried again later with backoff, and given up once
  VERIFY_GIVE_UP_S have passed since the event was recorded: unverifiable, said so in the
  event's state and counted in the run's summary.

Other failures (OpenRouter down, throttled beyond its retries) change nothing: the event is
picked again once its lease ends. Verifying an event twice never corrects it twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.observability import logger
from shared.openrouter.errors import OpenRouterError, OpenRouterGenerationNotFound
from shared.openrouter.models import Generation
from shared.runtime import Runtime
from shared.usage.repository import DueVerification, VerificationRepository

RETRY_S = 30.0  # the first retry of a generation not found yet; doubling, at most 15 minutes
LEASE_S = 600  # a picked event is another run's again after this, should this run die


@dataclass(frozen=True, slots=True)
class _Asked:
    due: DueVerification
    generation: Generation | None  # None: not found (404)
    failed: bool = False


async def _ask(runtime: Runtime, due: DueVerification) -> _Asked:
    try:
        return _Asked(due, await runtime.openrouter().get_generation(due.generation_id))
    except OpenRouterGenerationNotFound:
        return _Asked(due, None)
    except OpenRouterError as error:  # left pending: picked again once its lease ends
        logger.warning(
            "usage verification: OpenRouter did not answer",
            extra={"event_id": due.event_id, "error": type(error).__name__},
        )
        return _Asked(due, None, failed=True)


async def verify_reported_usage(runtime: Runtime, *, now: datetime | None = None) -> dict[str, int]:
    """One run: the due events (at most VERIFY_CALLS_PER_RUN) asked about and recorded; a
    summary of the outcomes and of the calls made."""
    settings = runtime.settings
    moment = now or datetime.now(UTC)
    async with runtime.database().connection() as conn:
        due = await VerificationRepository(conn).claim_due(
            now=moment, limit=settings.verify_calls_per_run, lease_s=LEASE_S
        )
    # As many calls at once as the client's limiter lets through (it bounds them all).
    asked = await asyncio.gather(*(_ask(runtime, event) for event in due))

    summary = {
        "verified": 0,
        "mismatched": 0,
        "foreign": 0,
        "not_ready": 0,
        "given_up": 0,
        "failed": 0,
        "unchanged": 0,
        "calls": len(due),
    }
    names = {
        "verified": "verified",
        "mismatch": "mismatched",
        "foreign": "foreign",
        "not_ready": "not_ready",
        "unverifiable": "given_up",
        "unchanged": "unchanged",
    }
    async with runtime.database().connection() as conn:
        books = VerificationRepository(conn)
        for answer in asked:
            if answer.failed:
                summary["failed"] += 1
                continue
            # Each outcome in its own transaction: it locks one user's book at a time.
            state = await books.record(
                answer.due.event_id,
                openrouter_cost=None if answer.generation is None else answer.generation.total_cost,
                generation_user=None
                if answer.generation is None
                else answer.generation.external_user,
                now=moment,
                retry_s=RETRY_S,
                give_up_s=settings.verify_give_up_s,
                alert_usd=settings.verify_alert_usd,
            )
            summary[names[state]] += 1
    if summary["given_up"]:
        logger.warning(
            "usage verification: generations OpenRouter never found, given up",
            extra={"given_up": summary["given_up"]},
        )
    return summary
