"""Bulk work at the deployed cadence: the month's rotation and limit restore, an emergency.

    .venv/bin/python -m bench.bulk_rotation [--owners 10000 100000] [--emergency 10000]
        [--latency 0.3] [--openrouter-concurrency 32] [--only-sync | --only-policy]

Runs the real code (the work lanes, the queue, the sagas, the limiter and the fleet's share in
PostgreSQL, the emulator) on a virtual clock (bench/virtual_time.py): the schedules as
vercel.json and serverless.yml configure them (WORK_LANES lanes every minute, each invocation
working JOB_TIME_BUDGET_S after its stagger; the month's rotation cron hourly at :15, the
period's every 15 minutes on the 1st), OpenRouter at `--latency` a call taking at most
`--openrouter-concurrency` calls at once and answering 429 beyond. The database and Python
cost no simulated time.

For each size it seeds that many users with a key (real create sagas), then measures:
- the month's rotation: every key last rotated last month, from the job's cron to its end;
- the month's limit restore: every key's limit left below its budget last month;
- the daily reconcile: every page of OpenRouter's listing, 100 keys a page, then the repairs;
- the usage sync (every 15 minutes): every page of the listing into the books;
and, for `--emergency` keys (that many users moved to one tier, the tier in scope), an
emergency rotation from the admin's request to the last key disabled at OpenRouter and to the
last replaced. `--only-policy` measures instead, at each size, a tier's first policy (every
seeded owner on that tier): from the admin's PUT (`--arrives-at` into a minute) to the last key
assigned to its new guardrail (1 + ceil(keys / 100) calls: the guardrail, then a page of 100
hashes a call, worked by the request for TIER_POLICY_REQUEST_BUDGET_S, then by the lanes
from the next minute), every key then checked at the
emulator; and a change of that policy (one PATCH, which every key follows).

The ideal of each is every OpenRouter call it made, at the latency, as many at once as
OpenRouter takes: calls x latency / openrouter-concurrency. Afterwards: duplicate current keys
and orphans (keys at the emulator the database does not know, or the reverse), both 0.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import SecretStr

from bench import virtual_time
from shared.config import Environment, Settings
from shared.db.database import Database, PoolLimits
from shared.db.embedded import start_embedded_postgres
from shared.db.migrations import MigrationRunner, load_migrations
from shared.emergency.service import EmergencyRotationService, EmergencyScope
from shared.jobs import service as jobs
from shared.jobs.worker import SCHEDULE_INTERVAL_S, work
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.openrouter.limiter import AdaptiveLimiter
from shared.runtime import EMULATOR_BASE_URL, Runtime
from shared.usage.tier_policies import ASSIGN_PAGE, TIER_GUARDRAIL_KIND, TierPolicyService

TRACE = os.environ.get("BENCH_TRACE") == "1"  # print OpenRouter's use over time


@dataclass
class Installation:
    settings: Settings
    database: Database
    emulator: Emulator

    def invocation(self) -> Runtime:
        """A runtime as one invocation has it: its own OpenRouter client and limiter."""
        loop = asyncio.get_running_loop()
        client = OpenRouterClient(
            management_key=SecretStr(self.emulator.management_key),
            base_url=EMULATOR_BASE_URL,
            transport=self.emulator.transport(),
            limiter=AdaptiveLimiter(self.settings.openrouter_max_concurrency, clock=loop.time),
        )
        return Runtime(
            self.settings, database=self.database, openrouter=client, emulator=self.emulator
        )

    def calls(self) -> int:
        """OpenRouter calls taken so far (429s for being over its concurrency not counted)."""
        return len(self.emulator.requests) - self.emulator.rate_limited


@dataclass
class Measured:
    seconds: float
    calls: int
    invocations: int
    throttled: int


async def _invoke(installation: Installation, call: Callable[[Runtime], Awaitable[Any]]) -> None:
    runtime = installation.invocation()
    try:
        await call(runtime)
    finally:
        await runtime.openrouter().aclose()


async def deployed_cadence(
    installation: Installation,
    *,
    crons: list[tuple[Callable[[float], bool], Callable[[Runtime], Awaitable[Any]]]],
    done: Callable[[], Awaitable[bool]],
    first_second: float = 0.0,
) -> Measured:
    """Every minute, the work lanes and whichever crons are due (by the minute's offset in
    seconds from the start), each a fresh invocation, until `done`; its virtual seconds."""
    loop = asyncio.get_running_loop()
    settings = installation.settings
    started, calls_before = loop.time(), installation.calls()
    throttled_before = installation.emulator.rate_limited
    running: set[asyncio.Task[None]] = set()
    invocations = 0

    def launch(call: Callable[[Runtime], Awaitable[Any]]) -> None:
        nonlocal invocations
        invocations += 1
        task = asyncio.create_task(_invoke(installation, call))
        running.add(task)
        task.add_done_callback(running.discard)

    async def minutes() -> None:
        minute = -first_second  # the first lane tick after the start
        if first_second:
            await asyncio.sleep(SCHEDULE_INTERVAL_S - first_second)
            minute = SCHEDULE_INTERVAL_S - first_second
        while True:
            creating = any(due(minute) for due, _ in crons)
            for lane in range(settings.work_lanes):
                launch(functools.partial(work, lane=lane, jobs_may_start=creating))
            for due, call in crons:
                if due(minute):
                    launch(call)
            await asyncio.sleep(SCHEDULE_INTERVAL_S)
            minute += SCHEDULE_INTERVAL_S

    ticking = asyncio.create_task(minutes())
    calls_each_second: list[int] = []
    while not await done():
        before = installation.calls()
        await asyncio.sleep(1.0)
        calls_each_second.append(installation.calls() - before)
    seconds = loop.time() - started
    if TRACE:  # how much of what OpenRouter takes was used, each 15 s
        full = installation.emulator.max_concurrent_requests or 1
        windows = [calls_each_second[i : i + 15] for i in range(0, len(calls_each_second), 15)]
        print(
            "  OpenRouter used, % each 15 s: "
            + " ".join(
                f"{100 * sum(w) * installation.emulator.latency_s / (full * len(w)):.0f}"
                for w in windows
            )
        )
    ticking.cancel()
    await asyncio.gather(ticking, return_exceptions=True)
    await asyncio.gather(*running, return_exceptions=True)  # the last invocations end idle
    return Measured(
        seconds,
        installation.calls() - calls_before,
        invocations,
        installation.emulator.rate_limited - throttled_before,
    )


async def _one(database: Database, query: str, *args: object) -> Any:
    async with database.connection() as conn:
        cursor = await conn.execute(query, args)
        row = await cursor.fetchone()
    return None if row is None else next(iter(row.values()))


async def seed(installation: Installation, count: int, *, prefix: str) -> None:
    emulator = installation.emulator
    latency, cap = emulator.latency_s, emulator.max_concurrent_requests
    emulator.latency_s, emulator.max_concurrent_requests = 0.0, None
    runtime = installation.invocation()
    service = KeyLifecycleService(runtime)
    pending = iter(range(count))

    async def lane() -> None:
        for i in pending:
            await service.create_key(
                Owner.user(f"{prefix}-{i:06d}"),
                actor="bench",
                tier="standard",
                rotation_policy="monthly",
            )

    await asyncio.gather(*(lane() for _ in range(32)))
    await runtime.openrouter().aclose()
    emulator.latency_s, emulator.max_concurrent_requests = latency, cap


def _job_done(database: Database, kind: str) -> Callable[[], Awaitable[bool]]:
    async def done() -> bool:
        status = await _one(
            database,
            "select status from work_jobs where kind = %s order by created_at desc limit 1",
            kind,
        )
        return status is not None and status != "running"

    return done


async def _job_from_its_cron(
    installation: Installation,
    kind: str,
    cron: Callable[[Runtime], Awaitable[Any]],
    *,
    every_s: int,
    prepare: tuple[str, ...] = (),
) -> Measured:
    """A bulk job from its cron's minute (the start) to its end, after `prepare` set the
    books up for it; the cron runs every `every_s` seconds after the start."""
    async with installation.database.connection() as conn:
        for statement in prepare:
            await conn.execute(statement)
        await conn.execute("delete from work_jobs where kind = %s", (kind,))
    return await deployed_cadence(
        installation,
        crons=[(lambda s: s % every_s == 0, cron)],
        done=_job_done(installation.database, kind),
    )


async def month_rotation(installation: Installation) -> Measured:
    """Every key last rotated last month; the rotation's cron is hourly at :15."""
    return await _job_from_its_cron(
        installation,
        "scheduled_rotation",
        jobs.rotate_scheduled_keys,
        every_s=3600,
        prepare=(
            "update api_keys set activated_at = date_trunc('month', now()) - interval '1 day'"
            " where state = 'current'",
        ),
    )


