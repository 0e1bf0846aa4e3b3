"""A worker process for the crash tests, run as `python -m tests.jobs.doomed_worker DSN JOB_ID
LEASE_S HEARTBEAT_S DATA_DIR`: it works the job with a handler that says which item it started
and then hangs on it, until the test kills it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from uuid import UUID

from pydantic import SecretStr

from shared.config import Environment, Settings
from shared.db.database import Database
from shared.jobs.queue import QueueSettings, work_through
from shared.jobs.repository import ClaimedItem
from shared.runtime import Runtime


async def main(dsn: str, job_id: UUID, lease_s: int, heartbeat_s: float, data_dir: Path) -> None:
    settings = Settings(
        app_env=Environment.TEST, database_url=SecretStr(dsn), local_data_dir=data_dir
    )
    runtime = Runtime(settings, database=Database(dsn))

    async def hang(claimed: ClaimedItem) -> None:
        sys.stdout.write(f"started {claimed.item}\n")
        sys.stdout.flush()
        await asyncio.Event().wait()  # never set: the process dies here

    queue = QueueSettings(
        concurrency=1, time_budget_s=600, lease_s=lease_s, heartbeat_s=heartbeat_s
    )
    await work_through(runtime, job_id, hang, queue, worker="doomed")


if __name__ == "__main__":
    dsn, job, lease, heartbeat, data = sys.argv[1:6]
    asyncio.run(main(dsn, UUID(job), int(lease), float(heartbeat), Path(data)))
