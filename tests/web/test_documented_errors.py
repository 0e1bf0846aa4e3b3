"""Every status a route answers is one its operation documents, including those the route
only answers when something else says no: its rate limit (a reveal's 429) or OpenRouter
(a refusal's 502). Schemathesis (tests/fuzz) checks the same on generated input, which never
exhausts a rate limit nor meets OpenRouter refusing; these scenarios do, over the real app, and
check every answer they get against the document."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.config import Settings
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import Runtime
from shared.web.app_factory import GROUP_ROUTERS, create_app
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

ALICE = "3b0f6c1e-7d2a-4c5b-9e8f-0a1b2c3d4e5f"
BOB = "9c8b7a6f-5e4d-4c3b-8a2f-1e0d9c8b7a6f"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}


@dataclass
class Answer:
    method: str
    path: str  # the operation's path template
    status: int
    documented: bool


@dataclass
class DocumentedOnly(httpx.AsyncBaseTransport):
    """The app over ASGI, noting for every answer whether its operation documents its status."""

    app: FastAPI
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._asgi = httpx.ASGITransport(app=self.app)
        self._paths: dict[str, dict[str, Any]] = self.app.openapi()["paths"]

    def _operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        candidates = [
            template
            for template, item in self._paths.items()
            if method.lower() in item
            and re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path)
        ]
        assert candidates, f"no documented operation {method} {path}"
        # /api/keys/create before /api/keys/{key_id}: the literal path is the route's
        template = min(candidates, key=lambda t: t.count("{"))
        return template, self._paths[template][method.lower()]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._asgi.handle_async_request(request)
        template, operation = self._operation(request.method, request.url.path)
        self.answers.append(
            Answer(
                request.method,
                template,
                response.status_code,
                str(response.status_code) in operation["responses"],
            )
        )
        return response

    def undocumented(self) -> list[str]:
        return [f"{a.method} {a.path} {a.status}" for a in self.answers if not a.documented]


@dataclass
class Checked:
    client: httpx.AsyncClient
    transport: DocumentedOnly
    runtime: Runtime

    async def token(self, *scopes: Scope, name: str) -> dict[str, str]:
        issued = await AccessService(self.runtime).issue_token(
            issued_by="test", name=name, scopes=list(scopes), expires_at=None
        )
        return {"Authorization": f"Bearer {issued.token}"}


@pytest.fixture
async def checked(
    settings: Settings, emulator: Emulator, openrouter: OpenRouterClient
) -> AsyncIterator[Checked]:
    # One reveal a minute per credential: the second one is the rate limit's answer.
    runtime = Runtime(
        settings.model_copy(update={"rate_limit_key_reveals_per_minute": 1}),
        openrouter=openrouter,
        emulator=emulator,
    )
    transport = DocumentedOnly(create_app(runtime=runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Checked(client, transport, runtime)
    await runtime.database().close()


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


async def test_a_reveal_past_its_rate_limit_is_a_documented_429(checked: Checked) -> None:
    """GIVEN a user's key and a system key, and services that may reveal them
    WHEN each service reveals its key twice within the minute the limit allows one in
    THEN the second reveal is a 429, and both reveal routes document it."""
    api = checked.client
    writer = await checked.token(Scope.KEYS_WRITE, name="backend")
    agent = await checked.token(Scope.KEYS_READ, Scope.KEYS_REVEAL, name="agent-runtime")
    system = await checked.token(Scope.KEYS_READ, Scope.KEYS_REVEAL, name="formul8-main")
    assert (await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})).is_success
    made = await api.post("/api/keys/create", headers=writer, json={"system_name": "formul8-main"})
    assert made.is_success

    for revealer, path in [
        (agent, f"/api/keys/user/{ALICE}?reveal=true"),
        (system, "/api/keys/system/formul8-main?reveal=true"),
    ]:
        first = await api.get(path, headers=revealer)
        second = await api.get(path, headers=revealer)
        assert first.status_code == 200 and first.json()["secret"], first.text
        assert _code(second) == (429, "rate_limited"), second.text
        assert "retry-after" in second.headers

    assert checked.transport.undocumented() == []


async def test_every_route_that_openrouter_can_refuse_documents_the_502(
    checked: Checked, emulator: Emulator
) -> None:
    """GIVEN a user on a tier with a key, and OpenRouter then refusing every call (400)
    WHEN each route that asks OpenRouter something is called
    THEN each answers 502 openrouter_refused, and documents it (as it documents every other
    answer it gave on the way)."""
    api = checked.client
    writer = await checked.token(Scope.KEYS_WRITE, Scope.KEYS_READ, name="backend")
    billing = await checked.token(Scope.USERS_WRITE, name="billing")
    placed = await api.put(f"/api/users/{ALICE}", headers=billing, json={"tier": "micro"})
    assert placed.status_code == 201, placed.text
    created = await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})
    assert created.status_code == 201, created.text
    key_id = created.json()["key"]["id"]
    emulator.inject(Fault("status", status=400, times=None))

    calls: list[tuple[str, str, str, dict[str, str], object]] = [
        ("create", "POST", "/api/keys/create", writer, {"user_id": BOB}),
        ("rotate", "POST", "/api/keys/rotate", writer, {"user_id": ALICE, "grace_seconds": 0}),
        ("disable", "POST", f"/api/keys/{key_id}/disable", writer, None),
        ("revoke", "DELETE", f"/api/keys/{key_id}", writer, None),
        ("tier change", "PUT", f"/api/users/{ALICE}", billing, {"tier": "free"}),
        ("tier move", "PUT", f"/api/users/{ALICE}/tier", billing, {"tier": "micro"}),
        (
            "usage reset",
            "POST",
            "/api/admin/reset-usage",
            ADMIN,
            {"user_id": ALICE, "reason": "support ticket 42"},
        ),
    ]
    answered = {}
    for name, method, path, headers, body in calls:
        response = await api.request(method, path, headers=headers, json=body)
        answered[name] = (*_code(response), checked.transport.answers[-1].documented)

    assert answered == dict.fromkeys(answered, (502, "openrouter_refused", True))
    assert checked.transport.undocumented() == []


async def test_enabling_a_key_openrouter_refuses_to_read_is_a_documented_502(
    checked: Checked, emulator: Emulator
) -> None:
    """GIVEN a disabled key, and OpenRouter then refusing to read it (400)
    WHEN it is enabled
    THEN the answer is a documented 502 openrouter_refused."""
    api = checked.client
    writer = await checked.token(Scope.KEYS_WRITE, name="backend")
    created = await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})
    key_id = created.json()["key"]["id"]
    assert (await api.post(f"/api/keys/{key_id}/disable", headers=writer)).is_success
    emulator.inject(Fault("status", status=400, times=None))

    enabled = await api.post(f"/api/keys/{key_id}/enable", headers=writer)

    assert _code(enabled) == (502, "openrouter_refused"), enabled.text
    assert checked.transport.undocumented() == []


def _api_routes() -> list[APIRoute]:
    routers: list[APIRouter] = []
    for path in dict.fromkeys(p for paths in GROUP_ROUTERS.values() for p in paths):
        module, _, name = path.partition(":")
        routers.append(getattr(importlib.import_module(module), name))
    return [route for router in routers for route in router.routes if isinstance(route, APIRoute)]


def _called_from(endpoint: Callable[..., Any]) -> set[str]:
    """The names of what the endpoint calls, itself or through its module's own functions."""
    module = inspect.getmodule(endpoint)
    assert module is not None
    tree = ast.parse(inspect.getsource(module))
    functions = {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    called: set[str] = set()
    todo, seen = [endpoint.__name__], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Call):
                callee = node.func
                named = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", "")
                called.add(named)
                todo.append(named)
    return called


def test_every_route_that_applies_a_rate_limit_itself_documents_429(runtime: Runtime) -> None:
    """GIVEN every route, and what its endpoint calls within its module
    WHEN one applies a rate limit itself (enforce_rate_limit, as a reveal does), not through
    its access rule (which the document reads already)
    THEN its operation documents the 429."""
    document = create_app(runtime=runtime).openapi()
    limited = [
        (method, route.path_format)
        for route in _api_routes()
        if route.include_in_schema and "enforce_rate_limit" in _called_from(route.endpoint)
        for method in sorted(route.methods or ())
    ]
    assert ("GET", "/api/keys/user/{user_id}") in limited
    undocumented = [
        f"{method} {path}"
        for method, path in limited
        if "429" not in document["paths"][path][method.lower()]["responses"]
    ]
    assert undocumented == []
