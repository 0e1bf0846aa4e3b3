"""CloudWatch metrics as Embedded Metric Format lines (Powertools Metrics), one set per request.

EMF is a JSON line on stdout that CloudWatch turns into metrics, so the same code works on
Lambda (where the line becomes a metric), on Vercel and locally (where it is one more log line;
set POWERTOOLS_METRICS_DISABLED=true to silence it). Counts are added during a request or a job
and flushed once at its end by `flush_metrics`, which the HTTP middleware and the scheduled-job
handler call.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from shared.observability import SERVICE_NAME

NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OpenRouterAgent")

KEYS_CREATED = "KeysCreated"
KEYS_ROTATED = "KeysRotated"
KEYS_REVOKED = "KeysRevoked"
KEY_REVEALS = "KeyReveals"
USAGE_EVENTS_RECORDED = "UsageEventsRecorded"
USAGE_EVENTS_REJECTED = "UsageEventsRejected"
THRESHOLD_CROSSINGS = "UsageThresholdCrossings"
OPENROUTER_ERRORS = "OpenRouterErrors"
OPENROUTER_LATENCY = "OpenRouterLatency"
REQUEST_LATENCY = "RequestLatency"

# Powertools keeps the metric set at class level: every Metrics() in the process shares it.
metrics = Metrics(namespace=NAMESPACE, service=SERVICE_NAME)


def count(name: str, value: int = 1) -> None:
    # Checked here too: Powertools prints a disabled set anyway once it holds 100 values.
    if value > 0 and not is_metrics_disabled():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def milliseconds(name: str, value: float) -> None:
    if not is_metrics_disabled():
        metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=round(value, 3))


def count_openrouter_error(status: int) -> None:
    """One line per error, with its status as a dimension (a set shares one dimension list)."""
    if is_metrics_disabled():
        return
    with single_metric(
        name=OPENROUTER_ERRORS,
        unit=MetricUnit.Count,
        value=1,
        namespace=NAMESPACE,
        default_dimensions={"service": SERVICE_NAME},
    ) as metric:
        metric.add_dimension(name="status", value=str(status))


def flush_metrics() -> None:
    """Print what was counted since the last flush as one EMF line; nothing when nothing was."""
    if metrics.metric_set and not is_metrics_disabled():
        metrics.flush_metrics()
