"""The budget invariant under fire, for a few seconds (bench/budget_soak.py runs it for longer):
every spender, operation, fault and crash of tests/faults/budget_under_fire.py at once, with
requests billed when they complete. Its figures go to test-artifacts/budget-under-fire.txt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.config import Settings
from shared.db.database import Database
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import EMULATOR_BASE_URL, Runtime
from tests.faults.budget_under_fire import BudgetUnderFire, FireConfig

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
async def fire_runtime(settings: Settings, database: Database) -> AsyncIterator[Runtime]:
    # OpenRouter bills requests up to 0.2 s after admitting them; the service waits 0.25 s
    # before giving budget a lowered key could still be billed to another key.
    emulator = Emulator(latency_s=0.01)
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
        max_retry_after_s=1.0,
    )
    runtime = Runtime(
        settings.model_copy(update={"openrouter_billing_settle_s": 0.25}),
        database=database,
        openrouter=client,
        emulator=emulator,
    )
    yield runtime
    await client.aclose()


async def test_no_owner_is_ever_billed_beyond_the_budget_in_force(
    fire_runtime: Runtime, database: Database
) -> None:
    emulator = fire_runtime.emulator()
    fire = BudgetUnderFire(
        fire_runtime, emulator, database, FireConfig(owners=6, spenders=24, seconds=6.0)
    )
    report = await fire.run()
    lines = report.lines()
    for user in report.overspent_users:
        lines += ["", f"----- {user}", *await fire.story_of(user)]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "budget-under-fire.txt").write_text("\n".join(lines) + "\n")

    assert report.violations == []
    assert report.overspend_usd == Decimal(0)
    # and the run was the one described: everything happened, under load
    assert report.requests["billed"] > 200 and report.requests["refused 403"] > 0
    for kind in ("rotation grace 0", "tier change", "reset", "emergency rotation"):
        assert report.operations[kind] > 0, report.lines()
    assert report.operations["rotation crashed"] > 0 and report.faults > 0
