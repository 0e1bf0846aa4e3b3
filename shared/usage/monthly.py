"""The monthly job: open the new UTC month and restore every key's full monthly limit.

Nothing is deleted: last month's books stay as they are, and the new month's books start when
its first event arrives. What changes is each key's OpenRouter limit where a rotation, a
downgrade or a reset had set it to part of last month's budget. Most keys are at their full
budget already: OpenRouter resets their usage monthly by itself, so one statement moves them
into the new month without a call. The others become the month's job on the work queue
(created once, named by the period), each restored by one OpenRouter call; the work lanes work
through it until it is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from shared.audit.repository import AuditRepository
from shared.jobs.queue import ItemHandler, QueueSettings, work_through
from shared.jobs.repository import ClaimedItem, WorkJob, WorkQueueRepository
from shared.keys.domain import Owner, current_period
from shared.keys.repository import KeyRepository
from shared.keys.service import KeyLifecycleService
from shared.observability import logger
from shared.runtime import Runtime

KIND = "monthly_restore"
PRIORITY = 5  # before the month's rotation: users wait for their limit
ACTOR = "job:monthly"


@dataclass(frozen=True, slots=True)
class MonthlyRunResult:
    period: date
    status: str  # done, partial or already_done
    keys_rolled_over: int  # already at their full budget: no OpenRouter call
    keys_restored: int  # limit set again at OpenRouter, by this invocation


async def open_period(runtime: Runtime, settings: QueueSettings) -> MonthlyRunResult:
    """Open this month (once), then work its job for the time budget."""
    job, rolled_over = await ensure_month_job(runtime)
    if job.status != "running":
        return MonthlyRunResult(current_period(), "already_done", 0, 0)
    report = await work_through(runtime, job.id, handler(runtime, job), settings)
    return MonthlyRunResult(
        current_period(), "done" if report.finished else "partial", rolled_over, report.done
    )


async def ensure_month_job(runtime: Runtime) -> tuple[WorkJob, int]:
    """This month's job, and how many keys moved into the month without a call (0 unless
    this call created the job)."""
    period = current_period()
    rolled_over = 0
    async with runtime.database().connection() as conn, conn.transaction():
        # One transaction: a concurrent invocation waits here, then finds the job made.
        job, created = await WorkQueueRepository(conn).ensure_job(
            KIND, period.isoformat(), created_by=ACTOR, priority=PRIORITY
        )
        if created:
            keys = KeyRepository(conn)
            rolled_over = await keys.roll_over_unchanged_limits(
                period, system_budget_usd=runtime.settings.system_key_monthly_budget_usd
            )
            to_restore = await keys.enqueue_limits_to_restore(job.id, period)
            await WorkQueueRepository(conn).finish_if_drained(job.id)  # nothing to restore: done
            await AuditRepository(conn).append(
                actor=ACTOR,
                action="usage.period_opened",
                target=f"period:{period.isoformat()}",
                details={"keys_rolled_over": rolled_over, "keys_to_restore": to_restore},
            )
            logger.info(
                "usage period opened",
                extra={"keys_rolled_over": rolled_over, "keys_to_restore": to_restore},
            )
    return job, rolled_over


def handler(runtime: Runtime, job: WorkJob) -> ItemHandler:
    """An item is one owner whose key's limit is set again for the month."""
    lifecycle = KeyLifecycleService(runtime)
    period = job.name

    async def restore(claimed: ClaimedItem) -> None:
        # If another invocation holds the owner, the change is handed to it ('pending'):
        # it applies the new month before it lets go.
        await lifecycle.apply_budget(
            Owner.parse(claimed.item),
            actor=ACTOR,
            request_id=None,
            reason=f"new period {period}",
        )

    return restore
