"""Each deployable function answers a real API Gateway v2 event through Mangum, and the local
server answers the same route the same way."""

from __future__ import annotations

import asyncio
import importlib
import json
from dataclasses import dataclass

import httpx
import pytest

from shared.runtime import Runtime
from shared.web.app_factory import GROUPS, create_app
from tests.events import load_event


@dataclass
class LambdaContext:
    function_name: str = "openrouter-agent-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:test"
    aws_request_id: str = "52fdfc07-2182-454f-963f-5f0f9a621d72"

    def get_remaining_time_in_millis(self) -> int:
        return 25_000


def _lambda_handler(group: str, runtime: Runtime):  # type: ignore[no-untyped-def]
    """The function's real handler, its runtime pointed at this test's database and emulator."""
    index = importlib.import_module(f"functions.{group}.index")
    index.app.state.runtime = runtime
    return importlib.import_module(f"functions.{group}.aws").handler


@pytest.mark.parametrize("group", GROUPS)
def test_each_function_answers_its_liveness_route(group: str, runtime: Runtime) -> None:
    # GIVEN an API Gateway HTTP API event for GET /health
    event = load_event("apiGatewayV2_GET_health.json")

    # WHEN the group's Lambda handler is invoked
    response = _lambda_handler(group, runtime)(event, LambdaContext())

    # THEN it answers 200 JSON from that group, under API Gateway's request id
    assert response["statusCode"] == 200
    assert response["headers"]["content-type"] == "application/json"
    assert response["headers"]["x-request-id"] == event["requestContext"]["requestId"]
    body = json.loads(response["body"])
    assert (body["status"], body["group"]) == ("ok", group)


@pytest.mark.parametrize("path", ["/health/database", "/health/keys", "/health/nope"])
def test_the_local_server_answers_like_the_health_function(path: str, runtime: Runtime) -> None:
    # Synchronous on purpose: Mangum drives its own event loop, as it does on Lambda.
    event = load_event("apiGatewayV2_GET_health.json", method="GET", path=path)
    lambda_response = _lambda_handler("health", runtime)(event, LambdaContext())

    async def local_request() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get(path, headers={"x-request-id": "Xh0QWgAbIAMEVxQ="})

    local = asyncio.run(local_request())

    assert lambda_response["statusCode"] == local.status_code
    assert lambda_response["headers"]["content-type"] == local.headers["content-type"]
    lambda_body, local_body = json.loads(lambda_response["body"]), local.json()
    for body in (lambda_body, local_body):
        body.pop("latency_ms", None)
    assert lambda_body == local_body
