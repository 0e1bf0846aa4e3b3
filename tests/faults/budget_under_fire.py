"""The budget under fire: many clients spending at the emulator on every key they know (old,
new, revoked), billed when their requests complete, while rotations (with and without grace),
tier changes both ways, resets, temporary budget increases (one of which lapses), tier policy
changes, emergency rotations during a grace period, the monthly job, revocations, OpenRouter
faults and crashes run. Then one checker.

Used by tests/faults/test_budget_under_fire.py (seconds) and bench/budget_soak.py (minutes).

Two kinds of owners. The monthly owners are on tiers without a policy (TIERS); the daily
owners on tiers with a daily cap, enforced by each tier's OpenRouter guardrail (DAILY_CAPS),
and their tier changes move them between those tiers only.

What the checker holds the service to, per owner and UTC month: the sum of what all the
owner's keys were billed at the emulator (deleted keys included) is at most

    max(tier budget + every reset's amount + the increases still in force,
        F = the most the owner was billed at a lowering of their budget)

to the micro-dollar, where the tier budget is the last tier's, and a lowering is a tier
downgrade (F: billed once it was applied and the requests admitted before it were billed) or
an increase's lapse (F: billed plus the worst case of everything in flight once the advance
job had applied it). So an increase counts while it is in force, what was spent under it
stands after it lapses (nothing is clawed back), and after the lapse nothing more is admitted
beyond the smaller budget.

Per daily owner, key and UTC day (OwnerBooks.daily_cap_bound; the emulator admits a request
only while its worst case fits in the cap less what the key was billed that day and the worst
case of everything in flight on it, so in-flight spend is inside the cap already): what a key
was billed that day is at most the largest cap its owner's tiers had, plus what was admitted
on it while it held no guardrail before its activation (a client of this campaign knows a key
as soon as its secret is recorded); a key admitted without its guardrail after its activation
is a violation. Per owner and day: at most that cap times (1 + the keys made for the owner that
day), plus what their keys were admitted before activation, since OpenRouter's guardrail
budget is per key: a new key starts the day afresh. At the end every key of a daily owner that
may spend holds its tier's guardrail.

Besides: one current key per owner, no key of an emergency's scope still enabled at
OpenRouter, the books equal their events, the audit chain intact, no operation open, no
orphan (tests/faults/invariants).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, cast

from shared.db.database import Database
from shared.emergency.service import EmergencyRotationService, EmergencyScope
from shared.errors import AppError
from shared.jobs.queue import QueueSettings
from shared.jobs.service import advance_key_operations
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import EmulatedKey, Emulator, EmulatorApiError, Fault
from shared.openrouter.errors import OpenRouterError
from shared.runtime import Runtime
from shared.usage.budgets import BudgetService
from shared.usage.monthly import open_period
from shared.usage.service import UsageService
from shared.usage.tier_policies import TierPolicyService
from shared.users.service import BudgetIncreaseService, UsersService
from tests.faults.invariants import violations

TIERS: dict[str, Decimal | None] = {
    "free": Decimal(10),
    "standard": Decimal(50),
    "micro": Decimal(100),
    "admin": None,
}
# The daily owners' tiers, their monthly budgets (as schema 0001 seeds them) and the daily caps
# their policies cycle through (the first is set before any key is made).
DAILY_TIERS: dict[str, Decimal | None] = {"operator": Decimal(250), "enterprise": Decimal(500)}
DAILY_CAPS: dict[str, tuple[Decimal, ...]] = {
    "operator": (Decimal(3), Decimal(2)),
    "enterprise": (Decimal(4), Decimal(3)),
}
EVERY_TIER = {**TIERS, **DAILY_TIERS}
INCREASES = (Decimal(10), Decimal(25), Decimal(50))
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
    daily_owners: int = 3  # besides `owners`: on the tiers with a daily cap
    spenders: int = 24
    seconds: float = 6.0
    billing_delay_s: float = 0.2  # a request is billed up to this long after admission
    graces_s: tuple[int, ...] = (0, 1, 2)
    seed: int = 13
    quiesce_timeout_s: float = 20.0


@dataclass
class Increase:
    id: int
    amount: Decimal
    lapsed: bool = False


@dataclass
class OwnerBooks:
    user_id: str
    tier: str
    budget: Decimal | None
    daily: bool = False
    given_back: Decimal = Decimal(0)
    billed_after_lowering: Decimal = Decimal(0)  # F: the most billed at a lowering or a lapse
    secrets: list[str] = field(default_factory=list)
    increases: list[Increase] = field(default_factory=list)
    tiers_seen: set[str] = field(default_factory=set)

    def in_force(self) -> Decimal:
        return sum((i.amount for i in self.increases if not i.lapsed), Decimal(0))

    def bound(self) -> Decimal | None:
        """The most the owner may have been billed this month; None: unlimited."""
        if self.budget is None:
            return None
        return max(self.budget + self.given_back + self.in_force(), self.billed_after_lowering)

    def daily_cap_bound(self, caps_ever: dict[str, set[Decimal]]) -> Decimal:
        """The largest daily cap any tier the owner was on had (or was being set to)."""
        return max(cap for tier in self.tiers_seen for cap in caps_ever[tier])


@dataclass(frozen=True)
class KeyRow:
    user_id: str
    openrouter_hash: str | None
    state: str
    deleted: bool
    created_at: datetime
    activated_at: datetime | None
    tier_guardrail: str | None


@dataclass(frozen=True)
class Admission:
    key_hash: str
    at: datetime
    cost: Decimal


class UnguardedAdmissions:
    """Every request the emulator admits on a key that holds no guardrail with a budget, seen
    inside its own admission (under its lock, right after its checks passed): the spend a daily
    cap did not count when it let a request in."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.seen: list[Admission] = []
        self.admitted = 0

    def __enter__(self) -> UnguardedAdmissions:
        admit: Callable[..., EmulatedKey] = self.emulator._admit

        def watched(secret: str, cost: Decimal, **details: Any) -> EmulatedKey:
            key = admit(secret, cost, **details)
            self.admitted += 1
            guardrail = self.emulator.guardrail_of(key.hash)
            if guardrail is None or guardrail.limit_usd is None or guardrail.reset_interval is None:
                self.seen.append(Admission(key.hash, self.emulator.clock(), cost))
            return key

        self.emulator._admit = watched  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        vars(self.emulator).pop("_admit", None)  # the emulator's own again


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
    violations: list[str]  # everything that did not hold, the lists below included
    increases: str = ""  # the grants and lapses, described
    over_daily_cap: list[str] = field(default_factory=list)  # a key over its day's bound
    over_daily_keys: list[str] = field(default_factory=list)  # an owner over cap x (1 + made)
    unguarded_after_activation: list[str] = field(default_factory=list)
    off_guardrail: list[str] = field(default_factory=list)  # at the end: not its tier's
    daily: list[str] = field(default_factory=list)  # the daily figures, described
    user_days_over_one_cap: int = 0  # the per-key budget's known limit, seen at work
    daily_users: list[str] = field(default_factory=list)  # the owners of the daily violations

    def lines(self) -> list[str]:
        c = self.config
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.operations.items()))
        return [
            f"{c.spenders} spenders on {c.owners} + {c.daily_owners} (daily cap) owners for"
            f" {self.seconds:.1f} s, requests billed up to {c.billing_delay_s:g} s after admission",
            f"requests: {', '.join(f'{k} {v}' for k, v in sorted(self.requests.items()))};"
            f" billed ${self.billed_usd:.6f}",
            f"operations: {ops}",
            f"crashes injected: {self.crashes}; OpenRouter faults injected: {self.faults}",
            f"increases: {self.increases}",
            f"largest overspend: ${self.overspend_usd:.6f}",
            *self.daily,
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
        self._increases = 0
        self.caps_ever: dict[str, set[Decimal]] = {tier: set() for tier in DAILY_TIERS}
        self._caps: dict[str, Decimal] = {}  # each daily tier's cap now
        self.unguarded = UnguardedAdmissions(emulator)
        self._stop = asyncio.Event()
        self._stop_jobs = asyncio.Event()

    # ----- the run -----

    async def run(self) -> FireReport:
        started = time.monotonic()
        with self.unguarded:
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
        # The daily tiers' policies first: every key of theirs is assigned at its activation.
        for tier, caps in DAILY_CAPS.items():
            self.caps_ever[tier].add(caps[0])
            await TierPolicyService(self.runtime).set_policy(
                tier,
                daily_cap_usd=caps[0],
                allowed_models=None,
                allowed_providers=None,
                actor="fire",
                reason="under fire",
                request_id=None,
            )
            self._caps[tier] = caps[0]
        # Every tier from the start (then at random): an owner on each budget, unlimited too.
        tiers: list[str] = []
        for family, owners in (
            (TIERS, self.config.owners),
            (DAILY_TIERS, self.config.daily_owners),
        ):
            every = self.random.sample(list(family), len(family))
            tiers += [
                self.random.choice(every) if n >= len(every) else every[n] for n in range(owners)
            ]
        for n, tier in enumerate(tiers):
            daily = n >= self.config.owners
            user = f"fire-{n}"
            issued = await self.keys.create_key(Owner.user(user), actor="fire", tier=tier)
            self.books[user] = OwnerBooks(user, tier, EVERY_TIER[tier], daily, tiers_seen={tier})
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
                source = (refused.metadata or {}).get("limit_source")
                guardrail = " guardrail" if source == "openrouter_guardrail_budget" else ""
                self.requests[f"refused {refused.status}{guardrail}"] += 1
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
                # the rest of the advance job (shared/jobs/service.py): lapsed increases
                await BudgetIncreaseService(self.runtime).apply_lapsed()
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
            self._grant_increase,
            self._change_policy,
            self._lapse_increase,
        ]
        # Every kind once, in a random order, the monthly job half way, and past it (owners out
        # of budget by then) an increase, its lapse two actions later, and a third of the
        # opening still to run after it; then at random. An opening action refused (another
        # operation of the owner's in progress, a fault) comes again at the opening's end, up
        # to 3 times: every kind happens, however slow the run.
        opening: list[Any] = [
            *(a for a in actions if a not in (self._grant_increase, self._lapse_increase)),
            *(partial(self._rotate, grace=g) for g in self.config.graces_s),
        ]
        self.random.shuffle(opening)
        opening.insert(len(opening) // 2, self._monthly)
        third = len(opening) // 3  # (the opening runs from its end)
        opening.insert(third, self._lapse_increase)
        opening.insert(third + 2, self._grant_increase)
        again: Counter[Any] = Counter()
        while time.monotonic() < until or opening:
            user = self.random.choice(list(self.books))
            refused = self._refusals()
            if opening:
                action = opening.pop()
                await action(user)
                if self._refusals() > refused and again[action] < 3:
                    again[action] += 1
                    opening.insert(0, action)
            else:
                action = self.random.choices(actions, weights=[6, 3, 5, 3, 1, 1, 1, 2, 2, 1, 1])[0]
                await action(user)
            await asyncio.sleep(self.random.uniform(0.01, 0.08))

    def _refusals(self) -> int:
        return sum(n for kind, n in self.operations.items() if "refused" in kind)

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
        family = DAILY_TIERS if books.daily else TIERS
        tier = self.random.choice([t for t in family if family[t] != books.budget])
        books.tiers_seen.add(tier)  # its guardrail may hold the owner's keys from now on
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
        if change is not None:
            self.operations[f"tier change {change.key.status}"] += 1
        # A change refused after it was written (its keys' limits or guardrail not yet
        # followed) stands all the same: the books follow the database.
        async with self.database.connection() as conn:
            cursor = await conn.execute("select tier from users where user_id = %s", (user,))
            row = await cursor.fetchone()
        assert row is not None
        tier = str(row["tier"])
        if tier == books.tier:
            return
        lowered = EVERY_TIER[tier] is not None and (
            books.budget is None or EVERY_TIER[tier] < books.budget  # type: ignore[operator]
        )
        books.tier, books.budget = tier, EVERY_TIER[tier]
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

    async def _grant_increase(self, _: str) -> None:
        """An admin grants more budget, until the month's end or for an hour, to the monthly
        owner (on a budgeted tier) with the least of theirs left."""
        eligible = [b for b in self.books.values() if not b.daily and b.budget is not None]
        if not eligible:
            return
        billed = await self._billed_by_owner()
        books = min(
            eligible,
            key=lambda b: (b.bound() or Decimal(0)) - billed.get(b.user_id, Decimal(0)),
        )
        self._increases += 1
        amount, reason = self.random.choice(INCREASES), f"under fire {self._increases}"
        await self._op(
            "budget increase",
            BudgetIncreaseService(self.runtime).grant(
                books.user_id,
                amount,
                ends_at=None
                if self.random.random() < 0.5
                else datetime.now(UTC) + timedelta(hours=1),
                reason=reason,
                actor="fire",
                request_id=None,
            ),
        )
        # In force once written, even when the call failed after (its keys not yet following);
        # the bound counts what was asked for.
        async with self.database.connection() as conn:
            cursor = await conn.execute(
                "select id from budget_increases where user_id = %s and reason = %s",
                (books.user_id, reason),
            )
            row = await cursor.fetchone()
        if row is not None:
            books.increases.append(Increase(cast(int, row["id"]), amount))

    async def _lapse_increase(self, _: str) -> None:
        """An increase in force ends (its ends_at set in the past), the advance job runs, and
        once the owner's keys are back to the budget without it, what the owner was billed and
        has in flight is what the rest of the month is held to, if more. The increase chosen is
        the one whose end takes the most away: of the owner nearest the budget without it."""
        billed = await self._billed_by_owner()
        lapsing = [
            (b, i)
            for b in self.books.values()
            for i in b.increases
            if not i.lapsed and b.budget is not None
        ]
        if not lapsing:  # (its owner moved to an unlimited tier, say): one to lapse next time
            self.operations["lapse refused (none in force)"] += 1
            await self._grant_increase(_)
            return

        def left_without(pair: tuple[OwnerBooks, Increase]) -> Decimal:
            books, increase = pair
            assert books.budget is not None
            budget_without = books.budget + books.given_back + books.in_force() - increase.amount
            return budget_without - billed.get(books.user_id, Decimal(0))

        books, increase = min(lapsing, key=left_without)
        async with self.database.connection() as conn:
            await conn.execute(
                "update budget_increases set ends_at = now() where id = %s", (increase.id,)
            )
        increase.lapsed = True  # the bound counts it no more
        try:
            await advance_key_operations(self.runtime)
        except (AppError, OpenRouterError):
            self.operations["advance job failed"] += 1  # its next run (the jobs') applies it
        deadline = time.monotonic() + 10
        while True:  # the next run of the job marks it, if this one found the owner held
            async with self.database.connection() as conn:
                cursor = await conn.execute(
                    "select lapse_applied_at from budget_increases where id = %s",
                    (increase.id,),
                )
                row = await cursor.fetchone()
            if row is not None and row["lapse_applied_at"] is not None:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the lapse of increase {increase.id} was never applied")
            await asyncio.sleep(0.01)
        await self._until_applied(Owner.user(books.user_id).key)
        committed = (await self._billed_by_owner(in_flight=True)).get(books.user_id, Decimal(0))
        books.billed_after_lowering = max(books.billed_after_lowering, committed)
        self.operations["lapse"] += 1

    async def _change_policy(self, _: str) -> None:
        """An admin changes a daily tier's cap (the next of its DAILY_CAPS): its guardrail is
        changed at OpenRouter, and every key assigned to it follows."""
        tier = self.random.choice(list(DAILY_CAPS))
        caps = DAILY_CAPS[tier]
        cap = caps[(caps.index(self._caps[tier]) + 1) % len(caps)]
        self.caps_ever[tier].add(cap)  # in force at OpenRouter before anything says so
        changed = await self._op(
            "tier policy change",
            TierPolicyService(self.runtime).set_policy(
                tier,
                daily_cap_usd=cap,
                allowed_models=None,
                allowed_providers=None,
                actor="fire",
                reason="under fire",
                request_id=None,
            ),
        )
        if changed is not None:
            self._caps[tier] = cap

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

    async def _billed_by_owner(self, *, in_flight: bool = False) -> dict[str, Decimal]:
        """What each user's keys were billed this month at the emulator, deleted keys too
        (in_flight: and the worst case of what is in flight on them, billed later)."""
        async with self.database.connection() as conn:
            cursor = await conn.execute("select openrouter_name, user_id from api_keys")
            self._names.update(
                {str(r["openrouter_name"]): str(r["user_id"]) for r in await cursor.fetchall()}
            )
        billed: dict[str, Decimal] = {}
        for row in self.emulator.state():
            user = self._names.get(row["name"])
            if user is not None:
                amount = Decimal(row["usage_monthly"])
                if in_flight:
                    amount += Decimal(row["in_flight"])
                billed[user] = billed.get(user, Decimal(0)) + amount
        return billed

    async def _check_daily(self, report: FireReport) -> None:
        """The daily layer, per key and per owner and UTC day, from what the emulator billed
        (its generations, dated by their billing, as a guardrail's window counts them)."""
        daily = {user for user, books in self.books.items() if books.daily}
        async with self.database.connection() as conn:
            cursor = await conn.execute(
                "select k.openrouter_name, k.openrouter_hash, k.user_id, k.state, k.deleted_at,"
                " k.created_at, k.activated_at, t.guardrail_id from api_keys k"
                " join users u on u.user_id = k.user_id"
                " join subscription_tiers t on t.tier = u.tier where k.user_id = any(%s)",
                (list(daily),),
            )
            rows = {
                str(r["openrouter_name"]): KeyRow(
                    user_id=str(r["user_id"]),
                    openrouter_hash=cast(str | None, r["openrouter_hash"]),
                    state=str(r["state"]),
                    deleted=r["deleted_at"] is not None,
                    created_at=cast(datetime, r["created_at"]),
                    activated_at=cast(datetime | None, r["activated_at"]),
                    tier_guardrail=cast(str | None, r["guardrail_id"]),
                )
                for r in await cursor.fetchall()
            }
        name_of = {str(row["hash"]): str(row["name"]) for row in self.emulator.state()}
        key_row = {h: rows[n] for h, n in name_of.items() if n in rows}
        billed: defaultdict[tuple[str, date], Decimal] = defaultdict(Decimal)
        for generation in self.emulator.generations():
            if generation.key_hash in key_row and not generation.byok:
                billed[(generation.key_hash, generation.billed_at.astimezone(UTC).date())] += (
                    generation.cost
                )

        # What was admitted without a guardrail: before the key's activation, what the cap
        # could not count; after it, a key handed out without its tier's policy.
        allowance: defaultdict[str, Decimal] = defaultdict(Decimal)
        after: defaultdict[str, Decimal] = defaultdict(Decimal)
        for admitted in self.unguarded.seen:
            key = key_row.get(admitted.key_hash)
            if key is None:
                continue
            if key.activated_at is not None and admitted.at >= key.activated_at:
                after[admitted.key_hash] += admitted.cost
            else:
                allowance[admitted.key_hash] += admitted.cost
        report.unguarded_after_activation = [
            f"{key_row[h].user_id} key {name_of[h]} was admitted ${amount} after its"
            " activation without a guardrail"
            for h, amount in after.items()
        ]

        per_user: defaultdict[tuple[str, date], Decimal] = defaultdict(Decimal)
        worst_key = Decimal(0)  # the most any key-day was billed over its cap
        for (key_hash, day), amount in billed.items():
            user = key_row[key_hash].user_id
            per_user[(user, day)] += amount
            cap = self.books[user].daily_cap_bound(self.caps_ever)
            worst_key = max(worst_key, amount - cap)
            before = allowance.get(key_hash, Decimal(0))
            if amount > cap + before:
                report.over_daily_cap.append(
                    f"{user} key {name_of[key_hash]} billed ${amount} on {day} on a daily cap of"
                    f" ${cap} (+ ${before} admitted before its activation)"
                )
        ratios = []
        made_at_openrouter = set(name_of.values())
        for (user, day), amount in sorted(per_user.items()):
            cap = self.books[user].daily_cap_bound(self.caps_ever)
            made = carried = 0
            for name, key in rows.items():  # a key made again after a lost create counts once
                if key.user_id == user and name in made_at_openrouter:
                    made_on = key.created_at.astimezone(UTC).date()
                    made += made_on == day
                    carried += made_on < day and any(
                        (h, day) in billed for h, n in name_of.items() if n == name
                    )
            keys = max(carried, 1) + made  # 1 + made while at most one key crosses midnight
            extra = sum(
                (allowance.get(h, Decimal(0)) for h, k in key_row.items() if k.user_id == user),
                Decimal(0),
            )
            ratios.append((amount / cap, made, user))
            report.user_days_over_one_cap += amount > cap
            if amount > cap * keys + extra:
                report.over_daily_keys.append(
                    f"{user} billed ${amount} on {day} on a daily cap of ${cap} with {made} keys"
                    f" made that day (+ ${extra} admitted before activations)"
                )

        # At the end, every key of theirs that may spend holds its tier's guardrail.
        for key_hash, key in key_row.items():
            live = key.state in ("current", "previous") and not key.deleted
            if not live or key_hash != key.openrouter_hash:  # not a lost create's, made again
                continue
            guardrail = self.emulator.guardrail_of(key_hash)
            if guardrail is None or guardrail.id != key.tier_guardrail:
                report.off_guardrail.append(
                    f"{key.user_id} {key.state} key {name_of[key_hash]} holds guardrail"
                    f" {None if guardrail is None else guardrail.id}, its tier's is"
                    f" {key.tier_guardrail}"
                )

        top = max(ratios, default=(Decimal(0), 0, "-"))
        unguarded_before = sum(allowance.values(), Decimal(0))
        caps = ", ".join(
            f"{tier} ${' then $'.join(str(c) for c in sorted(self.caps_ever[tier], reverse=True))}"
            for tier in DAILY_CAPS
        )
        report.daily = [
            f"daily caps: {caps}; {len(ratios)} owner-days, {report.user_days_over_one_cap} billed"
            f" more than one cap (a new key's fresh budget), the most {top[0]:.2f} caps"
            f" ({top[2]}, {top[1]} keys made that day); the most any key-day was over its cap:"
            f" ${worst_key:.6f}",
            f"admitted without a guardrail: ${unguarded_before} on"
            f" {len(allowance)} keys before their activation (of {self.unguarded.admitted}"
            f" admissions), ${sum(after.values(), Decimal(0))} after",
        ]
        report.daily_users = sorted(
            {line.split()[0] for line in report.over_daily_cap + report.over_daily_keys}
            | {line.split()[0] for line in report.unguarded_after_activation + report.off_guardrail}
        )
        report.violations += (
            report.over_daily_cap
            + report.over_daily_keys
            + report.unguarded_after_activation
            + report.off_guardrail
        )

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
        granted = [i for b in self.books.values() for i in b.increases]
        report = FireReport(
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
            increases=f"{len(granted)} granted (${sum((i.amount for i in granted), Decimal(0))}),"
            f" {sum(i.lapsed for i in granted)} lapsed; "
            + ", ".join(
                f"{b.user_id} billed ${billed.get(b.user_id, Decimal(0))} of"
                f" max(${b.budget} + ${b.given_back} + ${b.in_force()}, ${b.billed_after_lowering})"
                for b in self.books.values()
                if b.increases
            ),
        )
        await self._check_daily(report)
        return report

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
                guardrail = self.emulator.guardrail_of(str(at.get("hash", "")))
                lines.append(
                    f"key {str(row['id'])[:8]} {row['state']} limit {row['limit_usd']}"
                    f" ceiling {row['ceiling_usd']} until {row['ceiling_until']}"
                    f" disabled {row['disabled']} final {row['final_usage_usd']}"
                    f" ({row['final_usage_source']}) deleted {row['deleted_at']} |"
                    f" emulator usage {at.get('usage_monthly')} limit {at.get('limit')}"
                    f" guardrail {None if guardrail is None else guardrail.id}"
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
