"""Tier policies enforced at OpenRouter: a daily cap, allowed models and providers per tier.

OpenRouter enforces them itself, through a guardrail per tier (schema 0022): the service keeps
the guardrail in step with the tier's policy and assigns it every key of the tier's users. A
new policy makes the guardrail and a job on the work queue that assigns the tier's keys to it
in pages (one OpenRouter call a page); a changed policy is one update of the guardrail, which
its keys follow; a policy taken away deletes the guardrail, which frees its keys. A key made
later is assigned when it is activated, a user moved to another tier when they move.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from shared.audit.repository import AuditRepository
from shared.db.database import Connection
from shared.errors import NotFound
from shared.jobs.queue import ItemHandler, QueueSettings, work_through
from shared.jobs.repository import ClaimedItem, NewItem, WorkJob, WorkQueueRepository
from shared.keys.domain import Owner
from shared.openrouter.errors import OpenRouterNotFound
from shared.openrouter.models import Guardrail
from shared.runtime import Runtime

TIER_GUARDRAIL_KIND = "tier_guardrail"
TIER_GUARDRAIL_PRIORITY = 6  # as a tier's budget change: asked for now
ASSIGN_PAGE = 100  # key hashes per bulk assignment call


@dataclass(frozen=True, slots=True)
class TierPolicy:
    tier: str
    daily_cap_usd: Decimal | None
    allowed_models: tuple[str, ...] | None
    allowed_providers: tuple[str, ...] | None
    guardrail_id: str | None

    @property
    def empty(self) -> bool:
        return (
            self.daily_cap_usd is None
            and self.allowed_models is None
            and self.allowed_providers is None
        )

    def audited(self) -> dict[str, Any]:
        return {
            "daily_cap_usd": self.daily_cap_usd,
            "allowed_models": None if self.allowed_models is None else list(self.allowed_models),
            "allowed_providers": (
                None if self.allowed_providers is None else list(self.allowed_providers)
            ),
        }


_POLICY = (
    "select tier, daily_cap_usd, allowed_models, allowed_providers, guardrail_id"
    " from subscription_tiers where tier = %s"
)
_POLICY_FOR_UPDATE = _POLICY + " for update"
_KEYS_TO_ASSIGN = (
    "select k.openrouter_hash from api_keys k join users u on u.user_id = k.user_id"
    " join subscription_tiers t on t.tier = u.tier"
    " left join key_guardrails g on g.key_id = k.id"
    " where k.state in ('current', 'previous', 'pending') and k.openrouter_hash is not null"
    " and k.deleted_at is null and g.guardrail_id is distinct from t.guardrail_id"
)
_KEYS_TO_ASSIGN_BY_TIER = _KEYS_TO_ASSIGN + " and u.tier = %s order by k.created_at, k.id"
_KEYS_TO_ASSIGN_OF_OWNER = _KEYS_TO_ASSIGN + " and k.owner = %s order by k.created_at, k.id"


class TierPolicyRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def policy(self, tier: str, *, lock: bool = False) -> TierPolicy | None:
        query = _POLICY_FOR_UPDATE if lock else _POLICY
        cursor = await self._conn.execute(query, (tier,))
        row = await cursor.fetchone()
        return None if row is None else _policy(row)

    async def policies(self) -> list[TierPolicy]:
        cursor = await self._conn.execute(
            "select tier, daily_cap_usd, allowed_models, allowed_providers, guardrail_id"
            " from subscription_tiers order by tier"
        )
        return [_policy(row) for row in await cursor.fetchall()]

    async def write(self, policy: TierPolicy) -> None:
        await self._conn.execute(
            "update subscription_tiers set daily_cap_usd = %s, allowed_models = %s,"
            " allowed_providers = %s, guardrail_id = %s, updated_at = now() where tier = %s",
            (
                policy.daily_cap_usd,
                None if policy.allowed_models is None else list(policy.allowed_models),
                None if policy.allowed_providers is None else list(policy.allowed_providers),
                policy.guardrail_id,
                policy.tier,
            ),
        )

    async def guardrail_of_owner(self, owner: str) -> str | None:
        """The guardrail of the tier the owner's user is on (system keys: none)."""
        cursor = await self._conn.execute(
            "select t.guardrail_id from api_keys k join users u on u.user_id = k.user_id"
            " join subscription_tiers t on t.tier = u.tier where k.owner = %s limit 1",
            (owner,),
        )
        row = await cursor.fetchone()
        return None if row is None else row["guardrail_id"]  # type: ignore[return-value]

    async def keys_to_assign(self, *, tier: str | None, owner: str | None) -> list[str]:
        """Hashes of the keys that may spend (of the tier's users, or of one owner) whose
        recorded guardrail is not their tier's."""
        # One condition or the other, never `a or b`: an owner's keys are read through the
        # owner index at every activation and user put, not by a scan of every key.
        cursor = await self._conn.execute(
            _KEYS_TO_ASSIGN_BY_TIER if tier is not None else _KEYS_TO_ASSIGN_OF_OWNER,
            (tier if tier is not None else owner,),
        )
        return [str(row["openrouter_hash"]) for row in await cursor.fetchall()]

    async def record_assigned(self, key_hashes: Sequence[str], guardrail_id: str | None) -> None:
        if guardrail_id is None:
            await self._conn.execute(
                "delete from key_guardrails g using api_keys k"
                " where g.key_id = k.id and k.openrouter_hash = any(%s)",
                (list(key_hashes),),
            )
            return
        await self._conn.execute(
            "insert into key_guardrails (key_id, guardrail_id)"
            " select id, %s from api_keys where openrouter_hash = any(%s)"
            " on conflict (key_id) do update set guardrail_id = excluded.guardrail_id,"
            " assigned_at = now()",
            (guardrail_id, list(key_hashes)),
        )

    async def assigned_count(self, guardrail_id: str) -> int:
        """Keys we assigned to the guardrail that OpenRouter still has."""
        cursor = await self._conn.execute(
            "select count(*) as n from key_guardrails g join api_keys k on k.id = g.key_id"
            " where g.guardrail_id = %s and k.openrouter_hash is not null"
            " and k.deleted_at is null",
            (guardrail_id,),
        )
        row = await cursor.fetchone()
        return int(row["n"]) if row else 0  # type: ignore[call-overload]

    async def forget_guardrail(self, guardrail_id: str) -> None:
        await self._conn.execute(
            "delete from key_guardrails where guardrail_id = %s", (guardrail_id,)
        )

    async def daily_capped(
        self, *, since: datetime, until: datetime, limit: int
    ) -> list[dict[str, Any]]:
        """The users whose events reported in [since, until) cost at or over their tier's daily
        cap, highest spend first: one range of the day's events (usage_events_by_occurred_at,
        schema 0024), summed per user; only sums at or over the smallest cap are joined to
        their user's tier."""
        cursor = await self._conn.execute(
            "select d.user_id, u.tier, d.spent_usd as spent_today_usd, t.daily_cap_usd"
            " from (select e.user_id, sum(e.cost_usd) as spent_usd from usage_events e"
            "  where e.occurred_at >= %(since)s and e.occurred_at < %(until)s"
            "  group by e.user_id"
            "  having sum(e.cost_usd) >="
            "   (select min(daily_cap_usd) from subscription_tiers)) d"
            " join users u on u.user_id = d.user_id"
            " join subscription_tiers t on t.tier = u.tier"
            " where t.daily_cap_usd is not null and d.spent_usd >= t.daily_cap_usd"
            " order by d.spent_usd desc, d.user_id limit %(limit)s",
            {"since": since, "until": until, "limit": limit},
        )
        return list(await cursor.fetchall())