async def month_restore(installation: Installation) -> Measured:
    """Every key's limit left below its budget last month (a rotation, a downgrade, a reset);
    the period's cron runs at :05, :20, :35, :50 on the 1st."""
    return await _job_from_its_cron(
        installation,
        "monthly_restore",
        jobs.open_usage_period,
        every_s=900,
        prepare=(
            "update api_keys set limit_period = (date_trunc('month', now())"
            " - interval '1 month')::date, limit_usd = limit_usd - 1 where state = 'current'",
        ),
    )


async def daily_reconcile(installation: Installation) -> Measured:
    """The reconcile's cron is daily at 02:30."""
    return await _job_from_its_cron(installation, "reconcile", jobs.reconcile_keys, every_s=86400)


async def usage_sync(installation: Installation) -> Measured:
    """The sync's cron runs every 15 minutes."""
    return await _job_from_its_cron(
        installation, "usage_sync", jobs.sync_usage_from_openrouter, every_s=900
    )


@dataclass
class EmergencyMeasured:
    keys: int
    revoked_s: float
    revoke_calls: int
    replaced: Measured


async def emergency(installation: Installation, *, arrives_at_s: float) -> EmergencyMeasured:
    """An emergency rotation of the beta tier's keys, asked `arrives_at_s` into a minute."""
    loop = asyncio.get_running_loop()
    emulator = installation.emulator
    async with installation.database.connection() as conn:
        cursor = await conn.execute(
            "select k.openrouter_hash from api_keys k join users u on u.user_id = k.user_id"
            " where u.tier = 'beta' and k.state = 'current'"
        )
        old = {str(row["openrouter_hash"]) for row in await cursor.fetchall()}
    in_scope = len(old)
    started, calls_before = loop.time(), installation.calls()
    revoked: list[tuple[float, int]] = []

    async def watch_revocation() -> None:
        while True:
            live = [h for h in old if (key := emulator.key_by_hash(h)) and not key.disabled]
            if not live:
                revoked.append((loop.time() - started, installation.calls() - calls_before))
                return
            old.intersection_update(live)
            await asyncio.sleep(0.5)

    rotation_id: list[UUID] = []

    async def request(runtime: Runtime) -> None:
        status = await EmergencyRotationService(runtime).start(
            EmergencyScope(tiers=("beta",)),
            reason="bench: leaked keys",
            actor="bench-admin",
            request_id=None,
            time_budget_s=runtime.settings.emergency_request_budget_s,
        )
        rotation_id.append(status.rotation.id)

    async def done() -> bool:
        if not rotation_id:
            return False
        status = await _one(
            installation.database,
            "select status from emergency_rotations where id = %s",
            rotation_id[0],
        )
        return bool(status != "running")

    watcher = asyncio.create_task(watch_revocation())
    requested = asyncio.create_task(_invoke(installation, request))
    replaced = await deployed_cadence(installation, crons=[], done=done, first_second=arrives_at_s)
    await requested
    await watcher
    return EmergencyMeasured(in_scope, revoked[0][0], revoked[0][1], replaced)


