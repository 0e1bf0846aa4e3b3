"""Scheduled jobs on Lambda: an EventBridge event runs the job; nothing else can."""

from __future__ import annotations

import importlib

import psycopg
import pytest

from shared.jobs.scheduled import NotAScheduledEvent
from shared.runtime import Runtime
from tests.events import load_event
from tests.functions.test_lambda_handlers import LambdaContext


@pytest.fixture
def jobs_module(runtime: Runtime):  # type: ignore[no-untyped-def]
    importlib.import_module("functions.jobs.index").app.state.runtime = runtime
    return importlib.import_module("functions.jobs.aws")


def test_an_eventbridge_schedule_runs_the_job(jobs_module, database_dsn: str) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(database_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into rate_limit_counters (bucket, window_start, window_seconds, hits)"
            " values ('ended', now() - interval '1 hour', 60, 3)"
        )

    result = jobs_module.prune_rate_limits(
        load_event("eventBridgeScheduledEvent.json"), LambdaContext()
    )

    assert result == {"job": "prune_rate_limits", "result": 1}


def test_an_http_event_cannot_run_a_scheduled_job(jobs_module) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotAScheduledEvent):
        jobs_module.prune_rate_limits(load_event("apiGatewayV2_GET_health.json"), LambdaContext())
