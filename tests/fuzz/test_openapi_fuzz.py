"""Schemathesis against the OpenAPI schema of every group, as an admin, a user and no one:
no 5xx, every status answered documented, every error in the envelope, every response true to
its documented schema and content type, and the security headers on every response."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.runtime import Runtime
from shared.web.app_factory import create_app
from shared.web.middleware import SECURITY_HEADERS as HEADER_PAIRS
from tests.access.signing import AuthServer
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

CASES: Counter[str] = Counter()
SECURITY_HEADERS = {name.decode(): value.decode() for name, value in HEADER_PAIRS}
EXAMPLES_PER_OPERATION = 60


def _check(case: Any, auth_server: AuthServer) -> None:
    principals = {
        "admin": {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"},
        "user": {"Authorization": f"Bearer {auth_server.token()}"},
        "anonymous": {},
    }
    for name, headers in principals.items():
        response = case.call(headers={**(case.headers or {}), **headers})
        CASES[name] += 1
        # every status answered is documented, with the documented content type and schema
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )
        problem = _envelope_problems(response) or _missing_security_headers(response)
        assert problem is None, f"{case.method} {case.formatted_path} as {name}: {problem}"


def _missing_security_headers(response: Any) -> str | None:
    # Schemathesis gives every header as the list of its values.
    missing = [
        f"{name}: {value}"
        for name, value in SECURITY_HEADERS.items()
        if response.headers.get(name) != [value]
    ]
    return f"security headers missing: {missing}" if missing else None


def _envelope_problems(response: Any) -> str | None:
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return "an error without a JSON body"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not {"code", "message", "request_id"} <= set(error):
        return f"an error outside the envelope: {body!r:.200}"
    return None


def test_no_input_breaks_the_api(runtime: Runtime, auth_server: AuthServer) -> None:
    # GIVEN every operation of every group (the local app serves them all)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(runtime=runtime))
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 40

    # WHEN each is called with generated inputs, as an admin, a user and no one
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same cases every run: a failure is reproducible
            database=None,
        )
        def fuzz(case: Any) -> None:
            _check(case, auth_server)

        fuzz()

    # THEN (no assertion above failed, and) enough cases ran
    assert CASES["admin"] >= 1000, CASES  # generated cases, each sent as three principals
