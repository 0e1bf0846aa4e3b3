"""The books from OpenRouter's own counters: a job on the work queue every 15 minutes.

Services report their users' spend (POST /api/usage/log), and under-report in practice: a call
that timed out on the caller's side is still billed, an agent nobody wired never reports.
OpenRouter counts every key's spend this UTC month (usage_monthly, in its listing, 100 keys a
page). The sync reads that listing, a page per item, so that 100,000 keys (1,000 pages) are
read by as many invocations as the work lanes run, each within its time budget; for each page
it writes each of our keys' counter and recomputes the month's count of the users those keys
belong to (schema/migrations/0020_books_from_openrouter.sql). Its last item (phase 1, once every
page was read) recomputes the users whose every key was deleted this month, on no page.
What OpenRouter counted that no reported event explains is the books' unreported spend, which
thresholds, alerts, forecasts and reports count.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.jobs import listing
from shared.jobs.queue import ItemHandler, QueueSettings, work_through
from shared.jobs.repository import ClaimedItem, NewItem, WorkJob, WorkQueueRepository
from shared.keys.domain import current_period
from shared.keys.repository import KeyRepository
from shared.money import usd_text
from shared.observability import logger
from shared.runtime import Runtime
from shared.usage.repository import UsageRepository

KIND = "usage_sync"
PRIORITY = 2  # after the month's rotation and restore, before the daily reconcile
ACTOR = "job:usage-sync"
CONCLUDE = 1  # after the pages (listing.PAGES, 0)
_USERS_A_STATEMENT = 500


def slot_of(moment: datetime) -> str:
    """The run's name: its minute, so that a cron delivered twice makes one run, and a run
    asked for now (`jobs run`) is a new one even after the quarter hour's."""
    return moment.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M")


async def start(runtime: Runtime, *, now: datetime | None = None) -> tuple[WorkJob, bool]:
    """This slot's sync job, made with its pages if new; (job, created)."""
    moment = now or datetime.now(UTC)
    async with runtime.database().connection() as conn, conn.transaction():
        queue = WorkQueueRepository(conn)
        job, created = await queue.ensure_job(
            KIND,
            slot_of(moment),
            created_by=ACTOR,
            priority=PRIORITY,
            params={"period": current_period(moment).isoformat()},
        )
        if created:
            known = await KeyRepository(conn).count_at_openrouter()
            pages = listing.first_pages(known)
            await queue.enqueue(
                job.id,
                [*pages, NewItem("conclude", CONCLUDE)],
            )
            logger.info("usage sync job created", extra={"keys": known, "pages": len(pages)})
    return job, created


def handler(runtime: Runtime, job: WorkJob) -> ItemHandler:
    """A page: each listed key's monthly counter into the books; the conclusion: the users
    whose keys were deleted this month."""
    period = str(job.params.get("period"))

    async def page(claimed: ClaimedItem) -> dict[str, Any]:
        if current_period().isoformat() != period:
            return {"skipped": "the month ended: its counters are the next month's now"}
        offset = int(claimed.payload["offset"])
        listed = await runtime.openrouter().list_keys(
            offset=offset, include_disabled=True, include_expired=True
        )
        counters = [{"hash": k.hash, "usage_usd": usd_text(k.usage_monthly)} for k in listed]
        async with runtime.database().connection() as conn, conn.transaction():
            changed = await UsageRepository(conn).sync_counted(period, counters)
            # each key's usage as seen now: the evidence of its spend should it vanish later
            await KeyRepository(conn).observe_many(
                {k.hash: k.usage_monthly for k in listed}, current_period()
            )
            await WorkQueueRepository(conn).enqueue(job.id, listing.after(offset, len(listed)))
        return {"keys": len(listed), "users_changed": changed}

    async def conclude(_: ClaimedItem) -> dict[str, Any]:
        async with runtime.database().connection() as conn:
            users = await UsageRepository(conn).users_on_no_page(period)
        changed = 0
        for start in range(0, len(users), _USERS_A_STATEMENT):
            async with runtime.database().connection() as conn, conn.transaction():
                changed += await UsageRepository(conn).sync_counted(
                    period, [], users=users[start : start + _USERS_A_STATEMENT]
                )
        return {"users_rechecked": len(users), "users_changed": changed}

    async def handle(claimed: ClaimedItem) -> dict[str, Any]:
        return await (conclude(claimed) if claimed.item == "conclude" else page(claimed))

    return handle


async def sync_usage_from_openrouter(runtime: Runtime) -> dict[str, object]:
    """The cron (every 15 minutes): this slot's sync job, worked for the time budget; the work
    lanes read the pages left."""
    job, created = await start(runtime)
    report = await work_through(
        runtime, job.id, handler(runtime, job), QueueSettings.of(runtime.settings)
    )
    return {"slot": job.name, "new": created, "done": report.done, "finished": report.finished}