def _policy(row: Any) -> TierPolicy:
    models, providers = row["allowed_models"], row["allowed_providers"]
    return TierPolicy(
        tier=str(row["tier"]),
        daily_cap_usd=row["daily_cap_usd"],
        allowed_models=None if models is None else tuple(models),
        allowed_providers=None if providers is None else tuple(providers),
        guardrail_id=row["guardrail_id"],
    )


class TierPolicyService:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _guardrail_name(self, tier: str) -> str:
        return f"{self._runtime.settings.openrouter_key_name_prefix}-tier-{tier}"

    async def policies(self) -> list[TierPolicy]:
        async with self._runtime.database().connection() as conn:
            return await TierPolicyRepository(conn).policies()

    async def set_policy(
        self,
        tier: str,
        *,
        daily_cap_usd: Decimal | None,
        allowed_models: Sequence[str] | None,
        allowed_providers: Sequence[str] | None,
        actor: str,
        reason: str | None,
        request_id: str | None,
    ) -> TierPolicy:
        """The tier's policy, in force at OpenRouter: its guardrail made, changed or deleted
        now; the tier's keys assigned to a new guardrail by a job on the work queue.

        The policy and its audit row are written first, the tier's row locked, and OpenRouter
        told under that lock, in the same transaction: input the database refuses changes
        nothing at OpenRouter, two changes of one tier run one after the other, and a failure
        at OpenRouter undoes the write (the reconciler sets a guardrail changed meanwhile back
        to what the database says)."""
        async with self._runtime.database().connection() as conn, conn.transaction():
            policies = TierPolicyRepository(conn)
            before = await policies.policy(tier, lock=True)
            if before is None:
                raise NotFound(f"no tier {tier}", code="tier_not_found")
            wanted = TierPolicy(
                tier=tier,
                daily_cap_usd=daily_cap_usd,
                allowed_models=_distinct(allowed_models),
                allowed_providers=_distinct(allowed_providers),
                guardrail_id=before.guardrail_id,
            )
            await policies.write(wanted)
            await AuditRepository(conn).append(
                actor=actor,
                action="tier.policy_changed",
                target=f"tier:{tier}",
                reason=reason,
                request_id=request_id,
                details={"from": before.audited(), "to": wanted.audited()},
            )
            guardrail_id = await self._enforce(wanted)
            after = replace(wanted, guardrail_id=guardrail_id)
            await policies.write(after)
            if before.guardrail_id is not None and guardrail_id != before.guardrail_id:
                await policies.forget_guardrail(before.guardrail_id)  # deleted: keys are free
            job_id = None
            if guardrail_id is not None:
                job_id = await self._enqueue_assignments(conn, tier, actor)
        if job_id is not None:
            await self._assign_now(job_id)
        return after

    async def _assign_now(self, job_id: uuid.UUID) -> None:
        """Work the tier's assignment job here for TIER_POLICY_REQUEST_BUDGET_S, as the
        emergency request does its own: a tier of 100,000 keys is assigned before the answer
        instead of at the next minute's lanes, which finish whatever is left."""
        budget_s = self._runtime.settings.tier_policy_request_budget_s
        async with self._runtime.database().connection() as conn:
            job = await WorkQueueRepository(conn).get_job(job_id)
        if job is None or budget_s <= 0:
            return
        settings = QueueSettings.of(self._runtime.settings, time_budget_s=budget_s)
        await work_through(
            self._runtime, job.id, tier_guardrail_handler(self._runtime, job), settings
        )

    async def _enforce(self, policy: TierPolicy) -> str | None:
        """Make OpenRouter's guardrail say the policy; its id (None: no policy, none kept)."""
        client = self._runtime.openrouter()
        if policy.empty:
            if policy.guardrail_id is not None:
                with contextlib.suppress(OpenRouterNotFound):  # gone already: as wanted
                    await client.delete_guardrail(policy.guardrail_id)
            return None
        fields: dict[str, Any] = {
            "limit_usd": policy.daily_cap_usd,
            "reset_interval": None if policy.daily_cap_usd is None else "daily",
            "allowed_models": None
            if policy.allowed_models is None
            else list(policy.allowed_models),
            "allowed_providers": (
                None if policy.allowed_providers is None else list(policy.allowed_providers)
            ),
        }
        if policy.guardrail_id is not None:
            try:
                updated = await client.update_guardrail(policy.guardrail_id, **fields)
                return updated.id
            except OpenRouterNotFound:
                pass  # deleted behind our back: made again below, and the keys assigned again
        created = await client.create_guardrail(
            name=self._guardrail_name(policy.tier),
            description=f"openrouter-agent policy of tier {policy.tier}",
            **fields,
        )
        return created.id

    async def repair(self, *, actor: str) -> dict[str, list[str]]:
        """The reconciler's part: every tier's guardrail as its policy says (made again when it
        vanished, updated when edited behind our back), guardrails under our prefix that no
        tier names deleted, and keys whose recorded guardrail is not their tier's assigned
        again through the tier's job. What it repaired, by kind."""
        client = self._runtime.openrouter()
        prefix = self._guardrail_name("")
        at_openrouter = {g.id: g for g in await client.list_all_guardrails()}
        repaired: dict[str, list[str]] = {"recreated": [], "updated": [], "deleted": []}
        repaired["reassigned"] = []
        for policy in await self.policies():
            if policy.empty:
                continue
            remote = None if policy.guardrail_id is None else at_openrouter.get(policy.guardrail_id)
            if remote is None:  # vanished at OpenRouter (or never made): made again
                made = await self._enforce(replace(policy, guardrail_id=None))
                async with self._runtime.database().connection() as conn, conn.transaction():
                    policies = TierPolicyRepository(conn)
                    await policies.write(replace(policy, guardrail_id=made))
                    if policy.guardrail_id is not None:
                        await policies.forget_guardrail(policy.guardrail_id)
                repaired["recreated"].append(policy.tier)
            else:
                if not _says(remote, policy):
                    await self._enforce(policy)
                    repaired["updated"].append(policy.tier)
                if await self._lost_assignments(remote.id):
                    repaired["reassigned"].append(policy.tier)
            async with self._runtime.database().connection() as conn, conn.transaction():
                if await TierPolicyRepository(conn).keys_to_assign(tier=policy.tier, owner=None):
                    await self._enqueue_assignments(conn, policy.tier, actor)
                    if policy.tier not in repaired["reassigned"]:
                        repaired["reassigned"].append(policy.tier)
        named = {p.guardrail_id for p in await self.policies() if p.guardrail_id is not None}
        for guardrail in at_openrouter.values():
            if guardrail.name.startswith(prefix) and guardrail.id not in named:
                with contextlib.suppress(OpenRouterNotFound):
                    await client.delete_guardrail(guardrail.id)
                repaired["deleted"].append(guardrail.id)
        if any(repaired.values()):
            async with self._runtime.database().connection() as conn:
                await AuditRepository(conn).append(
                    actor=actor,
                    action="reconcile.repaired_tier_policies",
                    target="tiers",
                    details=repaired,
                )
        return repaired

    async def _lost_assignments(self, guardrail_id: str) -> bool:
        """Whether OpenRouter holds fewer keys on the guardrail than we assigned to it (some
        were unassigned or moved behind our back): then those records are dropped, and the
        tier's job assigns every key again (an assignment repeated changes nothing)."""
        async with self._runtime.database().connection() as conn:
            expected = await TierPolicyRepository(conn).assigned_count(guardrail_id)
        if expected == 0:
            return False
        held = await self._runtime.openrouter().count_key_assignments(guardrail_id)
        if held >= expected:
            return False
        async with self._runtime.database().connection() as conn:
            await TierPolicyRepository(conn).forget_guardrail(guardrail_id)
        return True

    async def _enqueue_assignments(self, conn: Connection, tier: str, actor: str) -> uuid.UUID:
        hashes = await TierPolicyRepository(conn).keys_to_assign(tier=tier, owner=None)
        queue = WorkQueueRepository(conn)
        job, _ = await queue.ensure_job(
            TIER_GUARDRAIL_KIND,
            f"{tier}:{uuid.uuid4()}",
            created_by=actor,
            params={"tier": tier},
            priority=TIER_GUARDRAIL_PRIORITY,
        )
        pages = [hashes[i : i + ASSIGN_PAGE] for i in range(0, len(hashes), ASSIGN_PAGE)]
        await queue.enqueue(
            job.id,
            [NewItem(f"page:{n}", payload={"key_hashes": page}) for n, page in enumerate(pages)],
        )
        await queue.finish_if_drained(job.id)  # a tier with no keys: done as it is made
        return job.id

    async def guard_owner(self, owner: Owner) -> int:
        """Assign the owner's keys that may spend to their tier's guardrail (or free them when
        the tier has none): at a key's activation and a user's move to another tier. The number
        of keys changed at OpenRouter."""
        async with self._runtime.database().connection() as conn:
            policies = TierPolicyRepository(conn)
            guardrail_id = await policies.guardrail_of_owner(owner.key)
            hashes = await policies.keys_to_assign(tier=None, owner=owner.key)
        if not hashes:
            return 0
        await self._assign(guardrail_id, hashes, owner_moved=True)
        return len(hashes)

    async def _assign(
        self, guardrail_id: str | None, hashes: list[str], *, owner_moved: bool
    ) -> None:
        client = self._runtime.openrouter()
        if guardrail_id is not None:
            await client.assign_keys_to_guardrail(guardrail_id, hashes)
        elif owner_moved:
            await self._unassign(hashes)
        async with self._runtime.database().connection() as conn:
            await TierPolicyRepository(conn).record_assigned(hashes, guardrail_id)

    async def daily_capped(
        self, *, limit: int, now: datetime | None = None
    ) -> tuple[datetime, list[dict[str, Any]]]:
        """The users held by their tier's daily cap today (UTC), by what they reported since
        midnight, highest spend first; and when the day's caps reset (the next UTC midnight)."""
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        since = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        resets_at = since + timedelta(days=1)
        async with self._runtime.database().connection() as conn:
            rows = await TierPolicyRepository(conn).daily_capped(
                since=since, until=resets_at, limit=limit
            )
        return resets_at, rows

    async def _unassign(self, hashes: list[str]) -> None:
        """Free keys from the guardrail they were recorded on (a user moved to a tier with none)."""
        async with self._runtime.database().connection() as conn:
            cursor = await conn.execute(
                "select g.guardrail_id, k.openrouter_hash from key_guardrails g"
                " join api_keys k on k.id = g.key_id where k.openrouter_hash = any(%s)",
                (hashes,),
            )
            rows = await cursor.fetchall()
        by_guardrail: dict[str, list[str]] = {}
        for row in rows:
            held = by_guardrail.setdefault(str(row["guardrail_id"]), [])
            held.append(str(row["openrouter_hash"]))
        client = self._runtime.openrouter()
        for guardrail_id, assigned in by_guardrail.items():
            with contextlib.suppress(OpenRouterNotFound):  # gone: nothing holds the keys
                await client.unassign_keys_from_guardrail(guardrail_id, assigned)


