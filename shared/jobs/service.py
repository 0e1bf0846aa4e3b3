"""The jobs themselves, shared by the HTTP cron routes and the Lambda schedule handlers."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.access.service import AccessService
from shared.jobs.queue import QueueSettings, work_through
from shared.keys import scheduled_rotation
from shared.keys.domain import current_period
from shared.keys.service import KeyLifecycleService
from shared.observability import logger
from shared.runtime import Runtime
from shared.usage.alerts import deliver_alerts as deliver_to_webhook
from shared.usage.monthly import open_period
from shared.usage.reports import ReportRepository


async def prune_rate_limits(runtime: Runtime) -> int:
    """Delete rate-limit windows that have ended; they count nothing any more."""
    pruned = await AccessService(runtime).prune_rate_limits()
    logger.info("rate-limit windows pruned", extra={"pruned": pruned})
    return pruned


async def advance_key_operations(runtime: Runtime) -> int:
    """Resume crashed key operations, finish rotations whose grace period has ended, and bring
    the keys of users whose budget increase ended back to their budget without it."""
    from shared.users.service import BudgetIncreaseService

    advanced = await KeyLifecycleService(runtime).advance_due_operations()
    lapsed = await BudgetIncreaseService(runtime).apply_lapsed()
    logger.info("key operations advanced", extra={"advanced": advanced, "lapsed": lapsed})
    return advanced + lapsed


async def reconcile_keys(runtime: Runtime) -> dict[str, int]:
    """Daily: today's reconcile job (pages of OpenRouter's listing, then repairs), worked for
    the time budget; the work lanes finish it."""
    from shared.keys import reconcile

    today = datetime.now(UTC).date().isoformat()
    job = await reconcile.start(runtime, actor="job:reconcile", name=f"daily-{today}")
    work = reconcile.handler(runtime, job)
    await work_through(runtime, job.id, work, QueueSettings.of(runtime.settings))
    report = await reconcile.report_of(runtime, job)
    summary = {
        "deleted_at_openrouter": len(report.deleted_at_openrouter),
        "revoked_missing": len(report.revoked_missing),
        "reprovisioned": len(report.reprovisioned),
        "too_young_to_judge": report.too_young_to_judge,
        "skipped": len(report.skipped),
        "failed": len(report.failed),
    }
    logger.info("keys reconciled", extra=summary)
    return summary


async def work(runtime: Runtime, *, lane: int = 0) -> dict[str, object]:
    """Every minute, in WORK_LANES lanes: work the most urgent bulk jobs (shared/jobs/worker.py)."""
    from shared.jobs.worker import work as work_lane

    report = await work_lane(runtime, lane=lane)
    return {"lane": lane, "done": report.done, "failed": report.failed, "jobs": report.jobs}


async def rotate_scheduled_keys(runtime: Runtime) -> int:
    """Hourly: rotate what the monthly schedule covers and is not yet rotated this month."""
    report = await scheduled_rotation.rotate_scheduled_keys(
        runtime, QueueSettings.of(runtime.settings)
    )
    logger.info("scheduled rotations", extra={"rotated": report.done, "failed": report.failed})
    return report.done


async def open_usage_period(runtime: Runtime) -> dict[str, object]:
    """On the 1st (and until done): open the month, restore every key's full monthly limit."""
    result = await open_period(runtime, QueueSettings.of(runtime.settings))
    summary: dict[str, object] = {
        "period": result.period.isoformat(),
        "status": result.status,
        "keys_rolled_over": result.keys_rolled_over,
        "keys_restored": result.keys_restored,
    }
    logger.info("monthly usage period", extra=summary)
    return summary


async def measure_usage_drift(runtime: Runtime) -> int:
    """Hourly: this month's drift per user, OpenRouter's count against what was reported. The
    count comes from the sync (a job on the queue, a page a work item: one invocation never
    lists every key); the drift is then two statements over the books."""
    await sync_usage_from_openrouter(runtime)
    async with runtime.database().connection() as conn, conn.transaction():
        drifting = await ReportRepository(conn).record_drift(
            current_period(), tolerance=runtime.settings.drift_tolerance_usd
        )
    logger.info("usage drift measured", extra={"users_drifting": drifting})
    return drifting


async def sync_usage_from_openrouter(runtime: Runtime) -> dict[str, object]:
    """Every 15 minutes: the books from OpenRouter's own counters (shared/usage/sync.py)."""
    from shared.usage.sync import sync_usage_from_openrouter as sync

    summary = await sync(runtime)
    logger.info("usage synced from OpenRouter", extra=summary)
    return summary


async def verify_reported_usage(runtime: Runtime) -> dict[str, int]:
    """Every 5 minutes: reported costs checked against OpenRouter's generations, corrected
    where they differ (shared/usage/verification.py)."""
    from shared.usage.verification import verify_reported_usage as verify

    summary = await verify(runtime)
    logger.info("reported usage verified", extra=summary)
    return summary


async def deliver_alerts(runtime: Runtime) -> int:
    """Every minute: hand threshold alerts from the outbox to the webhook."""
    delivered = await deliver_to_webhook(runtime)
    logger.info("alerts delivered", extra={"delivered": delivered})
    return delivered
