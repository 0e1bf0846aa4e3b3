"""The OpenAPI document as a contract, and /docs and /redoc that work without the internet.

Every operation says who may call it (the bearer scheme, on every operation that is not
public) and every error it can answer, each as the one error envelope. What follows from the
route itself is added here, once: 401 and 403 from its access rule, 429 from its rate limit,
400, 413, 415 and 422 from its body and parameters, 404 from a path parameter, 503 from
anything that reaches the database or OpenRouter. What only the route knows (a 409, a 404 for
something named in the body, a 429 of a limit it applies itself, a 502 when it asks OpenRouter
for something) it declares with `responses=answers(...)`. Schemathesis checks that every
status the API answers is documented (tests/fuzz/test_openapi_fuzz.py), and
tests/web/test_documented_errors.py the statuses only a rate limit or OpenRouter brings about.

Swagger UI's and ReDoc's assets come from the fastapi-offline package, which ships them and
follows their releases; only its files are used (its code is never imported). The few files of
other hosts that their bundles would fetch are rewritten as they are served (_REWRITES): the
pages make no request off this host.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from shared.access.rules import authorizers_of

BEARER: Final = "bearer"
ENVELOPE_REF: Final = "#/components/schemas/ErrorEnvelope"
DOCS_ASSETS: Final = "/docs/assets"


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable; the README's Errors section lists them.")
    message: str = Field(description="For a person; never holds a secret.")
    request_id: str | None = Field(description="The X-Request-ID of the response.")
    details: Any = Field(default=None, description="What the code needs said, when it does.")


class ErrorEnvelope(BaseModel):
    """Every error of every route, whatever its cause."""

    error: ErrorBody


_MEANINGS: Final[dict[int, str]] = {
    400: "The request is malformed: not JSON, a credential in the query string, a bad cursor.",
    401: "No credential, or one that is not recognised (expired, revoked, forged).",
    403: "The credential is valid but may not do this.",
    404: "What the request names does not exist (or is not the caller's to see).",
    409: "Something else is changing it, or its state does not allow this now.",
    413: "The request body is larger than MAX_REQUEST_BODY_BYTES.",
    415: "The request body is not JSON (Content-Type application/json).",
    422: "A value is not valid; details give each location, never the input.",
    429: "Too many of these from this credential; Retry-After says when to retry.",
    502: "OpenRouter refused what the request needed of it (openrouter_refused), or the key "
    "operation failed there; retrying the same request cannot help.",
    503: "The database or OpenRouter cannot be reached now; retry later.",
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The errors a route answers beyond those that follow from its shape (see module doc)."""
    return {
        status: {"description": _MEANINGS[status], "model": ErrorEnvelope} for status in statuses
    }


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _MEANINGS[status],
        "content": {"application/json": {"schema": {"$ref": ENVELOPE_REF}}},
    }


def _errors_of(route: APIRoute) -> set[int]:
    authorizers = authorizers_of(route)
    public = all(authorizer.rule.public for authorizer in authorizers)
    statuses: set[int] = set()
    if not public:
        statuses |= {400, 401, 403, 503}  # authenticating reads the database
    if any(authorizer.rate_limit is not None for authorizer in authorizers):
        statuses.add(429)
    has_body = route.body_field is not None or "requestBody" in (route.openapi_extra or {})
    if has_body:
        statuses |= {400, 413, 415, 422}
    dependant = route.dependant
    if dependant.path_params:
        statuses |= {404, 422}
    if dependant.query_params or dependant.header_params:
        statuses.add(422)
    return statuses


