"""Builds the FastAPI app of one endpoint group, or of all groups for the local server.

Each deployable function imports only its own group's routers (cold start: a function imports
only what it needs), so routers are named here as import paths and loaded on demand.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Final

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from shared import __version__
from shared.access.rules import AccessRule, rule_of
from shared.config import Settings, get_settings
from shared.observability import configure_logging
from shared.runtime import Runtime
from shared.web.error_handlers import install_error_handlers
from shared.web.middleware import RequestBodyMiddleware, RequestContextMiddleware
from shared.web.openapi import install_contract_and_docs

LIVENESS = "shared.health.liveness:liveness_router"
GROUP_ROUTERS: Final[dict[str, tuple[str, ...]]] = {
    "health": (LIVENESS, "shared.health.endpoints:router"),
    "keys": (LIVENESS, "shared.access.endpoints:whoami_router", "shared.keys.endpoints:router"),
    "usage": (LIVENESS, "shared.usage.endpoints:router"),
    "admin": (
        LIVENESS,
        "shared.access.endpoints:tokens_router",
        "shared.audit.endpoints:router",
        "shared.keys.admin_endpoints:router",
        "shared.usage.admin_endpoints:router",
        "shared.users.endpoints:router",
        "shared.usage.admin_reports:router",
        "shared.jobs.admin_endpoints:router",
        "shared.dashboard.endpoints:router",
    ),
    "jobs": (LIVENESS, "shared.jobs.endpoints:router"),
    "emergency": (LIVENESS, "shared.emergency.endpoints:router"),
}
GROUPS: Final = tuple(GROUP_ROUTERS)


@dataclass(frozen=True, slots=True)
class RouteAccess:
    """One row of an app's route table: what the authorization matrix tests are built from."""

    path: str
    methods: frozenset[str]
    rule: AccessRule


def _load_router(path: str) -> APIRouter:
    module_name, _, attribute = path.partition(":")
    router = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(router, APIRouter):
        raise TypeError(f"{path} is not an APIRouter")
    return router


def create_app(
    group: str | None = None,
    *,
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    extra_routers: tuple[APIRouter, ...] = (),
) -> FastAPI:
    """The app of `group` (None: every group, for the local server)."""
    if group is not None and group not in GROUP_ROUTERS:
        raise ValueError(f"unknown endpoint group {group!r}; known: {', '.join(GROUPS)}")
    runtime = runtime or Runtime(settings or get_settings())
    configure_logging(runtime.settings.log_level)
    title = "openrouter-agent" if group is None else f"openrouter-agent: {group}"
    app = FastAPI(
        title=title,
        version=__version__,
        description="Per-user OpenRouter API keys: creation, rotation, budgets, usage, audit.",
        docs_url=None,  # served offline by install_contract_and_docs
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.group = group or "all"
    groups = GROUPS if group is None else (group,)
    # dict.fromkeys: ordered and de-duplicated (every group shares the liveness router).
    routers = [
        _load_router(path)
        for path in dict.fromkeys(p for name in groups for p in GROUP_ROUTERS[name])
    ]
    routers.extend(extra_routers)
    access_rules: list[RouteAccess] = []
    api_routes: list[APIRoute] = []
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                api_routes.append(route)
                # Raises for a route that declares no rule: nothing is open by default.
                access_rules.append(
                    RouteAccess(route.path, frozenset(route.methods or ()), rule_of(route))
                )
        app.include_router(router)
    app.state.access_rules = access_rules
    install_contract_and_docs(app, api_routes)
    install_error_handlers(app)
    # Added last runs first: the request id exists before the size check can answer.
    app.add_middleware(RequestBodyMiddleware, max_bytes=runtime.settings.max_request_body_bytes)
    if runtime.settings.cors_allowed_origins:
        # Without configured origins there is no CORS middleware at all: browsers are refused.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=runtime.settings.cors_allowed_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            allow_credentials=False,
        )
    app.add_middleware(RequestContextMiddleware)
    return app
