"""A 405 says, in Allow, every method the path does answer (RFC 9110 §15.5.6), not only those
of the first route that matched it."""

from __future__ import annotations

import re

import httpx

from shared.runtime import Runtime
from shared.web.app_factory import create_app

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
KEY_ID = "6f1c2a4e-0000-4000-8000-000000000001"


async def test_allow_lists_every_method_of_a_path_with_several_routes(runtime: Runtime) -> None:
    """GIVEN /api/keys/{key_id}, which GET reads and DELETE revokes (two routes)
    WHEN it is asked for with PATCH
    THEN the 405 allows both, in the envelope."""
    app = create_app(runtime=runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        response = await client.patch(f"/api/keys/{KEY_ID}")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "DELETE, GET"


async def test_allow_is_exactly_what_each_path_answers(runtime: Runtime) -> None:
    """GIVEN every path the app serves (parameters filled in)
    WHEN each is asked for with every method, without a credential
    THEN each 405 names in Allow exactly the methods that were not answered 405 there."""
    app = create_app(runtime=runtime)
    templates = {route.path for route in app.state.access_rules} | {
        path for route in app.routes if isinstance(path := getattr(route, "path", None), str)
    }
    paths = sorted({re.sub(r"\{[^}]+\}", KEY_ID, template) for template in templates})
    assert len(paths) >= 30
    mismatches = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        for path in paths:
            answers = {method: await client.request(method, path) for method in METHODS}
            answered = {m for m, response in answers.items() if response.status_code != 405}
            for method, response in answers.items():
                if response.status_code != 405:
                    continue
                allowed = set(response.headers["allow"].split(", "))
                if allowed != answered:
                    mismatches.append((method, path, sorted(allowed), sorted(answered)))
    assert mismatches == []
