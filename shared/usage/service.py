"""Logging usage and reading the books."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import ValidationError

from shared.db.rpc import StoreRefused
from shared.errors import NotFound
from shared.keys.domain import current_period
from shared.metrics import (
    THRESHOLD_CROSSINGS,
    USAGE_EVENTS_RECORDED,
    USAGE_EVENTS_REJECTED,
    count,
)
from shared.runtime import Runtime
from shared.usage.repository import BreakdownRow, PeriodTotal, RecordedEvent
from shared.usage.schemas import (
    Breakdown,
    CurrentUsage,
    EventOutcome,
    MonthlyUsage,
    MonthUsage,
    UsageEvent,
    UserUsageSummary,
)
from shared.usage.store import PeriodBook, UsageStore

# Late reports are normal (retries, queues); a month-old or future event is a bug upstream.
MAX_EVENT_AGE = timedelta(days=35)
MAX_CLOCK_SKEW = timedelta(minutes=5)
_CENT_OF_PERCENT = Decimal("0.01")


def _now() -> datetime:
    return datetime.now(UTC)


def percent_used(spent: Decimal, budget: Decimal | None) -> Decimal | None:
    if budget is None:
        return None
    if budget == 0:
        return Decimal(100) if spent > 0 else Decimal(0)
    return (spent * 100 / budget).quantize(_CENT_OF_PERCENT, rounding=ROUND_HALF_UP)


def remaining(spent: Decimal, budget: Decimal | None) -> Decimal | None:
    return None if budget is None else max(budget - spent, Decimal(0))


def _rejection_reason(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"invalid {where}: {first.get('msg', 'invalid value')}"  # never the input itself


@dataclass
class LogResult:
    outcomes: list[EventOutcome]
    users: list[UserUsageSummary] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)


class UsageService:
    def __init__(self, runtime: Runtime, *, clock: Callable[[], datetime] = _now) -> None:
        self._runtime = runtime
        self._clock = clock

    async def log(self, raw_events: list[dict[str, Any]], *, actor: str) -> LogResult:
        """Record events; each is stored, a duplicate, or rejected with a reason."""
        now = self._clock()
        outcomes: list[EventOutcome | None] = [None] * len(raw_events)
        accepted: list[tuple[int, UsageEvent]] = []
        for index, raw in enumerate(raw_events):
            generation_id = raw.get("generation_id") if isinstance(raw, dict) else None
            label = generation_id if isinstance(generation_id, str) else None
            try:
                event = UsageEvent.model_validate(raw)
            except ValidationError as error:
                outcomes[index] = EventOutcome(
                    index=index,
                    generation_id=label,
                    status="rejected",
                    reason=_rejection_reason(error),
                )
                continue
            occurred = event.occurred_at or now
            if occurred > now + MAX_CLOCK_SKEW or occurred < now - MAX_EVENT_AGE:
                outcomes[index] = EventOutcome(
                    index=index,
                    generation_id=label,
                    status="rejected",
                    reason="occurred_at is in the future or more than 35 days old",
                )
                continue
            accepted.append((index, event.model_copy(update={"occurred_at": occurred})))

        # Every writer takes its users' rows in the same order, so concurrent batches
        # wait for each other instead of deadlocking.
        to_record = sorted(accepted, key=lambda item: (item[1].user_id, item[1].generation_id))
        recorded: list[RecordedEvent] = []
        if to_record:
            recorded = await self._record(
                UsageStore(self._runtime.store()),
                [event.model_dump(mode="json") for _, event in to_record],
                actor,
            )
        summaries: dict[str, UserUsageSummary] = {}
        for result in recorded:
            index, event = to_record[result.index]
            if result.status == "unknown_user":
                outcomes[index] = EventOutcome(
                    index=index,
                    generation_id=event.generation_id,
                    status="rejected",
                    reason="unknown_user: create the user's key (or user) first",
                )
                continue
            outcomes[index] = EventOutcome(
                index=index,
                generation_id=event.generation_id,
                status=result.status,
                reason=None if result.reason is None else f"database refused: {result.reason}",
            )
            if result.status == "rejected" or result.period is None:
                continue
            spent = result.spent_usd or Decimal(0)
            previous = summaries.get(event.user_id)
            crossed = sorted(
                set(previous.thresholds_crossed if previous else []) | set(result.crossed)
            )
            summaries[event.user_id] = UserUsageSummary(
                user_id=event.user_id,
                period=result.period,
                spent_usd=spent,
                limit_usd=result.budget_usd,
                remaining_usd=remaining(spent, result.budget_usd),
                percent_used=percent_used(spent, result.budget_usd),
                thresholds_crossed=crossed,
            )
        assert all(outcome is not None for outcome in outcomes)
        log_result = LogResult(
            outcomes=[o for o in outcomes if o is not None], users=list(summaries.values())
        )
        count(USAGE_EVENTS_RECORDED, log_result.count("stored"))
        count(USAGE_EVENTS_REJECTED, log_result.count("rejected"))
        # Each event row repeats its user's crossings; the summaries hold each once.
        count(THRESHOLD_CROSSINGS, sum(len(u.thresholds_crossed) for u in summaries.values()))
        return log_result

    @staticmethod
    async def _record(
        store: UsageStore, payloads: list[dict[str, Any]], actor: str
    ) -> list[RecordedEvent]:
        """The whole batch in one statement (one transaction); if the database refuses any
        event, each event again on its own, so that the good ones are kept and the bad one
        named."""
        try:
            return await store.record_events(payloads, recorded_by=actor)
        except StoreRefused as error:
            if not error.is_bad_data:
                raise
        recorded = []
        for index, payload in enumerate(payloads):
            try:
                [result] = await store.record_events([payload], recorded_by=actor)
                recorded.append(replace(result, index=index))
            except StoreRefused as error:
                if not error.is_bad_data:
                    raise
                recorded.append(
                    RecordedEvent(
                        index,
                        "rejected",
                        error.sqlstate,
                        str(payload.get("user_id")),
                        None,
                        None,
                        None,
                        [],
                    )
                )
        return recorded

    async def current(self, user_id: str) -> CurrentUsage:
        now = self._clock()
        period = current_period(now)
        books = await UsageStore(self._runtime.store()).month(user_id, period, as_of=now)
        if books is None:
            raise NotFound(f"no user {user_id}", code="user_not_found")
        [book] = books.months
        month = _month(book, books.budget_usd)
        return CurrentUsage(
            **month.model_dump(),
            user_id=user_id,
            tier=books.tier,
            as_of=now,
            forecast_month_end_usd=forecast_month_end(
                book.total.effective_usd,
                books_pace(book.total, books.last_7_days_usd or Decimal(0), now),
                month.limit_usd,
                now,
            ),
        )

    async def monthly(self, user_id: str, *, limit: int, before: date | None) -> MonthlyUsage:
        books = await UsageStore(self._runtime.store()).history(user_id, limit=limit, before=before)
        if books is None:
            raise NotFound(f"no user {user_id}", code="user_not_found")
        return MonthlyUsage(
            user_id=user_id,
            data=[_month(book, books.budget_usd) for book in books.months],
            next_before=books.months[-1].total.period if len(books.months) == limit else None,
        )


def books_pace(total: PeriodTotal, reported_last_7_days: Decimal, now: datetime) -> Decimal:
    """What the books spent over the last seven days, as far as they can say: the reported
    events' pace, scaled by how much the books (corrections, what OpenRouter counted) differ
    from what was reported this month; with nothing reported but spend counted, the month's
    own average."""
    gross = max(total.spent_usd + total.corrected_usd, total.counted_usd)
    if total.spent_usd > 0:
        return reported_last_7_days * gross / total.spent_usd
    if gross == 0:
        return reported_last_7_days  # nothing this month yet: last week's pace, if any
    days = Decimal(str((now - datetime.combine(total.period, time(), UTC)).total_seconds()))
    return gross * 7 * 86_400 / max(days, Decimal(86_400))


def forecast_month_end(
    spent: Decimal, last_7_days: Decimal, limit: Decimal | None, now: datetime
) -> Decimal:
    """What the month will have cost by its end (UTC): spent so far, plus the pace of the last
    seven days (across the month's start) for the days left, never more than the limit (the
    key cannot spend past it). A burst in the first hour is one day's spend in seven."""
    period = current_period(now)
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    next_month = (start + timedelta(days=32)).replace(day=1)
    days_left = Decimal(str((next_month - now).total_seconds())) / 86_400
    forecast = spent + last_7_days / 7 * days_left
    if limit is not None:
        forecast = min(forecast, max(limit, spent))
    return forecast.quantize(Decimal("0.000001"))


