"""GET /key describes the calling key's budget layers as OpenRouter does (SDK KeyBudget): here the
key's own limit, with its window's spend, what is left and when it resets, and the binding one
as effective_budget; plus the account's free-model quota and context."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.openrouter.emulator import API_PREFIX, DEFAULT_WORKSPACE_ID, Emulator
from tests.openrouter.conftest import ManualClock


async def _current(emulator: Emulator, secret: str) -> dict[str, Any]:
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url=f"http://emulator{API_PREFIX}"
    ) as client:
        response = await client.get("/key", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    return response.json()["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("reset", "resets_at"),
    [
        ("daily", "2026-11-27T00:00:00Z"),
        ("weekly", "2026-11-30T00:00:00Z"),  # Thursday the 26th: the week ends on Sunday
        ("monthly", "2026-12-01T00:00:00Z"),
        (None, None),  # a lifetime limit never resets
    ],
)
async def test_a_limited_key_has_one_budget_its_own_limit(
    timed_emulator: Emulator, reset: str | None, resets_at: str | None
) -> None:
    """GIVEN a key with a $10 limit (per window, or lifetime) that spent $4 in credits and $1
    BYOK (which its limit does not count)
    WHEN it reads GET /key
    THEN budgets holds one key_limit layer: $10, $4 spent, $6 left, the window and when it
    resets; it is the effective budget."""
    key = timed_emulator.add_key(name="limited", limit=Decimal(10), limit_reset=reset)
    timed_emulator.charge(key.secret, Decimal(4))
    timed_emulator.charge(key.secret, Decimal(1), byok=True)

    data = await _current(timed_emulator, key.secret)

    assert data["budgets"] == [
        {
            "scope": "key_limit",
            "limit_usd": 10,
            "spend_usd": 4,
            "remaining_usd": 6,
            "reset_interval": reset,
            "resets_at": resets_at,
            "include_byok": False,
            "budget_id": None,
            "guardrail_id": None,
        }
    ]
    assert data["effective_budget"] == data["budgets"][0]
    assert data["limit_remaining"] == 6  # the same figure, the key's own fields


async def test_a_limit_lowered_below_the_spend_shows_a_negative_remaining(
    timed_emulator: Emulator,
) -> None:
    """GIVEN a key that spent $8 of $10, whose limit is then lowered to $5
    WHEN it reads GET /key
    THEN its budget's remaining_usd is limit - spend, -3 (zero or less: this layer rejects),
    while the key's own limit_remaining stays at 0 as OpenRouter shows it."""
    key = timed_emulator.add_key(name="lowered", limit=Decimal(10), limit_reset="monthly")
    timed_emulator.charge(key.secret, Decimal(8))
    key.limit = Decimal(5)

    data = await _current(timed_emulator, key.secret)

    assert data["effective_budget"]["remaining_usd"] == -3
    assert data["limit_remaining"] == 0


async def test_byok_spend_counts_in_the_budget_when_the_key_counts_it(
    timed_emulator: Emulator,
) -> None:
    """GIVEN a key whose limit includes BYOK spend, with $2 of credits and $3 BYOK spent
    WHEN it reads GET /key
    THEN its budget counts both and says it includes BYOK."""
    key = timed_emulator.add_key(name="byok", limit=Decimal(10), limit_reset="daily")
    key.include_byok_in_limit = True
    timed_emulator.charge(key.secret, Decimal(2))
    timed_emulator.charge(key.secret, Decimal(3), byok=True)

    [budget] = (await _current(timed_emulator, key.secret))["budgets"]

    assert (budget["spend_usd"], budget["remaining_usd"], budget["include_byok"]) == (5, 5, True)


async def test_a_key_without_a_limit_has_no_budget_and_the_accounts_context(
    timed_emulator: Emulator,
) -> None:
    """GIVEN a key without a limit
    WHEN it reads GET /key
    THEN it has no budget and no effective one, regions are global, the account is no
    organization and the key's workspace is named."""
    key = timed_emulator.add_key(name="unlimited")

    data = await _current(timed_emulator, key.secret)

    assert (data["budgets"], data["effective_budget"]) == ([], None)
    assert data["allowed_data_regions"] == ["global"]
    assert data["organization_id"] is None
    assert data["workspace_id"] == DEFAULT_WORKSPACE_ID


async def test_free_model_requests_are_counted_per_utc_day_for_the_account(
    clock: ManualClock,
) -> None:
    """GIVEN an account with $5 of credits (under $10: 50 free-model requests a day) whose
    two keys made three `:free` requests yesterday, two today, and one paid request today
    WHEN a key reads GET /key
    THEN two of today's 50 are used, 48 remain: yesterday's and the paid one do not count."""
    emulator = Emulator(clock=clock, total_credits=Decimal(5))
    first, second = emulator.add_key(name="f1"), emulator.add_key(name="f2")
    clock.now = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)
    for _ in range(3):
        emulator.charge(first.secret, Decimal(0), model="meta-llama/llama-3.3-70b:free")
    clock.now = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    emulator.charge(first.secret, Decimal(0), model="meta-llama/llama-3.3-70b:free")
    emulator.charge(second.secret, Decimal(0), model="deepseek/deepseek-r1:free")
    emulator.charge(second.secret, Decimal("0.01"), model="openai/gpt-4.1")

    data = await _current(emulator, first.secret)

    assert data["free_model_daily_requests"] == {"used": 2, "limit": 50, "remaining": 48}
