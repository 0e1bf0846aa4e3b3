"""GET /activity sums generations as OpenRouter documents (openrouter-api.md §2.9): per UTC day of
each request's start, model and endpoint, over the last 30 completed UTC days (today never),
for one key (api_key_hash) or the whole account; management key only."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import httpx
import pytest

from shared.openrouter.emulator import API_PREFIX, DEFAULT_WORKSPACE_ID, EmulatedKey, Emulator
from tests.openrouter.conftest import START, ManualClock

TODAY = START.date()  # 2026-11-26: the window is 2026-10-27 to 2026-11-25


@dataclass(frozen=True)
class Spent:
    day: date
    key: str  # "a" or "b"
    model: str
    cost: Decimal
    byok: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0


CHARGES = [
    Spent(TODAY - timedelta(days=31), "a", "openai/gpt-4.1", Decimal(100)),  # before the window
    Spent(TODAY - timedelta(days=30), "a", "openai/gpt-4.1", Decimal("0.5"), prompt_tokens=10),
    Spent(TODAY - timedelta(days=2), "a", "openai/gpt-4.1", Decimal("0.1"), completion_tokens=3),
    Spent(TODAY - timedelta(days=2), "a", "openai/gpt-4.1", Decimal("0.2"), completion_tokens=4),
    Spent(TODAY - timedelta(days=2), "a", "google/gemini-2.5-flash", Decimal("0.004")),
    Spent(TODAY - timedelta(days=2), "b", "openai/gpt-4.1", Decimal("1.25"), prompt_tokens=5),
    Spent(TODAY - timedelta(days=1), "a", "openai/gpt-4.1", Decimal(2), byok=True),
    Spent(TODAY - timedelta(days=1), "b", "google/gemini-2.5-flash", Decimal("0.3")),
    Spent(TODAY, "a", "openai/gpt-4.1", Decimal(50)),  # today: not a completed day
]

Row = tuple[str, str, Decimal, Decimal, int, int, int]


def _expected(keys: set[str]) -> set[Row]:
    """What the charges add up to, worked out here rather than by the emulator."""
    first, last = TODAY - timedelta(days=30), TODAY - timedelta(days=1)
    in_window = [s for s in CHARGES if s.key in keys and first <= s.day <= last]
    groups: dict[tuple[str, str], list[Spent]] = defaultdict(list)
    for spent in in_window:
        groups[(spent.day.isoformat(), spent.model)].append(spent)
    return {
        (
            day,
            model,
            sum((s.cost for s in group if not s.byok), Decimal(0)),
            sum((s.cost for s in group if s.byok), Decimal(0)),
            len(group),
            sum(s.prompt_tokens for s in group),
            sum(s.completion_tokens for s in group),
        )
        for (day, model), group in groups.items()
    }


def _rows(body: dict[str, list[dict[str, object]]]) -> set[Row]:
    return {
        (
            str(r["date"]),
            str(r["model"]),
            Decimal(str(r["usage"])),
            Decimal(str(r["byok_usage_inference"])),
            int(str(r["requests"])),
            int(str(r["prompt_tokens"])),
            int(str(r["completion_tokens"])),
        )
        for r in body["data"]
    }


@pytest.fixture
def keys(timed_emulator: Emulator, clock: ManualClock) -> dict[str, EmulatedKey]:
    """Keys a and b, charged as CHARGES says, each at 13:00 UTC of its day; now is START."""
    made = {name: timed_emulator.add_key(name=f"activity-{name}") for name in ("a", "b")}
    for spent in CHARGES:
        clock.now = datetime.combine(spent.day, time(13), tzinfo=START.tzinfo)
        timed_emulator.charge(
            made[spent.key].secret,
            spent.cost,
            byok=spent.byok,
            model=spent.model,
            prompt_tokens=spent.prompt_tokens,
            completion_tokens=spent.completion_tokens,
        )
    clock.now = START
    return made


@pytest.fixture
async def management(timed_emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=timed_emulator.transport(),
        base_url=f"http://emulator{API_PREFIX}",
        headers={"Authorization": f"Bearer {timed_emulator.management_key}"},
    ) as client:
        yield client


async def test_activity_sums_the_charges_by_day_model_and_key(
    keys: dict[str, EmulatedKey], management: httpx.AsyncClient
) -> None:
    """GIVEN two keys charged over 32 days, on two models, some BYOK, some today
    WHEN activity is asked for each key and for the whole account
    THEN each key's rows are its charges summed per UTC day and model, BYOK apart; the
    account's are both keys' together; nothing from today or before the 30 days appears."""
    of_a = (await management.get("/activity", params={"api_key_hash": keys["a"].hash})).json()
    of_b = (await management.get("/activity", params={"api_key_hash": keys["b"].hash})).json()
    of_all = (await management.get("/activity")).json()

    assert _rows(of_a) == _expected({"a"})
    assert _rows(of_b) == _expected({"b"})
    assert _rows(of_all) == _expected({"a", "b"})
    assert len(of_all["data"]) == 5  # one row per (day, model): keys are summed together
    assert [r["date"] for r in of_all["data"]] == sorted(
        (r["date"] for r in of_all["data"]), reverse=True
    )


async def test_one_day_of_activity_and_days_outside_the_window(
    keys: dict[str, EmulatedKey], management: httpx.AsyncClient
) -> None:
    """GIVEN the charged keys
    WHEN activity is asked for single days
    THEN a day of the window gives that day's rows only (the oldest, 30 days ago, included),
    while today, 31 days ago and malformed dates are 400."""
    day = (TODAY - timedelta(days=2)).isoformat()
    one_day = (await management.get("/activity", params={"date": day})).json()
    oldest = await management.get(
        "/activity", params={"date": (TODAY - timedelta(days=30)).isoformat()}
    )
    refused = [
        await management.get("/activity", params={"date": text})
        for text in (
            TODAY.isoformat(),
            (TODAY - timedelta(days=31)).isoformat(),
            "2026/11/24",
            "20261124",
            "yesterday",
        )
    ]

    assert {r["date"] for r in one_day["data"]} == {day}
    assert _rows(one_day) == {row for row in _expected({"a", "b"}) if row[0] == day}
    assert [r["usage"] for r in oldest.json()["data"]] == [0.5]
    assert [r.status_code for r in refused] == [400] * 5


async def test_a_deleted_keys_activity_is_still_served(
    keys: dict[str, EmulatedKey], management: httpx.AsyncClient
) -> None:
    """GIVEN key b deleted after it spent
    WHEN its activity is asked by its hash
    THEN its rows are still there: the account's history outlives its keys."""
    assert (await management.delete(f"/keys/{keys['b'].hash}")).status_code == 200
    of_b = (await management.get("/activity", params={"api_key_hash": keys["b"].hash})).json()
    assert _rows(of_b) == _expected({"b"})