@dataclass
class PolicyMeasured:
    keys: int
    first: Measured  # from the PUT to the last key assigned
    unassigned: int  # keys of the tier the emulator holds under no guardrail or another one
    change_s: float
    change_calls: int
    not_following: int  # keys of the tier whose guardrail does not say the changed policy


def _put_policy(tier: str, daily_cap_usd: str | None) -> Callable[[Runtime], Awaitable[Any]]:
    """The admin's PUT of the tier's policy: a daily cap (None: no policy)."""

    async def put(runtime: Runtime) -> None:
        await TierPolicyService(runtime).set_policy(
            tier,
            daily_cap_usd=None if daily_cap_usd is None else Decimal(daily_cap_usd),
            allowed_models=None,
            allowed_providers=None,
            actor="bench-admin",
            reason="bench: tier policy",
            request_id=None,
        )

    return put


async def tier_policy(
    installation: Installation, *, tier: str, arrives_at_s: float
) -> PolicyMeasured:
    """The tier's first policy, asked `arrives_at_s` into a minute, to its last key assigned;
    then a change of it; then the policy taken away (the next size's is a first one again)."""
    loop = asyncio.get_running_loop()
    emulator = installation.emulator
    async with installation.database.connection() as conn:
        cursor = await conn.execute(
            "select k.openrouter_hash from api_keys k join users u on u.user_id = k.user_id"
            " where u.tier = %s and k.state in ('current', 'previous', 'pending')"
            " and k.openrouter_hash is not null and k.deleted_at is null",
            (tier,),
        )
        keys = [str(row["openrouter_hash"]) for row in await cursor.fetchall()]
        await conn.execute("delete from work_jobs where kind = %s", (TIER_GUARDRAIL_KIND,))
    assigned = _job_done(installation.database, TIER_GUARDRAIL_KIND)
    requested = asyncio.create_task(_invoke(installation, _put_policy(tier, "5")))
    first = await deployed_cadence(installation, crons=[], done=assigned, first_second=arrives_at_s)
    await requested
    guardrail_id = await _one(
        installation.database,
        "select guardrail_id from subscription_tiers where tier = %s",
        tier,
    )
    unassigned = sum(
        1 for h in keys if (g := emulator.guardrail_of(h)) is None or g.id != guardrail_id
    )

    started, calls_before = loop.time(), installation.calls()
    await _invoke(installation, _put_policy(tier, "7"))
    change_s = loop.time() - started
    await deployed_cadence(installation, crons=[], done=assigned)  # its job: nothing to assign
    change_calls = installation.calls() - calls_before
    not_following = sum(
        1
        for h in keys
        if (g := emulator.guardrail_of(h)) is None
        or g.id != guardrail_id
        or g.limit_usd != Decimal("7")
    )
    await _invoke(installation, _put_policy(tier, None))
    return PolicyMeasured(len(keys), first, unassigned, change_s, change_calls, not_following)


