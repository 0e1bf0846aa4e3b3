"""What each of an owner's keys may spend at OpenRouter, kept within the owner's monthly budget
while the keys spend. The one mechanism for every change of a key's limit or enabled state.

The budget holds if, at every moment, the owner's settled spend this month plus what each key
in play may still be billed for (its *commitment*) is within the budget in force. Three rules
keep it so whatever runs at the same time:

- A lowering (a smaller limit, a disable) is sent to OpenRouter first and recorded after. The
  limit the key had before stays its *ceiling* for the settlement time: OpenRouter bills a
  request when it completes, so requests admitted under the old limit may still be billed.
- A raise (a larger limit, an enable) is recorded first and sent after, under the owner's lease,
  checked just before. So the database never says less than OpenRouter allows.
- Budget goes to a key only out of what no other key can still spend: a key's commitment is
  the largest of its limit (if enabled), its ceiling (while it runs) and its usage (read now).

A key leaves play when it is settled: disabled, its ceiling over, its final usage read, then
deleted at OpenRouter. Settled spend is final and exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from uuid import UUID

from shared.errors import Conflict
from shared.keys.domain import Checkpoint, Owner, current_period, no_checkpoint
from shared.keys.repository import KeyRecord
from shared.keys.store import KeyStore
from shared.money import MICRO_DOLLAR
from shared.openrouter.client import UNSET, _Unset
from shared.openrouter.errors import OpenRouterError, OpenRouterNotFound
from shared.openrouter.models import ApiKey
from shared.runtime import Runtime

UNLIMITED = Decimal("Infinity")


@dataclass
class OwnerLease:
    """The right, for a while, to change one owner's keys at OpenRouter; and who for."""

    owner: str
    holder: UUID
    actor: str = "service"
    reason: str | None = None
    request_id: str | None = None
    # Set when this lease found the owner's current key gone at OpenRouter: the lease's
    # holder replaces it before letting go, unless it was asked to stop the key.
    lost_current: bool = False


class LeaseLost(Conflict):
    """Another invocation took the owner over (ours ran out): stop before raising anything."""

    code = "operation_in_progress"


class KeyVanished(Exception):
    """OpenRouter does not know a key the database calls live (deleted behind our back)."""

    def __init__(self, key: KeyRecord) -> None:
        super().__init__(f"key {key.id} is gone at OpenRouter")
        self.key = key


def down_to_micro(amount: Decimal) -> Decimal:
    return amount.quantize(MICRO_DOLLAR, rounding=ROUND_DOWN)


@dataclass(frozen=True, slots=True)
class Budget:
    """The owner's month: the budget in force and what resets gave back."""

    budget: Decimal | None  # None: unlimited
    adjustments: Decimal  # negative: given back by resets
    settled: Decimal  # final spend of keys out of play this month

    @property
    def total(self) -> Decimal:
        """What the owner may spend this month in all (resets included)."""
        assert self.budget is not None
        return self.budget - self.adjustments

    def room(self, committed_elsewhere: Decimal) -> Decimal:
        """The limit a key may have when the other keys are committed to
        `committed_elsewhere` (settled spend included)."""
        assert self.budget is not None
        if committed_elsewhere == UNLIMITED:
            return Decimal(0)  # another key may still spend without a limit
        return max(down_to_micro(self.total - committed_elsewhere), Decimal(0))