async def test_grouping_by_workspace_adds_the_workspace_to_every_row(
    keys: dict[str, EmulatedKey], management: httpx.AsyncClient
) -> None:
    """GIVEN the charged keys, all in the default workspace
    WHEN activity is asked with group_by=workspace, and with an unknown grouping
    THEN every row names the workspace (and only then: not by default); the unknown is 400."""
    grouped = (await management.get("/activity", params={"group_by": "workspace"})).json()
    plain = (await management.get("/activity")).json()
    unknown = await management.get("/activity", params={"group_by": "model"})

    assert {r["workspace_id"] for r in grouped["data"]} == {DEFAULT_WORKSPACE_ID}
    assert all("workspace_id" not in r for r in plain["data"])
    assert unknown.status_code == 400


async def test_activity_needs_a_management_key(
    timed_emulator: Emulator, keys: dict[str, EmulatedKey]
) -> None:
    """GIVEN a user key
    WHEN it asks for activity
    THEN it is refused with 403, as OpenRouter refuses inference keys."""
    async with httpx.AsyncClient(
        transport=timed_emulator.transport(), base_url=f"http://emulator{API_PREFIX}"
    ) as client:
        refused = await client.get(
            "/activity", headers={"Authorization": f"Bearer {keys['a'].secret}"}
        )
    assert refused.status_code == 403
