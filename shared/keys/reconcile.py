"""Reconciling OpenRouter and the database, as a job on the work queue, page by page.

At 100,000 keys OpenRouter's listing is 1,000 pages (100 a page, newest first, by offset), more
than one invocation may take. So a reconcile is a job in three phases, any number of
invocations working it:

0. one item a page (`page/<offset>`): read it, record what each key has spent (the evidence
   should one vanish later), and enqueue the page's orphans: keys under our name prefix the
   database does not know (older than RECONCILE_ORPHAN_MIN_AGE_S, since a create may be in
   flight) or has settled. The pages enqueued at the start cover the keys the database knows,
   with room; a last page that comes back full enqueues the next.
1. `conclude`, once every page was read: the keys the database calls live, made before the job
   began, that no page showed; one item per owner.
   Beside it, `tier-policies`: every tier's guardrail as its policy says (made again, updated,
   orphans under our prefix deleted) and keys not on their tier's guardrail assigned again.
2. `orphan/<hash>`: delete it at OpenRouter; `owner/<owner>`: under the owner's lease, read
   each missing key again (a listing may miss a key that shifted between pages) and write off
   only what OpenRouter really lost, replacing a lost current key. An owner held by another
   invocation is tried again shortly.

The database is read before OpenRouter (the job's start), so a key made meanwhile is unknown or
too young, never live-but-missing. Repeating a reconcile is harmless.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.audit.repository import AuditRepository
from shared.jobs import listing
from shared.jobs.queue import ItemHandler, QueueSettings, RetryItemLater, work_through
from shared.jobs.repository import ClaimedItem, NewItem, WorkJob, WorkQueueRepository
from shared.keys.domain import OwnerOutcome, ReconcileReport, current_period
from shared.keys.repository import KeyRepository
from shared.keys.service import KeyLifecycleService, OwnerBusy
from shared.observability import logger
from shared.openrouter.errors import OpenRouterNotFound
from shared.runtime import Runtime
from shared.usage.tier_policies import TierPolicyService

KIND = "reconcile"
PRIORITY = 1
CONCLUDE, REPAIRS = 1, 2  # after the pages (listing.PAGES, 0)
# Enough for the conclusion to wait out pages retried after an outage (about ten minutes).
MAX_ATTEMPTS = 40


async def start(runtime: Runtime, *, actor: str, name: str | None = None) -> WorkJob:
    """The reconcile job `name` (a fresh one if None), created with its pages if new."""
    async with runtime.database().connection() as conn, conn.transaction():
        queue = WorkQueueRepository(conn)
        job, created = await queue.ensure_job(
            KIND,
            name or f"run-{uuid.uuid4()}",
            created_by=actor,
            priority=PRIORITY,
            max_attempts=MAX_ATTEMPTS,
        )
        if created:
            known = await KeyRepository(conn).count_at_openrouter()
            pages = listing.first_pages(known)
            await queue.enqueue(
                job.id,
                [*pages, NewItem("conclude", CONCLUDE), NewItem("tier-policies", CONCLUDE)],
            )
            logger.info("reconcile job created", extra={"keys": known, "pages": len(pages)})
    return job


def handler(runtime: Runtime, job: WorkJob) -> ItemHandler:
    settings = runtime.settings
    prefix = f"{settings.openrouter_key_name_prefix}-"
    keys = KeyLifecycleService(runtime)
    actor = job.created_by

    async def page(offset: int) -> dict[str, Any]:
        client = runtime.openrouter()
        listed = await client.list_keys(offset=offset, include_disabled=True, include_expired=True)
        ours = [key for key in listed if key.name.startswith(prefix)]
        now = datetime.now(UTC)
        orphans: list[NewItem] = []
        too_young = 0
        async with runtime.database().connection() as conn, conn.transaction():
            repository = KeyRepository(conn)
            await repository.observe_many({k.hash: k.usage_monthly for k in ours}, current_period())
            known = await repository.by_openrouter_names([key.name for key in ours])
            for key in ours:
                record = known.get(key.name)
                if record is not None and (
                    record.state in ("current", "previous", "pending") or record.deleted_at is None
                ):
                    continue  # in play, or settling: its own lifecycle deletes it
                if record is None and (
                    key.created_at is None
                    or (now - key.created_at).total_seconds() < settings.reconcile_orphan_min_age_s
                ):
                    too_young += 1
                    continue
                orphans.append(
                    NewItem(
                        f"orphan/{key.hash}",
                        REPAIRS,
                        {"name": key.name, "database_state": record and record.state},
                    )
                )
            queue = WorkQueueRepository(conn)
            more = listing.after(offset, len(listed))
            await queue.enqueue(job.id, orphans + more)  # a full page: one more, if not there
        return {"hashes": [key.hash for key in ours], "too_young": too_young}

    async def conclude() -> dict[str, Any]:
        async with runtime.database().connection() as conn:
            queue = WorkQueueRepository(conn)
            if await queue.open_items(job.id, prefix="page/"):
                raise RetryItemLater("pages not read yet", after_s=15)
            missing = await KeyRepository(conn).live_keys_not_listed(job.id, before=job.created_at)
            by_owner: dict[str, list[str]] = {}
            for key in missing:
                by_owner.setdefault(key.owner, []).append(str(key.id))
            await queue.enqueue(
                job.id,
                [
                    NewItem(f"owner/{owner}", REPAIRS, {"key_ids": ids})
                    for owner, ids in by_owner.items()
                ],
            )
        return {"owners": len(by_owner)}

    async def orphan(claimed: ClaimedItem) -> dict[str, Any]:
        key_hash = claimed.item.removeprefix("orphan/")
        try:
            await runtime.openrouter().delete_key(key_hash)
        except OpenRouterNotFound:
            return {"deleted": None}  # gone already
        async with runtime.database().connection() as conn, conn.transaction():
            await AuditRepository(conn).append(
                actor=actor,
                action="reconcile.deleted_orphan",
                target=f"openrouter:{key_hash}",
                details=claimed.payload,
            )
        return {"deleted": key_hash}

    async def owner(claimed: ClaimedItem) -> dict[str, Any]:
        owner_key = claimed.item.removeprefix("owner/")
        try:
            repair = await keys.repair_owner(
                owner_key,
                [uuid.UUID(key_id) for key_id in claimed.payload.get("key_ids", [])],
                actor=actor,
                request_id=None,
            )
        except OwnerBusy as busy:
            raise RetryItemLater("owner_busy", after_s=5) from busy
        return {
            "revoked_missing": [str(k) for k in repair.revoked_missing],
            "reprovisioned": [str(k) for k in repair.reprovisioned],
        }

    async def handle(claimed: ClaimedItem) -> dict[str, Any]:
        if claimed.item.startswith("page/"):
            return await page(int(claimed.payload["offset"]))
        if claimed.item == "conclude":
            return await conclude()
        if claimed.item == "tier-policies":
            return await TierPolicyService(runtime).repair(actor=actor)
        if claimed.item.startswith("orphan/"):
            return await orphan(claimed)
        return await owner(claimed)

    return handle


async def report_of(runtime: Runtime, job: WorkJob) -> ReconcileReport:
    """What the job did so far; owners still waiting (held elsewhere) are `skipped`."""
    async with runtime.database().connection() as conn:
        queue = WorkQueueRepository(conn)
        report = ReconcileReport()
        for result in await queue.results(job.id, prefix="page/"):
            report.too_young_to_judge += int(result.get("too_young", 0))
        for result in await queue.results(job.id, prefix="orphan/"):
            if result.get("deleted"):
                report.deleted_at_openrouter.append(str(result["deleted"]))
        for result in await queue.results(job.id, prefix="owner/"):
            report.revoked_missing.extend(uuid.UUID(k) for k in result["revoked_missing"])
            report.reprovisioned.extend(uuid.UUID(k) for k in result["reprovisioned"])
        for item, status, error in await queue.unfinished(job.id):
            name = item.removeprefix("owner/").removeprefix("orphan/")
            target = name if item.startswith("owner/") else f"openrouter:{name}"
            if item.startswith("owner/") and error == "owner_busy" and status != "parked":
                report.skipped.append(OwnerOutcome(owner=target, reason="owner_busy"))
            elif error is not None:  # parked, or waiting for its retry
                report.failed.append(OwnerOutcome(owner=target, reason=error))
    return report


async def reconcile(
    runtime: Runtime, *, actor: str, time_budget_s: float | None = None
) -> tuple[WorkJob, ReconcileReport]:
    """A fresh reconcile, worked here until nothing is left that can be done now (or the time
    budget is spent: the work lanes finish it), and what it did."""
    job = await start(runtime, actor=actor)
    work = handler(runtime, job)
    clock = asyncio.get_running_loop().time
    deadline = None if time_budget_s is None else clock() + time_budget_s
    while True:
        left = 3600.0 if deadline is None else deadline - clock()
        if left <= 0:
            break
        done = await work_through(
            runtime, job.id, work, QueueSettings.of(runtime.settings, time_budget_s=left)
        )
        if done.finished or (done.done == 0 and done.failed == 0):
            break  # done, or only items waiting for a retry (an owner held elsewhere)
    return job, await report_of(runtime, job)
