"""The OpenAPI document is a contract a client can be generated from: who may call each
operation, every error it answers in the one envelope, the bodies typed; /docs and /redoc are
served with their own assets, nothing from a CDN."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from shared.runtime import Runtime
from shared.usage.schemas import UsageEvent, UsageEventBatch
from shared.web.app_factory import create_app
from shared.web.error_handlers import error_body
from shared.web.openapi import ENVELOPE_REF, ErrorEnvelope

METHODS = ("get", "post", "put", "delete")


@pytest.fixture
def app_and_document(runtime: Runtime) -> tuple[Any, dict[str, Any]]:
    app = create_app(runtime=runtime)
    return app, app.openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_protected_operation_needs_the_bearer_and_says_how_it_refuses(
    app_and_document: tuple[Any, dict[str, Any]],
) -> None:
    app, document = app_and_document
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    rules = {
        (method, route.path): route.rule
        for route in app.state.access_rules
        for method in route.methods
    }
    operations = _operations(document)
    assert len(operations) >= 40
    for method, path, operation in operations:
        rule = rules[(method, path)]
        if rule.public:
            assert "security" not in operation, (method, path)
            continue
        assert operation["security"] == [{"bearer": []}], (method, path)
        for status in ("401", "403", "503"):
            assert status in operation["responses"], (method, path, status)


def test_every_error_response_is_the_envelope_and_every_body_or_parameter_can_be_refused(
    app_and_document: tuple[Any, dict[str, Any]],
) -> None:
    _, document = app_and_document
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ENVELOPE_REF}, (method, path, status)
        if "requestBody" in operation:
            assert {"400", "413", "415", "422"} <= set(responses), (method, path)
        if "{" in path:
            assert {"404", "422"} <= set(responses), (method, path)
    # FastAPI's own 422 shape is never answered, so it is not in the document either
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_routes_that_change_keys_document_their_conflicts_and_rate_limits(
    app_and_document: tuple[Any, dict[str, Any]],
) -> None:
    _, document = app_and_document
    paths = document["paths"]
    for method, path in [
        ("post", "/api/keys/create"),
        ("post", "/api/keys/rotate"),
        ("delete", "/api/keys/{key_id}"),
        ("post", "/api/keys/{key_id}/disable"),
        ("post", "/api/keys/{key_id}/enable"),
        ("put", "/api/users/{user_id}"),
        ("post", "/api/admin/reset-usage"),
        ("post", "/api/admin/emergency-rotate"),
    ]:
        assert "409" in paths[path][method]["responses"], (method, path)
    for method, path in [
        ("post", "/api/keys/create"),
        ("post", "/api/keys/rotate"),
        ("post", "/api/admin/tokens"),
    ]:
        assert "429" in paths[path][method]["responses"], (method, path)
    assert set(paths["/api/users/{user_id}"]["put"]["responses"]) >= {"200", "201"}


def test_the_envelope_in_the_document_is_what_errors_carry(
    app_and_document: tuple[Any, dict[str, Any]],
) -> None:
    _, document = app_and_document
    envelope = document["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    body = error_body("key_exists", "already has a key", {"key_id": "k"})
    assert ErrorEnvelope.model_validate(body).error.code == "key_exists"


def test_the_usage_log_body_is_one_event_or_a_batch(
    app_and_document: tuple[Any, dict[str, Any]],
) -> None:
    _, document = app_and_document
    body = document["paths"]["/api/usage/log"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema == {
        "oneOf": [
            {"$ref": "#/components/schemas/UsageEvent"},
            {"$ref": "#/components/schemas/UsageEventBatch"},
        ]
    }
    schemas = document["components"]["schemas"]
    assert schemas["UsageEvent"]["required"] == ["user_id", "generation_id", "model", "cost_usd"]
    assert schemas["UsageEventBatch"]["properties"]["events"]["items"] == {
        "$ref": "#/components/schemas/UsageEvent"
    }
    # the documented example is an event the documented model accepts
    example = body["content"]["application/json"]["examples"]["event"]["value"]
    TypeAdapter(UsageEvent | UsageEventBatch).validate_python(example)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_everything_from_the_app_itself(
    runtime: Runtime, page: str
) -> None:
    app = create_app(runtime=runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        html = await client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "cdn." not in html.text and "fonts.googleapis" not in html.text
        assets = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", html.text)
        assert any(asset.endswith(".js") for asset in assets), assets
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            fetched = await client.get(asset)
            assert fetched.status_code == 200, asset
            assert len(fetched.content) > 1000, asset
        missing = await client.get("/docs/assets/../../etc/passwd")
        assert missing.status_code == 404