async def end_state(installation: Installation) -> tuple[int, int]:
    """(duplicate current keys, orphans) after the run."""
    duplicates = await _one(
        installation.database,
        "select count(*) from (select owner from api_keys where state = 'current'"
        " group by owner having count(*) > 1) d",
    )
    async with installation.database.connection() as conn:
        cursor = await conn.execute(
            "select openrouter_hash from api_keys where openrouter_hash is not null"
            " and deleted_at is null"
        )
        ours = {row["openrouter_hash"] for row in await cursor.fetchall()}
    at_openrouter = {key.hash for key in installation.emulator.user_keys()}
    return int(duplicates), len(at_openrouter - ours) + len(ours - at_openrouter)


def _ratio(measured: Measured, latency: float, concurrency: int) -> tuple[float, float]:
    ideal = measured.calls * latency / concurrency
    return ideal, measured.seconds / ideal


async def run(options: argparse.Namespace, scratch: Path) -> None:
    server = start_embedded_postgres(scratch / "pgdata")
    database = Database(server.dsn, PoolLimits(max_size=40))
    await MigrationRunner(database).migrate(load_migrations())
    settings = Settings(
        app_env=Environment.TEST,
        local_data_dir=scratch,
        database_url=SecretStr(server.dsn),
        rotation_grace_seconds=0,  # each rotation runs to its end: the old key deleted
    )
    emulator = Emulator(
        latency_s=options.latency, max_concurrent_requests=options.openrouter_concurrency
    )
    installation = Installation(settings, database, emulator)
    latency, allowed = options.latency, options.openrouter_concurrency
    print(
        f"deployed cadence: {settings.work_lanes} work lanes a minute, "
        f"{settings.job_time_budget_s:.0f} s an invocation, JOB_CONCURRENCY "
        f"{settings.job_concurrency}, EMERGENCY_CONCURRENCY {settings.emergency_concurrency}, "
        f"OPENROUTER_MAX_CONCURRENCY {settings.openrouter_max_concurrency}; OpenRouter "
        f"{latency * 1000:.0f} ms a call, {allowed} at once (429 beyond); simulated time"
    )
    seeded = 0
    results: dict[int, tuple[float, float]] = {}
    policies: dict[int, PolicyMeasured] = {}
    for owners in sorted(options.owners):
        began = time.perf_counter()
        await seed(installation, owners - seeded, prefix=f"u{owners}")
        seeded = owners
        seed_s = time.perf_counter() - began
        if options.only_sync:
            synced = await usage_sync(installation)
            y_ideal, y_ratio = _ratio(synced, latency, allowed)
            print(
                f"\n{owners} owners: sync {synced.seconds:.0f} s (ideal {y_ideal:.0f} s,"
                f" {y_ratio:.2f} x; {synced.calls} calls, {synced.invocations} invocations)"
            )
            continue
        if options.only_policy:
            policy = policies[owners] = await tier_policy(
                installation, tier="standard", arrives_at_s=options.arrives_at
            )
            p_ideal, p_ratio = _ratio(policy.first, latency, allowed)
            expected = 1 + math.ceil(policy.keys / ASSIGN_PAGE)
            print(
                f"\n{owners} owners: a first policy of their tier ({policy.keys} keys), asked"
                f" {options.arrives_at:.0f} s into a minute: every key assigned in"
                f" {policy.first.seconds:.0f} s (ideal {p_ideal:.1f} s, {p_ratio:.2f} x;"
                f" {policy.first.calls} calls, expected {expected};"
                f" {policy.first.throttled} 429s; the request did what TIER_POLICY_REQUEST_"
                f"BUDGET_S allows, {policy.first.invocations} lane invocations the rest);"
                f" unassigned at OpenRouter {policy.unassigned}"
            )
            print(
                f"  its change: {policy.change_s:.1f} s (ideal {latency:.1f} s;"
                f" {policy.change_calls} calls, expected 1); keys not following it"
                f" {policy.not_following}"
            )
            continue
        rotation = await month_rotation(installation)
        restore = await month_restore(installation)
        reconcile = await daily_reconcile(installation)
        synced = await usage_sync(installation)
        duplicates, orphans = await end_state(installation)
        r_ideal, r_ratio = _ratio(rotation, latency, allowed)
        s_ideal, s_ratio = _ratio(restore, latency, allowed)
        c_ideal, c_ratio = _ratio(reconcile, latency, allowed)
        y_ideal, y_ratio = _ratio(synced, latency, allowed)
        results[owners] = (r_ratio, s_ratio)
        print(f"\n{owners} owners (seeded in {seed_s:.0f} s real)")
        for name, phase, ideal, ratio in (
            ("rotation", rotation, r_ideal, r_ratio),
            ("restore", restore, s_ideal, s_ratio),
            ("reconcile", reconcile, c_ideal, c_ratio),
            ("sync", synced, y_ideal, y_ratio),
        ):
            print(
                f"  {name:9} {phase.seconds:8.0f} s  ideal {ideal:8.0f} s  {ratio:.2f} x"
                f"  ({phase.calls} calls, {phase.calls / owners:.1f} an owner,"
                f" {phase.throttled} 429s, {phase.invocations} invocations)"
            )
        print(f"  duplicate current keys {duplicates}, orphans {orphans}")

    if options.only_sync or options.only_policy:
        await database.close()
        server.destroy()
        if options.only_policy:
            largest = max(options.owners)
            policy = policies[largest]
            p_ideal, _ = _ratio(policy.first, latency, allowed)
            print(
                f"policy: {largest} owners, first policy assigned to {policy.keys} keys in"
                f" {policy.first.seconds:.0f} s (ideal {p_ideal:.1f} s; {policy.first.calls}"
                f" calls, expected {1 + math.ceil(policy.keys / ASSIGN_PAGE)}),"
                f" {policy.unassigned} unassigned; changed in {policy.change_s:.1f} s"
                f" ({policy.change_calls} calls), {policy.not_following} keys not following"
            )
        return
    # The emergency: `--emergency` users moved to one tier, and that tier in scope.
    async with database.connection() as conn:
        await conn.execute(
            "update users set tier = 'beta' where user_id in"
            " (select user_id from users order by user_id limit %s)",
            (options.emergency,),
        )
    measured = await emergency(installation, arrives_at_s=options.arrives_at)
    b_ideal = measured.revoke_calls * latency / allowed
    d_ideal, _ = _ratio(measured.replaced, latency, allowed)
    duplicates, orphans = await end_state(installation)
    print(
        f"\nemergency of {measured.keys} keys, asked {options.arrives_at:.0f} s into a minute:"
        f" revoked in {measured.revoked_s:.0f} s (ideal {b_ideal:.0f} s,"
        f" {measured.revoked_s / b_ideal:.2f} x; {measured.revoke_calls} calls),"
        f" replaced in {measured.replaced.seconds:.0f} s (ideal {d_ideal:.0f} s,"
        f" {measured.replaced.seconds / d_ideal:.2f} x; {measured.replaced.calls} calls,"
        f" {measured.replaced.throttled} 429s)"
    )
    print(f"  duplicate current keys {duplicates}, orphans {orphans}")
    await database.close()
    server.destroy()
    largest = max(options.owners)
    r_ratio, s_ratio = results[largest]
    print(
        f"bulk: {largest} owners, rotation {r_ratio:.2f} x ideal, restore {s_ratio:.2f} x ideal;"
        f" emergency {measured.keys} keys: revoked in {measured.revoked_s:.0f} s"
        f" (ideal {b_ideal:.0f} s), replaced in {measured.replaced.seconds:.0f} s"
        f" (ideal {d_ideal:.0f} s)"
    )


def main() -> None:
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # the figures, not a million EMF lines
    logging.getLogger("openrouter-agent").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--owners", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--emergency", type=int, default=10_000, help="keys in its scope")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds an OpenRouter call")
    parser.add_argument("--openrouter-concurrency", type=int, default=32)
    parser.add_argument("--arrives-at", type=float, default=30.0, help="seconds into a minute")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--only-sync", action="store_true", help="seed, then the usage sync only")
    only.add_argument(
        "--only-policy", action="store_true", help="seed, then a tier's first policy and its change"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        virtual_time.run(run(options, Path(scratch)))


if __name__ == "__main__":
    main()
