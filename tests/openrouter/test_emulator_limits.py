"""Limit windows and spend refusal behave as OpenRouter documents (openrouter-api.md §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.openrouter.emulator import Emulator, EmulatorApiError


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _key(emulator: Emulator, limit: str, reset: str | None) -> str:
    return emulator.add_key(name="window", limit=Decimal(limit), limit_reset=reset).secret


@pytest.mark.parametrize(
    ("reset", "spent_at", "next_window"),
    [
        # daily windows start at 00:00 UTC
        (
            "daily",
            datetime(2026, 11, 26, 23, 59, tzinfo=UTC),
            datetime(2026, 11, 27, 0, 0, tzinfo=UTC),
        ),
        # weeks run Monday to Sunday: Sunday 2026-11-29 -> Monday 2026-11-30
        (
            "weekly",
            datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
            datetime(2026, 11, 30, 0, 0, tzinfo=UTC),
        ),
        # months are calendar months
        (
            "monthly",
            datetime(2026, 11, 30, 23, 0, tzinfo=UTC),
            datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
        ),
    ],
)
def test_spend_resets_at_the_window_boundary(
    reset: str, spent_at: datetime, next_window: datetime
) -> None:
    clock = Clock(spent_at)
    emulator = Emulator(clock=clock)
    secret = _key(emulator, "10", reset)
    emulator.charge(secret, Decimal("10"))

    # WHEN the cap is used up, THEN spending is refused with 403 naming the window
    with pytest.raises(EmulatorApiError) as refused:
        emulator.charge(secret, Decimal("0.01"))
    assert refused.value.status == 403
    assert f"Key limit exceeded ({reset} limit)" in refused.value.message

    # WHEN the next window starts, THEN the full cap is available again
    clock.now = next_window
    key = emulator.charge(secret, Decimal("10"))
    assert emulator.key_json(key)["limit_remaining"] == 0
    assert emulator.key_json(key)["usage"] == 20


def test_a_lifetime_cap_never_resets() -> None:
    clock = Clock(datetime(2026, 1, 1, tzinfo=UTC))
    emulator = Emulator(clock=clock)
    secret = _key(emulator, "1", None)
    emulator.charge(secret, Decimal("1"))
    clock.now += timedelta(days=400)
    with pytest.raises(EmulatorApiError, match=r"total limit"):
        emulator.charge(secret, Decimal("0.001"))


def test_worst_case_cost_over_what_is_left_is_refused_with_402() -> None:
    emulator = Emulator()
    secret = _key(emulator, "1", "monthly")
    emulator.charge(secret, Decimal("0.75"))
    with pytest.raises(EmulatorApiError) as refused:
        emulator.charge(secret, Decimal("0.10"), max_cost=Decimal("0.30"))
    assert refused.value.status == 402
    assert refused.value.metadata == {"limit_source": "openrouter_key_limit"}
    # what fits is still allowed, to the cent and below
    emulator.charge(secret, Decimal("0.249"))


def test_byok_spend_counts_only_when_included() -> None:
    emulator = Emulator()
    secret = _key(emulator, "1", "monthly")
    emulator.charge(secret, Decimal("5"), byok=True)  # not counted: include_byok_in_limit false
    key = emulator.charge(secret, Decimal("1"))
    assert emulator.key_json(key)["limit_remaining"] == 0
    assert emulator.key_json(key)["byok_usage"] == 5


def test_a_disabled_key_cannot_spend() -> None:
    emulator = Emulator()
    key = emulator.add_key(name="blocked", limit=Decimal(1), limit_reset="monthly")
    key.disabled = True
    secret = key.secret
    with pytest.raises(EmulatorApiError) as refused:
        emulator.charge(secret, Decimal("0.01"))
    assert refused.value.status == 401
