"""An emulator whose time moves only when a test moves it, and our client wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator, _SharedState
from shared.runtime import EMULATOR_BASE_URL
from tests.conftest import RecordingSleep

# A Thursday at noon UTC: days, weeks and months all have room on both sides.
START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
READINESS_DELAY_S = 2.0


class ManualClock:
    """The emulator's now (UTC), moved by hand: windows, expiry, generation readiness and
    /activity's days all read it."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture(autouse=True)
def _reads_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator's own tests check every section marked reading to change nothing (two
    snapshots a section: too slow for the whole suite's large states, right for these)."""
    monkeypatch.setattr(_SharedState, "check_reads", True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timed_emulator(clock: ManualClock) -> Emulator:
    """An emulator on the manual clock whose generations are readable 2 s after billing."""
    return Emulator(clock=clock, generation_delay_s=READINESS_DELAY_S)


@pytest.fixture
async def timed_openrouter(
    timed_emulator: Emulator, recording_sleep: RecordingSleep
) -> AsyncIterator[OpenRouterClient]:
    client = OpenRouterClient(
        management_key=SecretStr(timed_emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=timed_emulator.transport(),
        sleep=recording_sleep,
        clock=recording_sleep.clock,
    )
    yield client
    await client.aclose()
