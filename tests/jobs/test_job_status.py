"""GET /api/admin/jobs: what an operator sees of a bulk job while it runs."""

from __future__ import annotations

from datetime import datetime

import httpx

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.db.database import Database
from shared.jobs.queue import QueueSettings, RetryItemLater, work_through
from shared.jobs.repository import ClaimedItem, WorkQueueRepository
from shared.runtime import Runtime


async def test_a_running_job_reports_done_remaining_failed_rate_and_eta(
    api: httpx.AsyncClient, runtime: Runtime, database: Database
) -> None:
    # GIVEN a job of 30 items: a first invocation did 10, one failed for good (3 attempts), and
    # the rest are waiting for their next attempt
    async with database.connection() as conn:
        queue = WorkQueueRepository(conn)
        job, _ = await queue.ensure_job(
            "scheduled_rotation", "2026-12", created_by="t", max_attempts=3
        )
        await queue.enqueue(job.id, [f"owner-{n:02d}" for n in range(30)])
    done = 0

    async def handler(claimed: ClaimedItem) -> None:
        item = claimed.item
        nonlocal done
        if item == "owner-03":
            raise RetryItemLater("OpenRouter refused", after_s=0)
        if done >= 10:
            raise RetryItemLater("OpenRouter is slow today", after_s=3600)
        done += 1

    await work_through(runtime, job.id, handler, QueueSettings(concurrency=1))
    admin = await AccessService(runtime).issue_token(
        issued_by="t", name="ops", scopes=[Scope.ADMIN], expires_at=None
    )
    headers = {"Authorization": f"Bearer {admin.token}"}

    # WHEN an operator asks for it, alone and in the list
    one = await api.get(f"/api/admin/jobs/{job.id}", headers=headers)
    listed = await api.get(
        "/api/admin/jobs", headers=headers, params={"kind": "scheduled_rotation"}
    )
    unknown = await api.get(f"/api/admin/jobs/{job.id.hex[::-1]}", headers=headers)
    refused = await api.get(f"/api/admin/jobs/{job.id}")

    # THEN the figures are the queue's, with a rate and an ETA for the rest
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["total"], body["done"], body["failed"]) == (30, 10, 1)
    assert body["remaining"] == 19 and body["retrying"] == 19 and body["status"] == "running"
    assert float(body["rate_per_s"]) > 0
    assert datetime.fromisoformat(body["eta"]) > datetime.fromisoformat(body["created_at"])
    assert [j["id"] for j in listed.json()["data"]] == [str(job.id)]
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
    assert refused.status_code == 401
