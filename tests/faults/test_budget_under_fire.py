"""The budget invariant under fire, for a few seconds (bench/budget_soak.py runs it for longer):
every spender, operation, fault and crash of tests/faults/budget_under_fire.py at once, with
requests billed when they complete, over the monthly budget with its temporary increases and
the tiers' daily caps. Its figures go to test-artifacts/budget-under-fire.txt."""

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
    """The monthly layer, per owner and UTC month, with temporary increases: billed at the
    emulator (every key, deleted ones too) <= max(tier budget + resets + the increases still in
    force, F), F being the most billed at a lowering: a downgrade (once applied, its earlier
    requests billed) or an increase's lapse (billed plus the worst case in flight once the
    advance job applied it). An increase counts from its grant; its lapse claws nothing back,
    but nothing more is admitted beyond the smaller budget.

    The daily layer, per daily owner (their tiers' policies cap a key's UTC day at OpenRouter,
    through the tier's guardrail), measured from the emulator's generations: a key's day <= the
    largest cap the owner's tiers had + what it was admitted with no guardrail before its
    activation. The emulator admits a request only while its worst case fits in the cap less
    the key's day so far and the worst case of everything in flight on the key, so what was in
    flight when the cap ran out is inside the cap: the largest key-day over its cap is $0.

    The known limit, measured and asserted as it is: OpenRouter's guardrail budget is per key,
    not per user, so each key made during the day (a rotation, an emergency, a revoke and
    create) starts the day with a whole cap. What holds per owner and day is cap x (1 + keys
    made for the owner that day) (+ what their keys were admitted before activation), not one
    cap: the report counts the owner-days billed more than one cap, and the most caps billed.
    """
    # GIVEN six owners on tiers with a monthly budget only, three on tiers with a daily cap,
    # and requests billed up to 0.2 s after they were admitted
    emulator = fire_runtime.emulator()
    fire = BudgetUnderFire(
        fire_runtime,
        emulator,
        database,
        FireConfig(owners=6, daily_owners=3, spenders=24, seconds=6.0),
    )

    # WHEN 24 clients spend on every key they know for six seconds, while rotations, crashes,
    # tier changes, resets, increases granted (the latest lapsing: its end set in the past,
    # then the advance job), tier policy changes, emergencies, the monthly job and OpenRouter
    # faults run, and then the jobs finish what is open
    report = await fire.run()
    lines = report.lines()
    for user in dict.fromkeys(report.overspent_users + report.daily_users):
        lines += ["", f"----- {user}", *await fire.story_of(user)]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "budget-under-fire.txt").write_text("\n".join(lines) + "\n")

    # THEN no owner was billed beyond the monthly budget in force, increases counted
    assert report.overspent == [], report.lines()
    assert report.overspend_usd == Decimal(0)
    # AND no key beyond its daily cap, no owner beyond cap x (1 + keys made that day)
    assert report.over_daily_cap == [], report.lines()
    assert report.over_daily_keys == [], report.lines()
    # AND no key was handed out without its tier's guardrail, and each holds it at the end
    assert report.unguarded_after_activation == [], report.lines()
    assert report.off_guardrail == [], report.lines()
    # AND every other invariant holds
    assert report.violations == [], report.lines()
    # and the run was the one described: everything happened, under load
    assert report.requests["billed"] > 200 and report.requests["refused 403"] > 0
    for kind in ("rotation grace 0", "tier change", "reset", "emergency rotation"):
        assert report.operations[kind] > 0, report.lines()
    assert report.operations["rotation crashed"] > 0 and report.faults > 0
    for kind in ("budget increase", "lapse", "tier policy change"):
        assert report.operations[kind] > 0, report.lines()
    guardrail_refusals = report.requests["refused 402 guardrail"]
    assert guardrail_refusals + report.requests["refused 403 guardrail"] > 0