def contract_document(app: FastAPI, routes: Iterable[APIRoute]) -> dict[str, Any]:
    """FastAPI's document, with the security scheme and the errors on every operation."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    models: list[type[BaseModel]] = [ErrorEnvelope, *_documented_models()]
    _, definitions = models_json_schema(
        [(model, "validation") for model in models],
        ref_template="#/components/schemas/{model}",
    )
    schemas.update(definitions.get("$defs", {}))
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "A service token (ora_st_...), an end user's Supabase JWT, or, for "
            "/api/jobs/*, the CRON_SECRET.",
        }
    }
    for route in routes:
        if not route.include_in_schema:
            continue
        path = document["paths"][route.path_format]
        for method in route.methods or ():
            operation = path[method.lower()]
            responses = operation.setdefault("responses", {})
            for status in sorted(_errors_of(route)):
                responses[str(status)] = _error_response(status)
            if not all(authorizer.rule.public for authorizer in authorizers_of(route)):
                operation["security"] = [{BEARER: []}]
    # FastAPI's own 422 models describe an answer we never give: the envelope replaced them.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def _documented_models() -> tuple[type[BaseModel], ...]:
    # Bodies a route reads itself (to keep exact decimals) document their shape here.
    from shared.usage.schemas import UsageEvent, UsageEventBatch

    return (UsageEvent, UsageEventBatch)


def _assets_directory() -> Path:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastapi-offline (Swagger UI's and ReDoc's files) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


_ASSET_TYPES: Final = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


# What the bundles would fetch from another host, and what it is here instead ("{assets}": where
# this app serves the docs' files; None: JavaScript's null). A release that renames one is
# caught by tests/web/test_docs_offline.py, which reads every served asset for such URLs.
_REWRITES: Final[dict[str, tuple[tuple[str, str | None], ...]]] = {
    # ReDoc's side bar shows Redocly's logo from its CDN: the docs' own icon instead.
    "redoc.standalone.js": (
        ('"https://cdn.redoc.ly/redoc/logo-mini.svg"', "{assets}/favicon.png"),
    ),
    # Swagger UI's validator badge is an image from validator.swagger.io by default; with a
    # null validator it shows none.
    "swagger-ui-bundle.js": (('"https://validator.swagger.io/validator"', None),),
}


@lru_cache(maxsize=4)
def _rewritten(path: Path, assets_url: str) -> bytes:
    text = path.read_text(encoding="utf-8")
    for external, local in _REWRITES[path.name]:
        # json.dumps: a JavaScript string literal, whatever the root path holds.
        replacement = "null" if local is None else json.dumps(local.format(assets=assets_url))
        text = text.replace(external, replacement)
    return text.encode("utf-8")


def install_contract_and_docs(app: FastAPI, routes: list[APIRoute]) -> None:
    """Serve the contract at /openapi.json and its pages at /docs and /redoc, offline."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract_document(app, routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    assets = _assets_directory()

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger(request: Request) -> HTMLResponse:
        prefix = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{prefix}{app.openapi_url}",
            title=f"{app.title}: API",
            swagger_js_url=f"{prefix}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}{DOCS_ASSETS}/favicon.png",
            oauth2_redirect_url=f"{prefix}/docs/oauth2-redirect",
            swagger_ui_parameters={"persistAuthorization": False, "validatorUrl": None},
        )

    async def redirect(_: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        prefix = root(request)
        return get_redoc_html(
            openapi_url=f"{prefix}{app.openapi_url}",
            title=f"{app.title}: API",
            redoc_js_url=f"{prefix}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = _ASSET_TYPES.get(name)
        if media_type is None:
            from shared.web.error_handlers import error_response

            return error_response(404, "not_found", f"no asset {name}")
        if name in _REWRITES:
            url = f"{root(request)}{DOCS_ASSETS}"
            content = await run_in_threadpool(_rewritten, assets / name, url)
            return Response(content, media_type=media_type)
        return FileResponse(assets / name, media_type=media_type)

    app.router.routes.extend(
        [
            Route("/docs", swagger, methods=["GET"], include_in_schema=False),
            Route("/docs/oauth2-redirect", redirect, methods=["GET"], include_in_schema=False),
            Route("/redoc", redoc, methods=["GET"], include_in_schema=False),
            Route(f"{DOCS_ASSETS}/{{name}}", asset, methods=["GET"], include_in_schema=False),
        ]
    )
