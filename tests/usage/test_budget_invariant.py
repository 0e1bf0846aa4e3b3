"""The budget invariant, property-based: whatever happens in whatever order (spending at
OpenRouter, usage logs, rotations with and without grace, tier changes, resets), OpenRouter never
accepts more spend from a user in a month than their budget plus what admins gave back."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.config import Environment, Settings
from shared.db.embedded import EmbeddedPostgres
from shared.errors import AppError
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator, EmulatorApiError
from shared.runtime import EMULATOR_BASE_URL, Runtime
from shared.usage.budgets import BudgetService
from shared.usage.service import UsageService
from shared.users.service import UsersService
from tests.conftest import TEMPLATE_DATABASE

TIERS = {"free": Decimal(10), "standard": Decimal(50), "micro": Decimal(100)}
USER = "prop"

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(8), places=2)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("spend"), amounts, st.booleans()),
        st.tuples(st.just("spend_previous"), amounts, st.booleans()),
        st.tuples(st.just("rotate"), st.sampled_from([0, 300])),
        st.tuples(st.just("end_grace")),
        st.tuples(st.just("tier"), st.sampled_from(sorted(TIERS))),
        st.tuples(st.just("reset")),
    ),
    min_size=1,
    max_size=14,
)


@dataclass
class Books:
    accepted: Decimal = Decimal(0)
    given_back: Decimal = Decimal(0)
    max_budget: Decimal = TIERS["free"]
    generations: int = 0
    log: list[str] = field(default_factory=list)


async def _secret(keys: KeyLifecycleService, runtime: Runtime, state: str) -> str | None:
    async with runtime.database().connection() as conn:
        cursor = await conn.execute(
            "select id from api_keys where owner = %s and state = %s", (f"user:{USER}", state)
        )
        row = await cursor.fetchone()
    if row is None:
        return None
    return keys.open_secret(await keys.get_key(row["id"]))  # type: ignore[arg-type]


async def _run(dsn: str, local_dir: Path, steps: list[tuple[object, ...]]) -> Books:
    emulator = Emulator()
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
    )
    runtime = Runtime(
        Settings(app_env=Environment.TEST, local_data_dir=local_dir, database_url=SecretStr(dsn)),
        openrouter=client,
        emulator=emulator,
    )
    keys, budgets, usage = (
        KeyLifecycleService(runtime),
        BudgetService(runtime),
        UsageService(runtime),
    )
    books = Books()
    await keys.create_key(Owner.user(USER), actor="t", tier="free")
    try:
        for step in steps:
            books.log.append(repr(step))
            kind = step[0]
            try:
                if kind in ("spend", "spend_previous"):
                    amount, report = Decimal(str(step[1])), bool(step[2])
                    secret = await _secret(
                        keys, runtime, "current" if kind == "spend" else "previous"
                    )
                    if secret is None:
                        continue
                    try:
                        emulator.charge(secret, amount)
                    except EmulatorApiError:
                        continue
                    books.accepted += amount
                    if report:
                        books.generations += 1
                        await usage.log(
                            [
                                {
                                    "user_id": USER,
                                    "generation_id": f"gen-{books.generations}",
                                    "model": "m",
                                    "cost_usd": str(amount),
                                }
                            ],
                            actor="platform",
                        )
                elif kind == "rotate":
                    await keys.rotate_key(Owner.user(USER), actor="t", grace_seconds=int(step[1]))  # type: ignore[call-overload]
                elif kind == "end_grace":
                    async with runtime.database().connection() as conn:
                        await conn.execute(
                            "update api_keys set grace_until = now() where state = 'previous'"
                        )
                    await keys.advance_due_operations()
                elif kind == "tier":
                    tier = str(step[1])
                    await UsersService(runtime).put(
                        USER,
                        tier=tier,
                        rotation_policy=None,
                        actor="t",
                        reason=None,
                        request_id=None,
                        must_exist=True,
                    )
                    books.max_budget = max(books.max_budget, TIERS[tier])
                elif kind == "reset":
                    [outcome] = await budgets.reset(
                        user_id=USER,
                        tier=None,
                        everyone=False,
                        reason="property test",
                        actor="admin",
                        request_id=None,
                    )
                    books.given_back += -outcome.amount_usd
            except AppError:
                continue  # a refusal (operation in progress, ...) is a legitimate outcome
    finally:
        await runtime.database().close()
        await client.aclose()
    return books


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=operations)
def test_openrouter_never_accepts_more_than_the_budget_plus_resets(
    steps: list[tuple[object, ...]], embedded_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    name = "p_" + uuid.uuid4().hex[:12]
    with psycopg.connect(embedded_postgres.dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}" template "{TEMPLATE_DATABASE}"')
    try:
        books = asyncio.run(_run(embedded_postgres.dsn_for(name), tmp_path, steps))
    finally:
        with psycopg.connect(embedded_postgres.dsn, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)')
    assert books.accepted <= books.max_budget + books.given_back, "\n".join(books.log)
