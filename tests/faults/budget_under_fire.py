"""The budget under fire: many clients spending at the emulator on every key they know (old,
new, revoked), billed when their requests complete, while rotations (with and without grace),
tier changes both ways, resets, emergency rotations during a grace period, the monthly job,
revocations, OpenRouter faults and crashes run. Then one checker.

Used by tests/faults/test_budget_under_fire.py (seconds) and bench/budget_soak.py (minutes).

What the checker holds the service to, per owner and UTC month: the sum of what all the
owner's keys were billed at the emulator (deleted keys included) is at most the budget in
force, to the micro-dollar. The budget in force is the last tier's budget plus every reset's
amount; after a tier was lowered, what the owner had already been billed once the lowering
was applied (and requests admitted before it were billed) stands too. Besides: one current
key per owner, no key of an emergency's scope still enabled at OpenRouter, the books equal
their events, the audit chain intact, no operation open, no orphan (tests/faults/invariants).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from shared.db.database import Database
from shared.emergency.service import EmergencyRotationService, EmergencyScope
from shared.errors import AppError
from shared.jobs.queue import QueueSettings
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, EmulatorApiError, Fault
from shared.openrouter.errors import OpenRouterError
from shared.runtime import Runtime
from shared.usage.budgets import BudgetService
from shared.usage.monthly import open_period
from shared.usage.service import UsageService
from shared.users.service import UsersService
from tests.faults.invariants import violations

TIERS: dict[str, Decimal | None] = {
    "free": Decimal(10),
    "standard": Decimal(50),
    "micro": Decimal(100),
    "admin": None,
}
# Where a crash can stop an invocation: every step of a rotation, and of a settlement.
CRASH_POINTS = (
    "before_freeze_old",
    "after_freeze_old",
    "after_plan",
    "before_openrouter_create",
    "after_openrouter_create",
    "after_record_secret",
    "after_activate",
    "before_settle",
    "after_final_usage",
)
MICRO = Decimal("0.000001")


class SimulatedCrash(Exception):
    """The invocation dies here (its lease stays taken until it runs out)."""


def crash_at(step: str) -> Any:
    def checkpoint(name: str) -> None:
        if name == step:
            raise SimulatedCrash(step)

    return checkpoint


@dataclass
class FireConfig:
    owners: int = 8
    spenders: int = 24
    seconds: float = 6.0
    billing_delay_s: float = 0.2  # a request is billed up to this long after admission
    graces_s: tuple[int, ...] = (0, 1, 2)
    seed: int = 13
    quiesce_timeout_s: float = 20.0


@dataclass
class OwnerBooks:
    user_id: str
    budget: Decimal | None
    given_back: Decimal = Decimal(0)
    billed_after_lowering: Decimal = Decimal(0)
    secrets: list[str] = field(default_factory=list)

    def bound(self) -> Decimal | None:
        """The most the owner may have been billed this month; None: unlimited."""
        if self.budget is None:
            return None
        return max(self.budget + self.given_back, self.billed_after_lowering)


@dataclass
class FireReport:
    config: FireConfig
    seconds: float
    requests: Counter[str]
    billed_usd: Decimal
    operations: Counter[str]
    crashes: int
    faults: int
    overspend_usd: Decimal  # the largest over any owner; 0 when the budget held
    overspent: list[str]
    overspent_users: list[str]
    violations: list[str]

    def lines(self) -> list[str]:
        c = self.config
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.operations.items()))
        return [
            f"{c.spenders} spenders on {c.owners} owners for {self.seconds:.1f} s, requests billed"
            f" up to {c.billing_delay_s:g} s after admission",
            f"requests: {', '.join(f'{k} {v}' for k, v in sorted(self.requests.items()))};"
            f" billed ${self.billed_usd:.6f}",
            f"operations: {ops}",
            f"crashes injected: {self.crashes}; OpenRouter faults injected: {self.faults}",
            f"largest overspend: ${self.overspend_usd:.6f}",
            f"violations: {'none' if not self.violations else '; '.join(self.violations)}",
        ]


class BudgetUnderFire:
    def __init__(
        self, runtime: Runtime, emulator: Emulator, database: Database, config: FireConfig
    ) -> None:
        self.runtime, self.emulator, self.database, self.config = (
            runtime,
            emulator,
            database,
            config,
        )
        self.random = random.Random(config.seed)
        self.keys = KeyLifecycleService(runtime)
        self.books: dict[str, OwnerBooks] = {}
        self.requests: Counter[str] = Counter()
        self.operations: Counter[str] = Counter()
        self.crashes = 0
        self.faults = 0
        self.emergencies: list[uuid.UUID] = []
        self._known_keys: set[uuid.UUID] = set()
        self._names: dict[str, str] = {}  # OpenRouter name of every key -> its user
        self._generations = 0
        self._stop = asyncio.Event()
        self._stop_jobs = asyncio.Event()

    # ----- the run -----

    async def run(self) -> FireReport:
        started = time.monotonic()
        await self._seed()
        spenders = [asyncio.create_task(self._spender(n)) for n in range(self.config.spenders)]
        watcher = asyncio.create_task(self._watch_keys())
        jobs = asyncio.create_task(self._jobs())
        try:
            await self._operate(started + self.config.seconds)
        finally:
            self._stop.set()
            await asyncio.gather(*spenders)  # every request in flight is billed
        self.emulator.clear_faults()
        await self._quiesce()
        self._stop_jobs.set()
        await asyncio.gather(watcher, jobs)
        return await self._check(time.monotonic() - started)

    async def _seed(self) -> None:
        for n in range(self.config.owners):
            tier = self.random.choice(list(TIERS))
            user = f"fire-{n}"
            issued = await self.keys.create_key(Owner.user(user), actor="fire", tier=tier)
            self.books[user] = OwnerBooks(user, TIERS[tier])
            assert issued.secret is not None
            self.books[user].secrets.append(issued.secret)
            self._known_keys.add(issued.key.id)

    # ----- spenders -----

    async def _spender(self, n: int) -> None:
        rng = random.Random(self.config.seed * 1000 + n)
        usage = UsageService(self.runtime)
        users = list(self.books)
        while not self._stop.is_set():
            books = self.books[rng.choice(users)]
            # Mostly the newest key a client knows, sometimes an older one (a stale cache).
            secret = books.secrets[-1] if rng.random() < 0.7 else rng.choice(books.secrets)
            cost = Decimal(rng.randint(1, 400)) / 1000
            try:
                await self.emulator.spend(
                    secret,
                    cost,
                    duration_s=rng.uniform(0, self.config.billing_delay_s),
                    max_cost=cost * 2 if rng.random() < 0.2 else None,
                )
            except EmulatorApiError as refused:
                self.requests[f"refused {refused.status}"] += 1
                await asyncio.sleep(0.005)
                continue
            self.requests["billed"] += 1
            if rng.random() < 0.9:  # most are reported to the ledger, some twice
                self._generations += 1
                generation = (
                    f"fire-{self._generations - 1}"
                    if rng.random() < 0.05 and self._generations > 1
                    else f"fire-{self._generations}"
                )
                # A few are reported wrong, as callers do: a reset must still give back no more
                # than OpenRouter counted.
                reported = cost * 3 if rng.random() < 0.03 else cost
                await usage.log(
                    [
                        {
                            "user_id": books.user_id,
                            "generation_id": generation,
                            "model": "m",
                            "cost_usd": str(reported),
                        }
                    ],
                    actor="fire",
                )

    async def _watch_keys(self) -> None:
        """Clients learn every new key (a reveal, a rotation's answer) and never forget one."""
        while not self._stop_jobs.is_set():
            async with self.database.connection() as conn:
                cursor = await conn.execute(
                    "select id, user_id from api_keys where openrouter_hash is not null"
                    " and secret_ciphertext is not null and not (id = any(%s))",
                    (list(self._known_keys),),
                )
                rows = await cursor.fetchall()
            for row in rows:
                key = await self.keys.get_key(row["id"])  # type: ignore[arg-type]
                self._known_keys.add(key.id)
                if key.user_id in self.books:
                    self.books[key.user_id].secrets.append(self.keys.open_secret(key))
            await asyncio.sleep(0.02)

    # ----- what runs meanwhile -----

    async def _jobs(self) -> None:
        """The every-minute crons, run every few milliseconds, sometimes crashing mid-way."""
        emergencies = EmergencyRotationService(self.runtime)
        while not self._stop_jobs.is_set():
            worker = self.keys
            if self.random.random() < 0.1:
                worker = KeyLifecycleService(
                    self.runtime, checkpoint=crash_at(self.random.choice(CRASH_POINTS[-2:]))
                )
                self.crashes += 1
            try:
                await worker.advance_due_operations()
                await emergencies.process_running(time_budget_s=2)
                if self.random.random() < 0.05:  # the daily reconcile, meanwhile
                    await self.keys.reconcile(actor="job:reconcile", request_id=None)
                    self.operations["reconcile"] += 1
            except (AppError, OpenRouterError):
                pass  # the next tick tries again
            await asyncio.sleep(0.03)

    async def _operate(self, until: float) -> None:
        actions = [
            self._rotate,
            self._crashing_rotation,
            self._change_tier,
            self._reset,
            self._emergency_in_grace,
            self._revoke_and_recreate,
            self._disable_and_enable,
            self._openrouter_fault,
        ]
        # Every kind once, in a random order, the monthly job half way; then at random.
        opening: list[Any] = [
            *actions,
            *(partial(self._rotate, grace=g) for g in self.config.graces_s),
        ]
        self.random.shuffle(opening)
        opening.insert(len(opening) // 2, self._monthly)
        while time.monotonic() < until or opening:
            user = self.random.choice(list(self.books))
            if opening:
                action = opening.pop()
            else:
                action = self.random.choices(actions, weights=[6, 3, 5, 3, 1, 1, 1, 2])[0]
            await action(user)
            await asyncio.sleep(self.random.uniform(0.01, 0.08))

    async def _op(self, name: str, work: Any) -> Any:
        try:
            result = await work
        except (AppError, OpenRouterError) as refused:
            self.operations[f"{name} refused ({getattr(refused, 'code', 'error')})"] += 1
            return None
        self.operations[name] += 1
        return result

    async def _rotate(self, user: str, grace: int | None = None) -> None:
        grace = self.random.choice(self.config.graces_s) if grace is None else grace
        await self._op(
            f"rotation grace {grace}",
            self.keys.rotate_key(Owner.user(user), actor="fire", grace_seconds=grace),
        )

    async def _crashing_rotation(self, user: str) -> None:
        step = self.random.choice(CRASH_POINTS[:-2])
        crashing = KeyLifecycleService(self.runtime, checkpoint=crash_at(step))
        self.crashes += 1
        try:
            await crashing.rotate_key(
                Owner.user(user),
                actor="fire",
                grace_seconds=self.random.choice(self.config.graces_s),
            )
        except SimulatedCrash:
            self.operations["rotation crashed"] += 1
            # A dead process never lets go: its lease runs out by itself.
            async with self.database.connection() as conn:
                await conn.execute(
                    "update owner_leases set holder = gen_random_uuid(),"
                    " lease_until = now() + interval '300 milliseconds' where owner = %s",
                    (Owner.user(user).key,),
                )
        except (AppError, OpenRouterError) as refused:
            self.operations[f"rotation refused ({getattr(refused, 'code', 'error')})"] += 1

    async def _change_tier(self, user: str) -> None:
        books = self.books[user]
        tier = self.random.choice([t for t in TIERS if TIERS[t] != books.budget])
        change = await self._op(
            "tier change",
            UsersService(self.runtime).put(
                user,
                tier=tier,
                rotation_policy=None,
                actor="fire",
                reason=None,
                request_id=None,
                must_exist=True,
            ),
        )
        if change is None:
            return
        lowered = TIERS[tier] is not None and (
            books.budget is None or TIERS[tier] < books.budget  # type: ignore[operator]
        )
        books.budget = TIERS[tier]
        self.operations[f"tier change {change.key.status}"] += 1
        if lowered:
            # What was billed once the lowering took hold (and earlier requests were billed)
            # is the floor the rest of the month is held to.
            await self._until_applied(Owner.user(user).key)
            await asyncio.sleep(max(self.config.billing_delay_s, self.runtime.billing_settle_s))
            billed = (await self._billed_by_owner()).get(user, Decimal(0))
            books.billed_after_lowering = max(books.billed_after_lowering, billed)

    async def _until_applied(self, owner: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with self.database.connection() as conn:
                cursor = await conn.execute(
                    "select 1 from owner_leases where owner = %s"
                    " and (dirty or lease_until > now())",
                    (owner,),
                )
                if await cursor.fetchone() is None:
                    return
            await asyncio.sleep(0.01)
        raise AssertionError(f"a budget change for {owner} was never applied")

    async def _reset(self, user: str) -> None:
        outcomes = await self._op(
            "reset",
            BudgetService(self.runtime).reset(
                user_id=user,
                tier=None,
                everyone=False,
                reason="under fire",
                actor="fire",
                request_id=None,
            ),
        )
        if outcomes:
            self.books[user].given_back += -outcomes[0].amount_usd

    async def _emergency_in_grace(self, user: str) -> None:
        await self._op(
            "rotation grace 2",
            self.keys.rotate_key(Owner.user(user), actor="fire", grace_seconds=2),
        )
        status = await self._op(
            "emergency rotation",
            EmergencyRotationService(self.runtime).start(
                EmergencyScope(user_ids=(user,)),
                reason="leaked in a log",
                actor="fire",
                request_id=None,
                time_budget_s=2,
            ),
        )
        if status is not None:
            self.emergencies.append(status.rotation.id)

    async def _revoke_and_recreate(self, user: str) -> None:
        owner = Owner.user(user)
        try:
            current = await self.keys.current_key(owner)
        except AppError:
            await self._op("create", self.keys.create_key(owner, actor="fire"))
            return
        await self._op(
            "revoke",
            self.keys.revoke_key(current.id, actor="fire", reason="fire", request_id=None),
        )
        await self._op("create", self.keys.create_key(owner, actor="fire"))

    async def _disable_and_enable(self, user: str) -> None:
        try:
            current = await self.keys.current_key(Owner.user(user))
        except AppError:
            return
        for disabled in (True, False):
            await self._op(
                "disable" if disabled else "enable",
                self.keys.set_disabled(
                    current.id, disabled=disabled, actor="fire", reason=None, request_id=None
                ),
            )

    async def _openrouter_fault(self, _: str) -> None:
        self.faults += 1
        self.emulator.inject(
            self.random.choice(
                [
                    Fault("status", status=429, retry_after_s=0.05, times=3),
                    Fault("status", method="PATCH", status=500),
                    Fault("status", method="GET", status=502),
                    Fault("lost_response", method="POST", path="/keys"),
                    Fault("timeout", method="DELETE"),
                    Fault("latency", delay_s=0.05, times=5),
                ]
            )
        )

    async def _monthly(self, _: str) -> None:
        """The month opens (as seen by the keys: their limits were computed for last month)."""
        self.operations["monthly job"] += 1
        async with self.database.connection() as conn:
            await conn.execute(
                "update api_keys set limit_period = (date_trunc('month', now())"
                " - interval '1 month')::date where state = 'current'"
            )
        await open_period(self.runtime, QueueSettings(concurrency=4, time_budget_s=5))

    # ----- the end -----

    async def _quiesce(self) -> None:
        """Let the jobs finish everything: grace periods, settlements, emergencies."""
        deadline = time.monotonic() + self.config.quiesce_timeout_s
        while time.monotonic() < deadline:
            async with self.database.connection() as conn:
                cursor = await conn.execute(
                    "select (select count(*) from api_keys where state = 'previous'"
                    "  or (state = 'revoked' and deleted_at is null"
                    "      and openrouter_hash is not null)) as keys,"
                    " (select count(*) from key_operations"
                    "  where status in ('started', 'planned', 'key_created', 'activated')) as ops,"
                    " (select count(*) from emergency_rotations where status = 'running') as em,"
                    " (select count(*) from owner_leases where dirty) as dirty"
                )
                row = await cursor.fetchone()
                assert row is not None
                await conn.execute(  # a dead worker's items, and retries, due now
                    "update work_items set lease_until = null, available_at = now()"
                    " where status = 'pending'"
                )
            if not any(row.values()):
                return
            await asyncio.sleep(0.05)

    async def _billed_by_owner(self) -> dict[str, Decimal]:
        """What each user's keys were billed this month at the emulator, deleted keys too."""
        async with self.database.connection() as conn:
            cursor = await conn.execute("select openrouter_name, user_id from api_keys")
            self._names.update(
                {str(r["openrouter_name"]): str(r["user_id"]) for r in await cursor.fetchall()}
            )
        billed: dict[str, Decimal] = {}
        for row in self.emulator.state():
            user = self._names.get(row["name"])
            if user is not None:
                billed[user] = billed.get(user, Decimal(0)) + Decimal(row["usage_monthly"])
        return billed

    async def _check(self, seconds: float) -> FireReport:
        billed = await self._billed_by_owner()
        overspent, users, worst = [], [], Decimal(0)
        for user, books in self.books.items():
            bound = books.bound()
            spent = billed.get(user, Decimal(0))
            if bound is not None and spent > bound:
                worst = max(worst, spent - bound)
                users.append(user)
                overspent.append(f"{user} billed ${spent} on a budget of ${bound}")
        found = await violations(
            self.database,
            self.emulator,
            key_prefix=self.runtime.settings.openrouter_key_name_prefix,
        )
        found += await self._emergency_scope_still_enabled()
        return FireReport(
            config=self.config,
            seconds=seconds,
            requests=self.requests,
            billed_usd=sum(billed.values(), Decimal(0)),
            operations=self.operations,
            crashes=self.crashes,
            faults=self.faults,
            overspend_usd=worst,
            overspent=overspent,
            overspent_users=users,
            violations=found + overspent,
        )

    async def story_of(self, user: str) -> list[str]:
        """An owner's keys and audit trail, to read when the budget did not hold."""
        lines = [f"books: {self.books[user]!r}"[:300]]
        remote = {row["name"]: row for row in self.emulator.state()}
        async with self.database.connection() as conn:
            cursor = await conn.execute(
                "select id, state, openrouter_name, limit_usd, ceiling_usd, ceiling_until,"
                " disabled, final_usage_usd, final_usage_source, deleted_at, created_at"
                " from api_keys where user_id = %s order by created_at",
                (user,),
            )
            for row in await cursor.fetchall():
                at = remote.get(str(row["openrouter_name"]), {})
                lines.append(
                    f"key {str(row['id'])[:8]} {row['state']} limit {row['limit_usd']}"
                    f" ceiling {row['ceiling_usd']} until {row['ceiling_until']}"
                    f" disabled {row['disabled']} final {row['final_usage_usd']}"
                    f" ({row['final_usage_source']}) deleted {row['deleted_at']} |"
                    f" emulator usage {at.get('usage_monthly')} limit {at.get('limit')}"
                    f" disabled {at.get('disabled')} deleted {at.get('deleted')}"
                )
            cursor = await conn.execute(
                "select a.occurred_at, a.actor, a.action, a.target, a.details from audit_log a"
                " where a.target = %s or a.target in (select 'key:' || id from api_keys"
                " where user_id = %s) order by a.seq",
                (f"user:{user}", user),
            )
            for row in await cursor.fetchall():
                lines.append(
                    f"{row['occurred_at']:%H:%M:%S.%f} {row['action']} {str(row['target'])[:12]}"
                    f" {row['details']}"[:400]
                )
        return lines

    async def _emergency_scope_still_enabled(self) -> list[str]:
        async with self.database.connection() as conn:
            cursor = await conn.execute(
                "select k.openrouter_hash, r.status from emergency_rotation_items i"
                " join emergency_rotations r on r.id = i.rotation_id"
                " join api_keys k on k.id = i.key_id where k.openrouter_hash is not null"
            )
            rows = await cursor.fetchall()
        remote = {row["hash"]: row for row in self.emulator.state()}
        found = []
        for row in rows:
            key_hash = str(row["openrouter_hash"])
            key = remote.get(key_hash)
            if key is not None and not key["disabled"] and not key["deleted"]:
                found.append(f"key {key_hash[:8]} of an emergency is enabled")
        statuses = Counter(str(row["status"]) for row in rows)
        if statuses.get("running"):
            found.append(f"{statuses['running']} emergency items still running")
        return found