class KeyLimits:
    def __init__(
        self, runtime: Runtime, store: KeyStore, *, checkpoint: Checkpoint = no_checkpoint
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._checkpoint = checkpoint

    @property
    def settle_s(self) -> float:
        return self._runtime.billing_settle_s

    # ----- the protocol: lower first at OpenRouter, raise first in the database -----

    async def lower(
        self,
        key: KeyRecord,
        *,
        limit: Decimal | _Unset | None = UNSET,
        disable: bool = False,
        lease: OwnerLease | None = None,
        action: str = "key.limit_lowered",
    ) -> KeyRecord:
        """Lower the key's limit or disable it; safe without the lease (it only reduces)."""
        assert key.openrouter_hash is not None
        try:
            remote = await self._runtime.openrouter().update_key(
                key.openrouter_hash,
                limit=limit,
                disabled=True if disable else UNSET,
            )
        except OpenRouterNotFound as gone:
            raise KeyVanished(key) from gone
        period = current_period()
        async with self._store.transaction() as (keys, audit):
            lowered = await keys.record_lowered(
                key.id,
                settle_s=self.settle_s,
                limit_usd=None if isinstance(limit, _Unset) else limit,
                set_limit=not isinstance(limit, _Unset),
                disable=disable,
                period=period if not isinstance(limit, _Unset) else None,
                usage_usd=remote.usage_monthly,
            )
            await keys.observe(key.id, usage_usd=remote.usage_monthly, period=period)
            await audit.append(
                actor=lease.actor if lease else "service",
                action=action,
                target=f"key:{key.id}",
                reason=lease.reason if lease else None,
                request_id=lease.request_id if lease else None,
                fingerprint=key.fingerprint,
                details={
                    "limit_usd": lowered.limit_usd,
                    "previous_limit_usd": key.limit_usd,
                    "disabled": lowered.disabled,
                    "usage_usd": remote.usage_monthly,
                    "ceiling_until": None
                    if lowered.ceiling_until is None
                    else lowered.ceiling_until.isoformat(),
                },
            )
        return lowered

    async def raise_(
        self,
        lease: OwnerLease,
        key: KeyRecord,
        *,
        limit: Decimal | None,
        enable: bool = False,
        send: bool = True,
        action: str = "key.limit_applied",
    ) -> KeyRecord:
        """Raise the key's limit (or enable it): recorded first, then sent, under the lease.
        With send=False it stays pending: an enable is sent only once the other keys were
        brought in line with it (by tend, then sync(enable=True))."""
        assert key.openrouter_hash is not None
        period = current_period()
        async with self._store.transaction() as (keys, audit):
            if not await keys.renew_owner(
                lease.owner, lease.holder, lease_s=self._runtime.settings.key_operation_lease_s
            ):
                raise LeaseLost(f"lost the lease on {lease.owner}", headers={"Retry-After": "1"})
            raised = await keys.record_raise(key.id, limit_usd=limit, enable=enable, period=period)
            await audit.append(
                actor=lease.actor,
                action=action,
                target=f"key:{key.id}",
                reason=lease.reason,
                request_id=lease.request_id,
                fingerprint=key.fingerprint,
                details={
                    "limit_usd": limit,
                    "previous_limit_usd": key.limit_usd,
                    "enabled": enable or not raised.disabled,
                },
            )
        if send:
            await self.sync(raised, enable=enable)
        return raised

    async def sync(self, key: KeyRecord, *, enable: bool = False) -> None:
        """Send OpenRouter what the database recorded for the key (a raise not yet sent).
        Only an enable sends disabled=false: a plain raise must never undo an emergency's
        block that landed meanwhile."""
        assert key.openrouter_hash is not None
        try:
            remote = await self._runtime.openrouter().update_key(
                key.openrouter_hash,
                limit=key.limit_usd,
                disabled=False if enable and not key.disabled else UNSET,
            )
        except OpenRouterNotFound as gone:
            raise KeyVanished(key) from gone
        async with self._store.read() as keys:
            await keys.mark_synced(key.id)
            await keys.observe(key.id, usage_usd=remote.usage_monthly, period=current_period())

    async def block(self, key: KeyRecord) -> KeyRecord:
        """Disable the key and read it back (an emergency's first step; no lease needed)."""
        assert key.openrouter_hash is not None
        client = self._runtime.openrouter()
        try:
            await client.update_key(key.openrouter_hash, disabled=True)
            confirmed = await client.get_key(key.openrouter_hash)
        except OpenRouterNotFound as gone:
            raise KeyVanished(key) from gone
        if not confirmed.disabled:
            raise OpenRouterError("OpenRouter did not confirm the key is disabled")
        async with self._store.read() as keys:
            blocked = await keys.record_lowered(
                key.id, settle_s=self.settle_s, disable=True, usage_usd=confirmed.usage_monthly
            )
            await keys.observe(key.id, usage_usd=confirmed.usage_monthly, period=current_period())
        return blocked

    async def usage(self, key: KeyRecord) -> Decimal:
        """The key's spend this month as OpenRouter counts it now (and noted as evidence)."""
        assert key.openrouter_hash is not None
        try:
            remote = await self._runtime.openrouter().get_key(key.openrouter_hash)
        except OpenRouterNotFound as gone:
            raise KeyVanished(key) from gone
        await self.observed(key, remote)
        return remote.usage_monthly

    async def observed(self, key: KeyRecord, remote: ApiKey) -> None:
        async with self._store.read() as keys:
            await keys.observe(key.id, usage_usd=remote.usage_monthly, period=current_period())

    # ----- what the owner may spend -----

    async def budget(self, owner: Owner) -> Budget:
        period = current_period()
        async with self._store.read() as keys:
            return Budget(
                budget=await self._store.budget_of(keys, owner),
                adjustments=await keys.adjustments_of(owner.user_id, period),
                settled=await keys.settled_spend(owner.key, period),
            )

    async def commitment(self, key: KeyRecord) -> Decimal:
        """The most this key may still end up having spent this month."""
        now = datetime.now(UTC)
        ceiling = key.ceiling_usd if key.ceiling_until and key.ceiling_until > now else None
        allowed = None if key.disabled else (UNLIMITED if key.limit_usd is None else key.limit_usd)
        bound = max((x for x in (ceiling, allowed) if x is not None), default=Decimal(0))
        if key.state == "pending" or key.openrouter_hash is None:
            return bound  # not made yet: it will be made with at most this limit
        if bound == UNLIMITED or (key.disabled and ceiling is not None):
            # Disabled: nothing new is admitted, and the ceiling covers both what it had been
            # billed when disabled and what was admitted before.
            return bound
        # It may have been billed beyond its limit for requests admitted under an earlier one.
        return max(bound, await self.usage(key))

    async def committed_elsewhere(
        self, budget: Budget, in_play: list[KeyRecord], *, besides: set[UUID]
    ) -> Decimal:
        total = budget.settled
        for key in in_play:
            if key.id not in besides:
                total += await self.commitment(key)
        return total

    # ----- keys that leave play -----

    async def vanished(self, lease: OwnerLease, key: KeyRecord) -> KeyRecord:
        """A key OpenRouter no longer has: out of play, charged with the best evidence of its
        spend (its usage last seen at OpenRouter, or the ledger's), never with its limit."""
        spent, source = await self._evidence_of_spend(key)
        period = current_period()
        lease.lost_current = lease.lost_current or key.state == "current"
        async with self._store.transaction() as (keys, audit):
            await keys.mark_revoked(key.id)
            await keys.record_final(key.id, usage_usd=spent, period=period, source=source)
            gone = await keys.mark_deleted(key.id)
            await audit.append(
                actor=lease.actor,
                action="key.missing_at_openrouter",
                target=f"key:{key.id}",
                reason=lease.reason,
                request_id=lease.request_id,
                fingerprint=key.fingerprint,
                details={
                    "was": key.state,
                    "final_usage_usd": spent,
                    "final_usage_source": source,
                },
            )
        return gone

    async def _evidence_of_spend(self, key: KeyRecord) -> tuple[Decimal, str]:
        period = current_period()
        candidates: list[tuple[Decimal, str]] = []
        if key.observed_usage_usd is not None and key.observed_period == period:
            candidates.append((key.observed_usage_usd, "observed"))
        if key.user_id is not None:
            async with self._store.read() as keys:
                reported = await keys.ledger_spent(key.user_id, period)
                others = await keys.settled_spend(key.owner, period)
                for other in await keys.keys_in_play(key.owner):
                    if other.id != key.id and other.observed_period == period:
                        others += other.observed_usage_usd or 0
            if reported > 0:
                candidates.append((max(reported - others, Decimal(0)), "ledger"))
        if not candidates:
            return Decimal(0), "none"
        return max(candidates, key=lambda candidate: candidate[0])

    async def settle(self, lease: OwnerLease, key: KeyRecord) -> KeyRecord:
        """A revoked key: once nothing more can be billed to it, read its final usage, then
        delete it at OpenRouter. Before that, make sure it is disabled."""
        if key.openrouter_hash is None or key.deleted_at is not None:
            return key
        try:
            if not key.disabled:
                key = await self.lower(key, disable=True, lease=lease, action="key.disabled")
            if key.ceiling_until is not None and key.ceiling_until > datetime.now(UTC):
                return key  # requests admitted earlier may still be billed to it
            self._checkpoint("before_settle")
            final = await self.usage(key)
        except KeyVanished:
            return await self.vanished(lease, key)
        async with self._store.read() as keys:
            settled = await keys.record_final(
                key.id, usage_usd=final, period=current_period(), source="openrouter"
            )
        self._checkpoint("after_final_usage")
        await self._runtime.openrouter().delete_key(settled.openrouter_hash or "")
        async with self._store.transaction() as (keys, audit):
            deleted = await keys.mark_deleted(key.id)
            await audit.append(
                actor=lease.actor,
                action="key.settled",
                target=f"key:{key.id}",
                reason=lease.reason,
                request_id=lease.request_id,
                fingerprint=key.fingerprint,
                details={"final_usage_usd": settled.final_usage_usd},
            )
        return deleted

    async def end_grace(self, lease: OwnerLease, key: KeyRecord) -> KeyRecord:
        """A previous key whose grace period is over: it stops working now."""
        if not key.disabled and key.openrouter_hash is not None:
            try:
                key = await self.lower(key, disable=True, lease=lease, action="key.grace_ended")
            except KeyVanished:
                return await self.vanished(lease, key)
        async with self._store.read() as keys:
            return await keys.mark_revoked(key.id)

    # ----- the owner as a whole -----

    async def tend(self, lease: OwnerLease) -> KeyRecord | None:
        """Bring the owner's keys in line with the budget now: end grace periods that are over,
        settle keys nothing more can be billed to, then give the current key what is left."""
        now = datetime.now(UTC)
        async with self._store.read() as keys:
            in_play = await keys.keys_in_play(lease.owner)
        if not in_play:
            return None
        await self._weigh_resets(lease, in_play)
        for key in in_play:
            if key.state == "previous" and key.grace_until is not None and key.grace_until <= now:
                key = await self.end_grace(lease, key)
            if key.state == "revoked":
                await self.settle(lease, key)
        return await self.rebalance(lease)

    async def _weigh_resets(self, lease: OwnerLease, in_play: list[KeyRecord]) -> None:
        """Set what each new reset gives back: at most what OpenRouter counted as spent this
        month and not given back yet, so a reset makes the whole budget available again,
        never more, whatever the ledger said."""
        owner = Owner.parse(lease.owner)
        if owner.user_id is None:
            return
        period = current_period()
        async with self._store.read() as keys:
            unweighed = await keys.unweighed_adjustments(owner.user_id, period)
            if not unweighed:
                return
            spent = await keys.settled_spend(owner.key, period)
            given_back = await keys.adjustments_of(owner.user_id, period)
        for key in in_play:
            if key.openrouter_hash is not None and key.deleted_at is None:
                try:
                    spent += await self.usage(key)
                except KeyVanished:
                    spent += key.observed_usage_usd or 0
        async with self._store.read() as keys:
            for adjustment_id, amount in unweighed:
                effect = amount
                if amount < 0:
                    effect = max(amount, -max(spent + given_back, Decimal(0)))
                    given_back += effect
                await keys.weigh_adjustment(adjustment_id, effect)

    async def rebalance(self, lease: OwnerLease) -> KeyRecord | None:
        """The current key's limit: what the budget leaves once every other key's commitment
        is counted. Keys in their grace period lose their allowance first when the budget
        shrinks below what they could still spend."""
        owner = Owner.parse(lease.owner)
        for _ in range(3):
            try:
                return await self._rebalance(lease, owner)
            except KeyVanished as gone:
                await self.vanished(lease, gone.key)
        return await self._rebalance(lease, owner)

    async def _rebalance(self, lease: OwnerLease, owner: Owner) -> KeyRecord | None:
        async with self._store.read() as keys:
            in_play = await keys.keys_in_play(owner.key)
        current = next((k for k in in_play if k.state == "current"), None)
        budget = await self.budget(owner)
        if budget.budget is None:
            await self._sync_others(in_play, current)
            if (
                current is not None
                and current.openrouter_hash is not None
                and (current.limit_usd is not None or current.openrouter_sync_pending)
            ):
                return await self.raise_(lease, current, limit=None)
            return current
        besides = set() if current is None else {current.id}
        elsewhere = await self.committed_elsewhere(budget, in_play, besides=besides)
        in_grace = [
            k for k in in_play if k.state == "previous" and not k.disabled and k.openrouter_hash
        ]
        spent_by_current = Decimal(0)
        if in_grace and current is not None and current.openrouter_hash is not None:
            spent_by_current = await self.usage(current)
        if in_grace and elsewhere + spent_by_current > budget.total:
            # The budget shrank below what is spent plus what keys in their grace period could
            # still spend: they lose their allowance first.
            for key in in_play:
                if key.state == "previous" and not key.disabled and key.openrouter_hash:
                    spent = await self.usage(key)
                    if key.limit_usd is None or key.limit_usd > spent:
                        await self.lower(key, limit=spent, lease=lease)
            async with self._store.read() as keys:
                in_play = await keys.keys_in_play(owner.key)
            elsewhere = await self.committed_elsewhere(budget, in_play, besides=besides)
        if current is None or current.openrouter_hash is None:
            await self._sync_others(in_play, current)
            return current
        target = budget.room(elsewhere)
        # Lowerings first, raises last: at no moment may two keys hold the same budget.
        if current.limit_usd is None or target < current.limit_usd:
            current = await self.lower(
                current, limit=target, lease=lease, action="key.limit_applied"
            )
        await self._sync_others(in_play, current)
        if current.limit_usd is None or target > current.limit_usd:
            return await self.raise_(lease, current, limit=target)
        if current.openrouter_sync_pending:
            await self.sync(current)
        if current.limit_period != current_period():
            async with self._store.read() as keys:
                await keys.set_limit_period(current.id, current_period())
        return current

    async def _sync_others(self, in_play: list[KeyRecord], current: KeyRecord | None) -> None:
        """Send OpenRouter raises of other keys recorded but not yet sent (after a crash)."""
        for key in in_play:
            if (
                key.openrouter_sync_pending
                and (current is None or key.id != current.id)
                and key.openrouter_hash is not None
                and key.state in ("previous", "current")
            ):
                await self.sync(key)

    async def next_attention(self, owner: str) -> datetime | None:
        """When the owner's keys next need tending: a grace period or a ceiling ending."""
        now = datetime.now(UTC)
        async with self._store.read() as keys:
            in_play = await keys.keys_in_play(owner)
        moments: list[datetime] = []
        for key in in_play:
            if key.state == "previous" and key.grace_until is not None:
                moments.append(key.grace_until)
            if key.state != "current" and key.ceiling_until and key.ceiling_until > now:
                moments.append(key.ceiling_until)
            if key.state == "revoked" and key.deleted_at is None:
                moments.append(
                    key.ceiling_until if key.ceiling_until and key.ceiling_until > now else now
                )
            if key.openrouter_sync_pending:
                moments.append(now + timedelta(seconds=30))
        return min(moments, default=None)
