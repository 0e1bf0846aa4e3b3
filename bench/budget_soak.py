"""The budget soak: tests/faults/budget_under_fire.py for minutes instead of seconds.

    .venv/bin/python -m bench.budget_soak [--seconds 120] [--owners 20] [--spenders 48]
                                          [--billing-delay 0.2] [--latency 0.01] [--seed 1]

Many spenders at the emulator, each request billed up to --billing-delay seconds after it was
admitted, on every key they know (old, new, revoked), while rotations with and without grace,
tier changes both ways, resets, emergency rotations during grace periods, the monthly job,
revocations, OpenRouter faults and crashes at every step run; then one checker. Prints what
ran and the largest overspend of any owner against the budget in force, which must be
$0.000000, with every other invariant (one current key per owner, no key of an emergency's
scope enabled, the books equal their events, the audit chain, no orphans). Exit code 1 when
anything does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from pydantic import SecretStr

from shared.config import Environment, Settings
from shared.db.database import Database, PoolLimits
from shared.db.embedded import start_embedded_postgres
from shared.db.migrations import MigrationRunner, load_migrations
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import EMULATOR_BASE_URL, Runtime
from tests.faults.budget_under_fire import BudgetUnderFire, FireConfig


async def soak(options: argparse.Namespace, data_dir: Path) -> int:
    server = start_embedded_postgres(data_dir / "pgdata")
    database = Database(server.dsn, PoolLimits(max_size=10))
    try:
        await MigrationRunner(database).migrate(load_migrations())
        emulator = Emulator(latency_s=options.latency)
        client = OpenRouterClient(
            management_key=SecretStr(emulator.management_key),
            base_url=EMULATOR_BASE_URL,
            transport=emulator.transport(),
            max_retry_after_s=1.0,
        )
        settings = Settings(
            app_env=Environment.TEST,
            local_data_dir=data_dir,
            database_url=SecretStr(server.dsn),
            # Budget a lowered key could still be billed for waits a little longer than
            # OpenRouter (the emulator) takes to bill a request.
            openrouter_billing_settle_s=options.billing_delay + 0.05,
        )
        runtime = Runtime(settings, database=database, openrouter=client, emulator=emulator)
        fire = BudgetUnderFire(
            runtime,
            emulator,
            database,
            FireConfig(
                owners=options.owners,
                spenders=options.spenders,
                seconds=options.seconds,
                billing_delay_s=options.billing_delay,
                seed=options.seed,
                quiesce_timeout_s=60,
            ),
        )
        report = await fire.run()
        print(
            f"budget soak (seed {options.seed}, OpenRouter latency {options.latency * 1000:g} ms)"
        )
        for line in report.lines():
            print(line)
        for user in report.overspent_users:
            print(f"----- {user}")
            for line in await fire.story_of(user):
                print(line)
        await client.aclose()
        return 0 if not report.violations else 1
    finally:
        await database.close()
        server.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--owners", type=int, default=20)
    parser.add_argument("--spenders", type=int, default=48)
    parser.add_argument("--billing-delay", type=float, default=0.2)
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="budget-soak-") as data_dir:
        sys.exit(asyncio.run(soak(options, Path(data_dir))))


if __name__ == "__main__":
    main()