def tier_guardrail_handler(runtime: Runtime, job: WorkJob) -> ItemHandler:
    """An item is a page of the tier's key hashes, assigned to the tier's guardrail as it is
    when the page runs (a policy taken away since: nothing to assign)."""
    service = TierPolicyService(runtime)
    tier = str(job.params.get("tier"))

    async def assign(claimed: ClaimedItem) -> str:
        hashes = [str(h) for h in (claimed.payload or {}).get("key_hashes", [])]
        async with runtime.database().connection() as conn:
            policy = await TierPolicyRepository(conn).policy(tier)
        if policy is None or policy.guardrail_id is None or not hashes:
            return "nothing_to_assign"
        await service._assign(policy.guardrail_id, hashes, owner_moved=False)
        return "assigned"

    return assign


def _says(guardrail: Guardrail, policy: TierPolicy) -> bool:
    """Whether OpenRouter's guardrail enforces exactly the policy."""
    return (
        guardrail.limit_usd == policy.daily_cap_usd
        and guardrail.reset_interval == (None if policy.daily_cap_usd is None else "daily")
        and set(guardrail.allowed_models or ()) == set(policy.allowed_models or ())
        and set(guardrail.allowed_providers or ()) == set(policy.allowed_providers or ())
    )


def _distinct(names: Sequence[str] | None) -> tuple[str, ...] | None:
    # OpenRouter keeps a list once per name: a repeated one would read as drift forever.
    return None if names is None else tuple(dict.fromkeys(names))
