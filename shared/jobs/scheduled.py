"""Lambda entry for scheduled jobs: EventBridge invokes these directly, never over HTTP.

Mangum cannot take an EventBridge event, so each job gets a plain handler. The event is checked
with a six-field pydantic model (Powertools' parser would cost ~150 ms of cold start).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools.logging import correlation_paths
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.metrics import flush_metrics
from shared.observability import logger
from shared.runtime import Runtime

Job = Callable[[Runtime], Awaitable[Any]]
ScheduledHandler = Callable[[dict[str, Any], Any], dict[str, Any]]

# One loop per container, kept across warm invocations with the pool bound to it.
_loop: asyncio.AbstractEventLoop | None = None


class ScheduledEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    source: Literal["aws.events"]
    detail_type: Literal["Scheduled Event"] = Field(alias="detail-type")
    time: datetime
    resources: list[str] = Field(default_factory=list)


class NotAScheduledEvent(ValueError):
    pass


def scheduled_handler(name: str, job: Job, runtime: Callable[[], Runtime]) -> ScheduledHandler:
    @logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:  # noqa: ARG001 - Lambda's signature; Powertools reads context
        global _loop
        try:
            scheduled = ScheduledEvent.model_validate(event)
        except ValidationError as exc:
            # Only EventBridge schedules may run jobs this way; anything else is a mistake
            # or an attack, and Lambda records the failure.
            raise NotAScheduledEvent(f"{name} runs only from an EventBridge schedule") from exc
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
        try:
            result = _loop.run_until_complete(job(runtime()))
        finally:
            flush_metrics()
        logger.info("scheduled job done", extra={"job": name, "scheduled_at": str(scheduled.time)})
        return {"job": name, "result": result}

    return handler
