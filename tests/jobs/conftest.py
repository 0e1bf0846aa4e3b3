"""Fixtures of the work queue tests: separate invocations (each a Runtime of its own, with its
own connection pool and its own OpenRouter client and limiter) that share the test's database
and OpenRouter emulator, as the work lanes of one deployment do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol
from uuid import UUID

import pytest
from pydantic import SecretStr

from shared.config import Settings
from shared.db.database import Database
from shared.jobs.repository import NewItem, WorkQueueRepository
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import EMULATOR_BASE_URL, Runtime, pool_limits


class MakeRuntime(Protocol):
    def __call__(self, **settings: Any) -> Runtime: ...


@pytest.fixture
async def fleet(settings: Settings, emulator: Emulator) -> AsyncIterator[MakeRuntime]:
    """Makes invocations: each its own database pool and OpenRouter client (so its own limiter
    and its own member of the fleet), all on the test's database and emulator; keyword
    arguments change its settings."""
    made: list[Runtime] = []

    def make(**changes: Any) -> Runtime:
        assert settings.database_url is not None
        own = settings.model_copy(update=changes)
        database = Database(settings.database_url.get_secret_value(), pool_limits(own))
        client = OpenRouterClient(
            management_key=SecretStr(emulator.management_key),
            base_url=EMULATOR_BASE_URL,
            transport=emulator.transport(),
        )
        made.append(Runtime(own, database=database, openrouter=client, emulator=emulator))
        return made[-1]

    yield make
    for runtime in made:
        await runtime.openrouter().aclose()
        await runtime.database().close()


async def phased_job(
    database: Database,
    phases: dict[int, list[str]],
    *,
    name: str = "phased",
    max_attempts: int = 5,
) -> UUID:
    """A job of the given items, by phase."""
    async with database.connection() as conn:
        queue = WorkQueueRepository(conn)
        job, created = await queue.ensure_job(
            "test_job", name, created_by="test", max_attempts=max_attempts
        )
        assert created
        items = [NewItem(item, phase) for phase, names in phases.items() for item in names]
        assert await queue.enqueue(job.id, items) == len(items)
    return job.id


async def item_rows(database: Database, job_id: UUID) -> dict[str, dict[str, object]]:
    """Every item of the job as the database has it, by name."""
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select item, phase, status, attempts, leased_by, lease_until, last_error"
            " from work_items where job_id = %s",
            (job_id,),
        )
        return {str(row["item"]): row for row in await cursor.fetchall()}
