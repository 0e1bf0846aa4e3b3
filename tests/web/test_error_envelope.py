"""Bad input of every kind gets the one error envelope with a 4xx code; never a bare 500."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from shared.access.rules import PublicCaller
from shared.errors import Conflict
from shared.runtime import Runtime
from shared.web.app_factory import create_app
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

SECRET = "sk-or-v1-" + "c" * 64

probe = APIRouter(prefix="/probe")


class Payload(BaseModel):
    name: str
    amount: int


@probe.post("/echo")
async def echo(payload: Payload, _: PublicCaller) -> Payload:
    return payload


@probe.get("/conflict")
async def conflict(_: PublicCaller) -> None:
    raise Conflict("already rotating", code="rotation_in_progress", details={"user_id": "u1"})


@probe.get("/crash")
async def crash(_: PublicCaller) -> None:
    raise RuntimeError(f"upstream said: invalid key {SECRET}")


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app("health", runtime=runtime, extra_routers=(probe,))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as c:
        yield c


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["request_id"] == response.headers["x-request-id"]
    return error


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/probe/echo", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert _error(response)["code"] == "malformed_json"


@pytest.mark.parametrize("path", ["/probe/echo", "/api/usage/log"])
async def test_json_nested_past_the_parsers_depth_is_malformed_not_a_500(
    runtime: Runtime, path: str
) -> None:
    # GIVEN a body of 5,000 nested arrays: valid JSON that Python's parser cannot descend
    deep = b"[" * 5_000 + b"]" * 5_000
    app = create_app("usage", runtime=runtime, extra_routers=(probe,))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        # WHEN it is posted to a route FastAPI parses and to the one that parses itself
        response = await client.post(
            path,
            content=deep,
            headers={
                "content-type": "application/json",
                "authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}",
            },
        )
    # THEN both say what is wrong with it, as the same 400
    assert response.status_code == 400, response.text
    assert _error(response)["code"] == "malformed_json"


async def test_wrong_types_are_422_with_locations_but_not_the_input(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/probe/echo", json={"name": SECRET, "amount": "lots"})
    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "validation_error"
    assert error["details"] == [
        {
            "loc": ["body", "amount"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        }
    ]
    assert SECRET not in response.text


async def test_an_oversize_body_is_413_by_content_length(client: httpx.AsyncClient) -> None:
    response = await client.post("/probe/echo", content=b"x" * 2_000_000)
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"


async def test_an_oversize_streamed_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"y" * 65_536

    response = await client.post(
        "/probe/echo", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    wrong_method = await client.delete("/health")
    assert (missing.status_code, _error(missing)["code"]) == (404, "not_found")
    assert (wrong_method.status_code, _error(wrong_method)["code"]) == (405, "method_not_allowed")


async def test_service_errors_keep_their_code_and_details(client: httpx.AsyncClient) -> None:
    response = await client.get("/probe/conflict")
    assert response.status_code == 409
    error = _error(response)
    assert (error["code"], error["details"]) == ("rotation_in_progress", {"user_id": "u1"})


async def test_an_unexpected_error_is_a_500_envelope_without_the_secret(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    response = await client.get("/probe/crash")

    assert response.status_code == 500
    assert _error(response)["code"] == "internal_error"
    assert SECRET not in response.text
    # the traceback is logged, redacted, under the same request id
    logged = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    crash = next(line for line in logged if line["message"] == "unhandled error")
    assert crash["request_id"] == response.headers["x-request-id"]
    assert "sk-or-***" in crash["exception"]
    assert SECRET not in log_stream.getvalue()


async def test_a_caller_request_id_is_echoed_and_a_bad_one_replaced(
    client: httpx.AsyncClient,
) -> None:
    kept = await client.get("/health", headers={"x-request-id": "trace-123.abc"})
    replaced = await client.get("/health", headers={"x-request-id": "bad id\nwith newline"})
    assert kept.headers["x-request-id"] == "trace-123.abc"
    assert replaced.headers["x-request-id"] != "bad id\nwith newline"
    assert len(replaced.headers["x-request-id"]) == 32


async def test_every_response_carries_security_headers(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/health"), await client.get("/nowhere")):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_value_the_database_cannot_store_is_a_422_not_a_500(
    api: httpx.AsyncClient,
) -> None:
    # GIVEN an admin's request whose reason holds a NUL byte (valid JSON, valid str, but no
    # PostgreSQL text may contain it), found by the schemathesis run
    admin = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
    body = {"all": True, "reason": "leak\u0000ed"}

    # WHEN it reaches the database
    response = await api.post("/api/admin/emergency-rotate", headers=admin, json=body)

    # THEN it is refused as input, in the envelope, and nothing of the value is echoed
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"] == {"reason": "a value the driver refuses"}


async def test_control_characters_are_not_user_ids(api: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
    response = await api.post(
        "/api/keys/create", headers=admin, json={"user_id": "eve\u0000", "tier": "free"}
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"
