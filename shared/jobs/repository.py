"""All SQL of the work queue (schema/migrations/0008_work_queue.sql, 0017_one_work_queue.sql,
0019_work_item_heartbeat.sql)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from shared.db.database import Connection


@dataclass(frozen=True, slots=True)
class WorkJob:
    id: UUID
    kind: str
    name: str
    status: str
    params: dict[str, Any]
    max_attempts: int
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class JobProgress:
    id: UUID
    kind: str
    name: str
    status: str
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    total: int
    done: int
    parked: int
    retrying: int
    in_flight: int
    first_done_at: datetime | None
    last_done_at: datetime | None

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.parked


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    item: str
    attempts: int  # this claim included
    phase: int = 0
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to enqueue: its name (unique in its job), phase and payload."""

    item: str
    phase: int = 0
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FleetShare:
    share: int  # calls at once this worker may make
    allowance: int  # calls at once OpenRouter takes from the whole fleet, as learned
    workers: int
    resume_in_s: float  # a 429's Retry-After still to wait out
    resume_at: datetime | None = None  # which pause that is: each is waited out once


class WorkQueueRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def ensure_job(
        self,
        kind: str,
        name: str,
        *,
        created_by: str,
        params: dict[str, Any] | None = None,
        max_attempts: int = 5,
        priority: int = 0,
    ) -> tuple[WorkJob, bool]:
        """The job of this kind and name, created if new; (job, created)."""
        cursor = await self._conn.execute(
            "insert into work_jobs (kind, name, params, max_attempts, created_by, priority)"
            " values (%s, %s, %s::jsonb, %s, %s, %s) on conflict (kind, name) do nothing"
            " returning *",
            (kind, name, json.dumps(params or {}), max_attempts, created_by, priority),
        )
        row = await cursor.fetchone()
        if row is not None:
            return WorkJob(**row), True  # type: ignore[arg-type]
        cursor = await self._conn.execute(
            "select * from work_jobs where kind = %s and name = %s", (kind, name)
        )
        row = await cursor.fetchone()
        assert row is not None
        return WorkJob(**row), False  # type: ignore[arg-type]

    async def get_job(self, job_id: UUID) -> WorkJob | None:
        cursor = await self._conn.execute("select * from work_jobs where id = %s", (job_id,))
        row = await cursor.fetchone()
        return None if row is None else WorkJob(**row)  # type: ignore[arg-type]

    async def enqueue(self, job_id: UUID, items: list[str] | list[NewItem]) -> int:
        """Add items; an item already in the job is not added twice. The number added."""
        new = [i if isinstance(i, NewItem) else NewItem(i) for i in items]
        cursor = await self._conn.execute(
            "insert into work_items (job_id, item, phase, payload)"
            " select %s, i, p, d from unnest(%s::text[], %s::smallint[], %s::jsonb[]) as u(i, p, d)"
            " on conflict do nothing",
            (
                job_id,
                [i.item for i in new],
                [i.phase for i in new],
                [json.dumps(i.payload) for i in new],
            ),
        )
        return cursor.rowcount

    async def due_jobs(self, *, limit: int) -> list[WorkJob]:
        """Running jobs with an item due now, most urgent first."""
        cursor = await self._conn.execute("select * from work_jobs_due(%s)", (limit,))
        return [WorkJob(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]

    async def results(self, job_id: UUID, *, prefix: str) -> list[Any]:
        """The results of the job's done items whose names start with `prefix`."""
        cursor = await self._conn.execute(
            "select result from work_items where job_id = %s and status = 'done'"
            " and starts_with(item, %s) and result is not null order by item",
            (job_id, prefix),
        )
        return [row["result"] for row in await cursor.fetchall()]

    async def open_items(self, job_id: UUID, *, prefix: str) -> int:
        """How many of the job's items named `prefix...` are not done (pending or parked)."""
        cursor = await self._conn.execute(
            "select count(*) as n from work_items where job_id = %s and status <> 'done'"
            " and starts_with(item, %s)",
            (job_id, prefix),
        )
        row = await cursor.fetchone()
        return int(row["n"]) if row else 0  # type: ignore[call-overload]

    async def unfinished(self, job_id: UUID) -> list[tuple[str, str, str | None]]:
        """(item, status, last error) of the job's items that are not done."""
        cursor = await self._conn.execute(
            "select item, status, last_error from work_items where job_id = %s"
            " and status <> 'done' order by item",
            (job_id,),
        )
        return [
            (
                str(r["item"]),
                str(r["status"]),
                None if r["last_error"] is None else str(r["last_error"]),
            )
            for r in await cursor.fetchall()
        ]

    async def fleet_share(
        self,
        worker: str,
        *,
        max_allowance: int,
        lease_s: int,
        successes: int,
        throttled: bool,
        retry_after_s: float,
        leave: bool = False,
    ) -> FleetShare:
        cursor = await self._conn.execute(
            "select * from openrouter_fleet_share(%s, %s, %s, %s, %s, %s::numeric, %s)",
            (worker, max_allowance, lease_s, successes, throttled, retry_after_s, leave),
        )
        row = await cursor.fetchone()
        assert row is not None
        return FleetShare(
            share=int(row["share"]),  # type: ignore[call-overload]
            allowance=int(row["allowance"]),  # type: ignore[call-overload]
            workers=int(row["workers"]),  # type: ignore[call-overload]
            resume_in_s=float(row["resume_in_s"]),  # type: ignore[arg-type]
            resume_at=row["resume_at"],  # type: ignore[arg-type]
        )

    async def claim(
        self, job_id: UUID, *, worker: str, limit: int, lease_s: int
    ) -> list[ClaimedItem]:
        cursor = await self._conn.execute(
            "select item, attempts, phase, payload from claim_work_items(%s, %s, %s, %s)"
            " order by phase, item",
            (job_id, worker, limit, lease_s),
        )
        return [
            ClaimedItem(str(r["item"]), int(r["attempts"]), int(r["phase"]), dict(r["payload"]))  # type: ignore[call-overload]
            for r in await cursor.fetchall()
        ]

    async def complete(self, job_id: UUID, item: str, *, worker: str, result: Any = None) -> bool:
        cursor = await self._conn.execute(
            "select complete_work_item(%s, %s, %s, %s::jsonb) as done",
            (job_id, item, worker, None if result is None else json.dumps(result)),
        )
        row = await cursor.fetchone()
        return bool(row and row["done"])

    async def fail(
        self, job_id: UUID, item: str, *, worker: str, error: str, retry_s: float
    ) -> str | None:
        cursor = await self._conn.execute(
            "select fail_work_item(%s, %s, %s, %s, %s::numeric) as status",
            (job_id, item, worker, error, retry_s),
        )
        row = await cursor.fetchone()
        return None if row is None or row["status"] is None else str(row["status"])

    async def renew(self, job_id: UUID, items: list[str], *, worker: str, lease_s: int) -> set[str]:
        """Renew, in one statement, the leases this worker still holds on these items (claimed
        and not started, or running); the items renewed. An item whose lease ran out, or was
        taken over by another worker, is not renewed: it is no longer this worker's."""
        if not items:
            return set()
        cursor = await self._conn.execute(
            "update work_items set lease_until = now() + make_interval(secs => %s)"
            " where job_id = %s and item = any(%s) and leased_by = %s and status = 'pending'"
            " and lease_until >= now() returning item",
            (lease_s, job_id, items, worker),
        )
        return {str(row["item"]) for row in await cursor.fetchall()}

    async def release(self, job_id: UUID, items: list[str], *, worker: str) -> None:
        """Hand back claimed items this worker did not start: no attempt is counted."""
        await self._conn.execute(
            "update work_items set lease_until = null, attempts = attempts - 1"
            " where job_id = %s and item = any(%s) and leased_by = %s and status = 'pending'"
            " and lease_until >= now()",
            (job_id, items, worker),
        )

    async def finish_if_drained(self, job_id: UUID) -> bool:
        """Mark the job done once no item is pending; whether it is done now."""
        await self._conn.execute(
            "update work_jobs set status = 'done', finished_at = now()"
            " where id = %s and status = 'running' and not exists"
            " (select 1 from work_items where job_id = %s and status = 'pending')",
            (job_id, job_id),
        )
        cursor = await self._conn.execute("select status from work_jobs where id = %s", (job_id,))
        row = await cursor.fetchone()
        return row is not None and row["status"] == "done"

    async def progress(self, job_id: UUID) -> JobProgress | None:
        cursor = await self._conn.execute(
            "select * from work_job_progress where id = %s", (job_id,)
        )
        row = await cursor.fetchone()
        return None if row is None else JobProgress(**row)  # type: ignore[arg-type]

    async def recent(self, *, kind: str | None, limit: int) -> list[JobProgress]:
        cursor = await self._conn.execute(
            "select * from work_job_progress where %s::text is null or kind = %s"
            " order by created_at desc limit %s",
            (kind, kind, limit),
        )
        return [JobProgress(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]

    async def running(self, kind: str) -> list[WorkJob]:
        cursor = await self._conn.execute(
            "select * from work_jobs where kind = %s and status = 'running' order by created_at",
            (kind,),
        )
        return [WorkJob(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]