def _breakdown(rows: list[BreakdownRow], key: str) -> list[Breakdown]:
    sums: dict[str, tuple[Decimal, int]] = {}
    for row in rows:
        name = getattr(row, key) or "(none)"
        cost, events = sums.get(name, (Decimal(0), 0))
        sums[name] = (cost + row.cost_usd, events + row.events)
    return [
        Breakdown(name=name, cost_usd=cost, events=events)
        for name, (cost, events) in sorted(sums.items(), key=lambda item: (-item[1][0], item[0]))
    ]


def _month(book: PeriodBook, budget: Decimal | None) -> MonthUsage:
    total, rows = book.total, book.breakdown
    spent = total.effective_usd
    return MonthUsage(
        period=total.period,
        spent_usd=spent,
        events_usd=total.spent_usd,
        reported_usd=total.spent_usd,
        unreported_usd=total.unreported_usd,
        corrected_usd=total.corrected_usd,
        counted_usd=total.counted_usd,
        adjustments_usd=total.adjusted_usd,
        events=total.events,
        limit_usd=budget,
        remaining_usd=remaining(spent, budget),
        percent_used=percent_used(spent, budget),
        by_model=_breakdown(rows, "model"),
        by_agent=_breakdown(rows, "agent_name"),
        thresholds_crossed=book.crossed,
    )
