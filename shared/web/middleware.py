"""Pure ASGI middleware (BaseHTTPMiddleware costs a task per request and breaks contextvars)."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import REQUEST_LATENCY, flush_metrics, milliseconds
from shared.observability import current_request_id, logger, new_request_id
from shared.web.error_handlers import error_body, error_response

REQUEST_ID_HEADER = "x-request-id"
# Vercel's id for the invocation: the correlation id its own logs show.
VERCEL_REQUEST_ID_HEADER = "x-vercel-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:=+/\-]{1,128}$")
# An API that hands out secrets: nothing may be cached, sniffed or leaked through a referrer.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def refused_by_the_database(error: BaseException) -> str | None:
    """Why the database refused a value from the request, if that is what happened: a data
    exception (SQLSTATE class 22, or the driver refusing a NUL byte in text) or text that
    cannot be encoded (a lone surrogate). Input, not a fault of ours: the backstop that keeps
    it from becoming a 500."""
    if isinstance(error, UnicodeEncodeError):
        return "text that is not valid UTF-8"
    psycopg = sys.modules.get("psycopg")  # loaded if the error can be one of its own
    if psycopg is not None and isinstance(error, psycopg.DataError):
        # Class 22 from the server, or the driver refusing to send a value (no SQLSTATE).
        return f"SQLSTATE {error.sqlstate}" if error.sqlstate else "a value the driver refuses"
    return None


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
        if name == VERCEL_REQUEST_ID_HEADER.encode():
            vercel_id: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(vercel_id):
                return vercel_id
    aws_event: dict[str, Any] = scope.get("aws.event") or {}
    lambda_request_id = (aws_event.get("requestContext") or {}).get("requestId")
    if isinstance(lambda_request_id, str) and _VALID_REQUEST_ID.match(lambda_request_id):
        return lambda_request_id
    return new_request_id()


class RequestContextMiddleware:
    """Request id on every response and log line, one access log line, security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        token = current_request_id.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                headers.extend(SECURITY_HEADERS)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as error:
            # Handled here rather than by Starlette's ServerErrorMiddleware, which sits outside
            # every user middleware and would answer without the request id or the envelope.
            refused = refused_by_the_database(error)
            if refused is None:
                logger.exception("unhandled error")
            else:
                logger.warning("input refused by the database", extra={"reason": refused})
            if response_started:
                raise
            response = (
                error_response(500, "internal_error", "an unexpected error occurred")
                if refused is None
                else error_response(
                    422,
                    "invalid_input",
                    "a value in this request cannot be stored",
                    details={"reason": refused},
                )
            )
            await response(scope, receive, send_with_headers)
        finally:
            # The path is logged, never the query string: credentials do not belong there,
            # but if a caller put one there it must not reach the logs.
            logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
            milliseconds(REQUEST_LATENCY, (time.perf_counter() - started) * 1000)
            flush_metrics()
            current_request_id.reset(token)


class RequestBodyMiddleware:
    """Every request body is JSON, and at most max_bytes: a body of another type is refused
    with 415 before any route runs (a browser may send text/plain across origins without
    asking), a larger one with 413, by Content-Length or by counting a streamed body."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, content_type, streamed = 0, "", False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
            elif name == b"content-type":
                content_type = value.decode("latin-1").split(";")[0].strip().lower()
            elif name == b"transfer-encoding":
                streamed = True
        if declared > self.max_bytes:
            await self._refuse(send, 413, "payload_too_large", self._message())
            return
        if (declared > 0 or streamed) and not _is_json(content_type):
            await self._refuse(
                send,
                415,
                "unsupported_media_type",
                "request bodies are JSON: send Content-Type: application/json",
            )
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading as is; the envelope
                    # handler renders it.
                    raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, send: Send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )
