"""Cron routes: GET (as Vercel crons call them), for the scheduler's CRON_SECRET only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from shared.access.rules import CronCaller
from shared.jobs import service
from shared.web.deps import RuntimeDep

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


class PruneResult(BaseModel):
    pruned: int


@router.get("/prune-rate-limits", response_model=PruneResult)
async def prune_rate_limits(_: CronCaller, runtime: RuntimeDep) -> PruneResult:
    """Delete ended rate-limit windows (hourly)."""
    return PruneResult(pruned=await service.prune_rate_limits(runtime))


class AdvanceResult(BaseModel):
    advanced: int


@router.get("/advance-key-operations", response_model=AdvanceResult)
async def advance_key_operations(_: CronCaller, runtime: RuntimeDep) -> AdvanceResult:
    """Resume interrupted key operations; finish rotations past their grace (every minute)."""
    return AdvanceResult(advanced=await service.advance_key_operations(runtime))


@router.get("/reconcile-keys", response_model=dict[str, int])
async def reconcile_keys(_: CronCaller, runtime: RuntimeDep) -> dict[str, int]:
    """Reconcile our keys with OpenRouter (daily)."""
    return await service.reconcile_keys(runtime)


class LaneResult(BaseModel):
    lane: int
    done: int
    failed: int
    jobs: list[str]


@router.get("/work", response_model=LaneResult)
async def work(
    _: CronCaller,
    runtime: RuntimeDep,
    lane: Annotated[int, Query(ge=0, le=15, description="Which of the WORK_LANES lanes.")] = 0,
) -> LaneResult:
    """Work the most urgent bulk jobs for the time budget (every minute, in each lane)."""
    return LaneResult.model_validate(await service.work(runtime, lane=lane))


@router.get("/rotate-scheduled-keys", response_model=AdvanceResult)
async def rotate_scheduled_keys(_: CronCaller, runtime: RuntimeDep) -> AdvanceResult:
    """Rotate system keys and monthly-policy user keys not yet rotated this month (hourly)."""
    return AdvanceResult(advanced=await service.rotate_scheduled_keys(runtime))


@router.get("/open-usage-period", response_model=dict[str, object])
async def open_usage_period(_: CronCaller, runtime: RuntimeDep) -> dict[str, object]:
    """Open the new month and restore keys' monthly limits; once per month, resumable."""
    return await service.open_usage_period(runtime)


@router.get("/measure-usage-drift", response_model=AdvanceResult)
async def measure_usage_drift(_: CronCaller, runtime: RuntimeDep) -> AdvanceResult:
    """Record, per user, the drift between OpenRouter and the ledger (hourly)."""
    return AdvanceResult(advanced=await service.measure_usage_drift(runtime))


@router.get("/sync-usage-from-openrouter", response_model=dict[str, object])
async def sync_usage_from_openrouter(_: CronCaller, runtime: RuntimeDep) -> dict[str, object]:
    """The books from OpenRouter's own counters: this slot's sync job (every 15 minutes)."""
    return await service.sync_usage_from_openrouter(runtime)


class VerifyResult(BaseModel):
    verified: int
    mismatched: int
    foreign: int
    not_ready: int
    given_up: int
    failed: int
    unchanged: int
    calls: int


@router.get("/verify-reported-usage", response_model=VerifyResult)
async def verify_reported_usage(_: CronCaller, runtime: RuntimeDep) -> VerifyResult:
    """Verify reported costs against OpenRouter's generations, correcting mismatches, within
    VERIFY_CALLS_PER_RUN calls (every 5 minutes)."""
    return VerifyResult.model_validate(await service.verify_reported_usage(runtime))


@router.get("/deliver-alerts", response_model=AdvanceResult)
async def deliver_alerts(_: CronCaller, runtime: RuntimeDep) -> AdvanceResult:
    """Hand threshold alerts from the outbox to the webhook (every minute)."""
    return AdvanceResult(advanced=await service.deliver_alerts(runtime))
