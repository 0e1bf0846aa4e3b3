"""Renders every error as the one envelope of shared.errors, with the request id."""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.errors import AppError
from shared.observability import current_request_id, logger
from shared.openrouter.errors import OpenRouterError
from shared.redaction import redact

_HTTP_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": code,
        "message": redact(message),
        "request_id": current_request_id.get(),
    }
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, details), status_code=status_code, headers=headers
    )


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    if exc.status_code >= 500:
        logger.warning("request failed", extra={"error_code": exc.code, "reason": exc.message})
    return error_response(
        exc.status_code, exc.code, exc.message, details=exc.details, headers=exc.headers
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    # Only location, message and type: the offending input may itself be a secret.
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]
    return error_response(422, "validation_error", "the request is not valid", details=details)


# What a 405's Allow header is chosen from: every method a route of ours can be declared with.
_METHODS: Final = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route answers on this path. Starlette's 405 names only the methods
    of the first route whose path matched; GET and DELETE of one path are two routes."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
        # FastAPI's body parsing failed on input json.loads refuses other than by a
        # JSONDecodeError: nested deeper than it descends, or bytes that are not UTF-8.
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    code = _HTTP_STATUS_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"no route matches {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        headers["Allow"] = _allowed_methods(request)
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, code, message, headers=headers)


async def _openrouter_error(request: Request, exc: Exception) -> JSONResponse:
    # Most paths turn OpenRouter's failures into our 502 or 503 themselves; this catches any
    # that escape (a read in a saga's planning step, say), so that none becomes a 500.
    from shared.keys.domain import openrouter_answer

    assert isinstance(exc, OpenRouterError)
    return await _app_error(request, openrouter_answer(exc))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(OpenRouterError, _openrouter_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
