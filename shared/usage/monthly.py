"""The monthly job: open the new UTC month and restore every key's full monthly limit.

Nothing is deleted: last month's books stay as they are, and the new month's books start when
its first event arrives. What changes is each key's OpenRouter limit, which a rotation, a
downgrade or a reset had set to part of last month's budget. The run is keyed by the period in
the database: it applies once however often it is invoked, one invocation at a time (a lease),
and a run that timed out or died is continued from its checkpoint by the next invocation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

from shared.db.database import Connection
from shared.errors import AppError
from shared.keys.domain import Owner, current_period
from shared.keys.repository import KeyRecord
from shared.keys.service import KeyLifecycleService
from shared.observability import logger
from shared.runtime import Runtime

_LEASE_S = 120


@dataclass(frozen=True, slots=True)
class MonthlyRunResult:
    period: date
    status: str  # done, partial, already_done or in_progress
    keys_restored: int


class PeriodRunRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def claim(self, period: date) -> dict[str, object] | None:
        cursor = await self._conn.execute(
            "insert into usage_period_runs as r (period, status, lease_until)"
            " values (%s, 'running', now() + make_interval(secs => %s))"
            " on conflict (period) do update set lease_until = excluded.lease_until"
            " where r.status = 'running' and (r.lease_until is null or r.lease_until < now())"
            " returning *",
            (period, _LEASE_S),
        )
        return await cursor.fetchone()

    async def status(self, period: date) -> str | None:
        cursor = await self._conn.execute(
            "select status from usage_period_runs where period = %s", (period,)
        )
        row = await cursor.fetchone()
        return None if row is None else str(row["status"])

    async def keys_to_restore(
        self, period: date, *, after_owner: str | None, limit: int
    ) -> list[KeyRecord]:
        cursor = await self._conn.execute(
            "select * from api_keys where state = 'current' and limit_period < %s"
            " and (%s::text is null or owner > %s::text) order by owner limit %s",
            (period, after_owner, after_owner, limit),
        )
        return [KeyRecord.from_row(row) for row in await cursor.fetchall()]

    async def checkpoint(self, period: date, owner: str, restored: int) -> None:
        await self._conn.execute(
            "update usage_period_runs set checkpoint_owner = %s,"
            " keys_restored = keys_restored + %s,"
            " lease_until = now() + make_interval(secs => %s) where period = %s",
            (owner, restored, _LEASE_S, period),
        )

    async def finish(self, period: date, *, done: bool) -> int:
        cursor = await self._conn.execute(
            "update usage_period_runs set lease_until = null,"
            " status = case when %s then 'done' else status end,"
            " completed_at = case when %s then now() else completed_at end"
            " where period = %s returning keys_restored",
            (done, done, period),
        )
        row = await cursor.fetchone()
        return 0 if row is None else int(row["keys_restored"])  # type: ignore[call-overload]


async def open_period(
    runtime: Runtime, *, time_budget_s: float, batch: int = 100
) -> MonthlyRunResult:
    period = current_period()
    deadline = time.monotonic() + time_budget_s
    async with runtime.database().connection() as conn:
        runs = PeriodRunRepository(conn)
        run = await runs.claim(period)
        if run is None:
            status = await runs.status(period)
            return MonthlyRunResult(
                period, "already_done" if status == "done" else "in_progress", 0
            )
    keys = KeyLifecycleService(runtime)
    checkpoint = run["checkpoint_owner"]
    finished = False
    try:
        while not finished and time.monotonic() < deadline:
            async with runtime.database().connection() as conn:
                due = await PeriodRunRepository(conn).keys_to_restore(
                    period,
                    after_owner=None if checkpoint is None else str(checkpoint),
                    limit=batch,
                )
            finished = not due
            for key in due:
                if time.monotonic() >= deadline:
                    break
                restored = 0
                try:
                    await keys.apply_budget(
                        Owner.parse(key.owner),
                        actor="job:monthly",
                        request_id=None,
                        reason=f"new period {period.isoformat()}",
                    )
                    restored = 1
                except AppError as exc:
                    # Most often an operation in progress for this owner: that operation plans
                    # the new key's limit with the new month's budget itself.
                    logger.warning(
                        "monthly restore skipped a key",
                        extra={"key_id": str(key.id), "error_code": exc.code},
                    )
                checkpoint = key.owner
                async with runtime.database().connection() as conn:
                    await PeriodRunRepository(conn).checkpoint(period, key.owner, restored)
    finally:
        async with runtime.database().connection() as conn:
            total = await PeriodRunRepository(conn).finish(period, done=finished)
    return MonthlyRunResult(period, "done" if finished else "partial", total)
