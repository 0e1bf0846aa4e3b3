"""Cron routes: only the scheduler's secret runs them, and they do their work."""

from __future__ import annotations

import httpx

from shared.db.database import Database
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN, CRON_SECRET


async def test_prune_removes_only_ended_windows(api: httpx.AsyncClient, database: Database) -> None:
    async with database.connection() as conn:
        await conn.execute(
            "insert into rate_limit_counters (bucket, window_start, window_seconds, hits) values"
            " ('old', now() - interval '2 hours', 60, 5),"
            " ('current', now(), 3600, 1)"
        )
    cron = {"Authorization": f"Bearer {CRON_SECRET}", "User-Agent": "vercel-cron/1.0"}

    pruned = await api.get("/api/jobs/prune-rate-limits", headers=cron)

    assert pruned.status_code == 200
    assert pruned.json() == {"pruned": 1}
    async with database.connection() as conn:
        cursor = await conn.execute("select bucket from rate_limit_counters")
        assert [row["bucket"] for row in await cursor.fetchall()] == ["current"]


async def test_admins_cannot_call_cron_routes(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/api/jobs/prune-rate-limits", headers={"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
    )
    assert response.status_code == 403
