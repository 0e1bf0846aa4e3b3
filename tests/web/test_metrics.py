"""CloudWatch metrics: the EMF lines a request leaves in the function's output."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import Runtime

USER = "metrics-user-1"


def emf_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            lines.append(json.loads(line))
    return lines


def metric_values(lines: list[dict[str, Any]], name: str) -> list[float]:
    """Every value of the named metric, checking that each line declares it as EMF requires."""
    values: list[float] = []
    for line in lines:
        declared = [
            metric["Name"]
            for directive in line["_aws"]["CloudWatchMetrics"]
            for metric in directive["Metrics"]
        ]
        if name in line:
            assert name in declared, f"{name} is in the line but not declared"
            raw = line[name]
            values.extend(raw if isinstance(raw, list) else [raw])
    return values


async def token(runtime: Runtime, *scopes: Scope) -> dict[str, str]:
    issued = await AccessService(runtime).issue_token(
        issued_by="test", name="metrics", scopes=list(scopes), expires_at=None
    )
    return {"Authorization": f"Bearer {issued.token}"}


async def test_a_key_creation_emits_its_count_and_the_openrouter_latency(
    api: httpx.AsyncClient, runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a backend allowed to create keys
    headers = await token(runtime, Scope.KEYS_WRITE)
    capsys.readouterr()

    # WHEN it creates a user's key
    created = await api.post("/api/keys/create", headers=headers, json={"user_id": USER})
    assert created.status_code == 201

    # THEN the request's output holds EMF lines counting one key and timing the calls
    lines = emf_lines(capsys.readouterr().out)
    assert metric_values(lines, "KeysCreated") == [1.0]
    assert len(metric_values(lines, "OpenRouterLatency")) >= 1
    assert len(metric_values(lines, "RequestLatency")) == 1
    [line] = [line for line in lines if "KeysCreated" in line]
    assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "OpenRouterAgent"
    assert line["service"] == "openrouter-agent"


async def test_a_usage_log_emits_recorded_rejected_and_threshold_counts(
    api: httpx.AsyncClient, runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a user with a key (free tier: $10) and an agent allowed to log usage
    keys = await token(runtime, Scope.KEYS_WRITE)
    assert (
        await api.post("/api/keys/create", headers=keys, json={"user_id": USER})
    ).status_code == 201
    writer = await token(runtime, Scope.USAGE_WRITE)
    capsys.readouterr()

    # WHEN a batch of two good events ($8.50 in all: 50 % and 80 % crossed) and a bad one arrives
    events = [
        {"user_id": USER, "generation_id": f"gen-{n}", "model": "m", "cost_usd": cost}
        for n, cost in enumerate(["4.25", "4.25"])
    ] + [{"user_id": USER, "generation_id": "gen-bad", "model": "m", "cost_usd": "-1"}]
    logged = await api.post("/api/usage/log", headers=writer, json={"events": events})
    assert logged.status_code == 200, logged.text

    # THEN the output counts exactly those
    lines = emf_lines(capsys.readouterr().out)
    assert sum(metric_values(lines, "UsageEventsRecorded")) == 2
    assert sum(metric_values(lines, "UsageEventsRejected")) == 1
    assert sum(metric_values(lines, "UsageThresholdCrossings")) == 2


async def test_openrouter_errors_are_counted_by_status(
    api: httpx.AsyncClient,
    runtime: Runtime,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN OpenRouter refusing key creation with 503
    headers = await token(runtime, Scope.KEYS_WRITE)
    emulator.inject(Fault("status", method="POST", path="/keys", status=503))
    capsys.readouterr()

    # WHEN a key is asked for
    await api.post("/api/keys/create", headers=headers, json={"user_id": USER})

    # THEN one error line carries the status as its dimension
    lines = [line for line in emf_lines(capsys.readouterr().out) if "OpenRouterErrors" in line]
    assert [(line["status"], line["OpenRouterErrors"]) for line in lines] == [("503", [1.0])]
    assert lines[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "status"]]


async def test_metrics_can_be_switched_off(
    api: httpx.AsyncClient,
    runtime: Runtime,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN metrics disabled, as on Vercel where no one reads EMF
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    headers = await token(runtime, Scope.KEYS_WRITE)

    # WHEN a key is created
    created = await api.post("/api/keys/create", headers=headers, json={"user_id": USER})
    assert created.status_code == 201

    # THEN no EMF line is written
    assert emf_lines(capsys.readouterr().out) == []
