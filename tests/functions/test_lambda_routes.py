"""Each function's real Mangum handler serves its own routes from API Gateway v2 events: bodies
(plain and base64), query strings, path parameters, credentials, and the database behind."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.runtime import Runtime
from tests.conftest import CRON_SECRET
from tests.events import load_event
from tests.functions.test_lambda_handlers import LambdaContext, _lambda_handler

USER = "3f0c2a9e-8b7d-4e6f-a1b2-c3d4e5f6a7b8"


def api_event(
    method: str,
    path: str,
    token: str,
    *,
    body: Any = None,
    query: str = "",
    as_base64: bool = False,
) -> dict[str, Any]:
    event = load_event("apiGatewayV2_GET_health.json", method=method, path=path)
    event["headers"]["authorization"] = f"Bearer {token}"
    event["rawQueryString"] = query
    if body is not None:
        raw = json.dumps(body).encode()
        event["headers"]["content-type"] = "application/json"
        event["body"] = base64.b64encode(raw).decode() if as_base64 else raw.decode()
        event["isBase64Encoded"] = as_base64
    return event


@pytest.fixture
def admin_token(runtime: Runtime) -> str:
    async def issue() -> str:
        issued = await AccessService(runtime).issue_token(
            issued_by="test", name="platform", scopes=list(Scope), expires_at=None
        )
        await runtime.database().close()  # the handlers run their own event loop
        return issued.token

    # Its own loop, left unset: asyncio.run would clear the thread's loop, which Mangum uses.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(issue())
    finally:
        loop.close()


def invoke(group: str, runtime: Runtime, event: dict[str, Any]) -> tuple[int, Any]:
    response = _lambda_handler(group, runtime)(event, LambdaContext())
    return response["statusCode"], json.loads(response["body"] or "null")


def test_every_function_serves_its_routes_through_its_lambda_handler(
    runtime: Runtime, admin_token: str
) -> None:
    # GIVEN a platform token with every scope, and each function's real handler

    # WHEN the keys function creates a user's key and reads it back
    status, created = invoke(
        "keys", runtime, api_event("POST", "/api/keys/create", admin_token, body={"user_id": USER})
    )
    assert status == 201, created
    status, current = invoke(
        "keys", runtime, api_event("GET", f"/api/keys/user/{USER}", admin_token)
    )
    assert status == 200 and current["key"]["id"] == created["key"]["id"]

    # AND the usage function logs (a base64 body, as API Gateway sends binary) and reads
    events = {"events": [{"user_id": USER, "generation_id": "g-1", "model": "m", "cost_usd": "2"}]}
    status, logged = invoke(
        "usage",
        runtime,
        api_event("POST", "/api/usage/log", admin_token, body=events, as_base64=True),
    )
    assert status == 200 and logged["stored"] == 1
    status, month = invoke("usage", runtime, api_event("GET", f"/api/usage/{USER}", admin_token))
    assert status == 200 and month["spent_usd"] == "2"

    # AND the admin function pages keys by query string and changes the user's tier
    status, page = invoke(
        "admin", runtime, api_event("GET", "/api/admin/keys", admin_token, query="limit=1")
    )
    assert status == 200 and len(page["data"]) == 1
    status, changed = invoke(
        "admin",
        runtime,
        api_event("PUT", f"/api/users/{USER}/tier", admin_token, body={"tier": "micro"}),
    )
    assert status == 200 and changed["tier"] == "micro"

    # AND the emergency function lists what a rotation would touch
    status, dry_run = invoke(
        "emergency",
        runtime,
        api_event(
            "POST",
            "/api/admin/emergency-rotate",
            admin_token,
            body={"reason": "drill", "user_ids": [USER], "dry_run": True},
        ),
    )
    assert status == 200 and dry_run["total"] == 1  # a dry run starts nothing: 200

    # AND the jobs function runs a job for the scheduler's secret
    status, pruned = invoke(
        "jobs", runtime, api_event("GET", "/api/jobs/prune-rate-limits", CRON_SECRET)
    )
    assert status == 200 and "pruned" in pruned


def test_a_function_refuses_a_route_of_another_group(runtime: Runtime, admin_token: str) -> None:
    # A misrouted request is a 404, never served by the wrong function's code.
    status, body = invoke("usage", runtime, api_event("GET", "/api/admin/keys", admin_token))
    assert status == 404 and body["error"]["code"] == "not_found"
