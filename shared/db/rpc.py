"""Two ways to call the store's SQL functions (schema/migrations/0007_store_functions.sql).

Each store function takes one JSON object and returns JSON. `PostgresRpc` calls it over our
psycopg pool (`select store_x($1::jsonb)`); `PostgrestRpc` calls it through Supabase's REST
gateway (POST /rest/v1/rpc/store_x), which needs no database connection from the function:
no driver import, no connection limit to share between thousands of warm Lambda containers.

Both parse numbers as Decimal (money never passes through a float) and raise the same errors:
`StoreRefused` carrying the SQLSTATE when the database refuses a call, and
`DatabaseUnavailable` when it cannot be reached.

The Supabase transport is our own ~100 lines of httpx rather than supabase-py or postgrest-py:
those decode JSON numbers as floats, retry POSTs on their own, and cost 25-180 ms of cold start
(../shared/reference/serverless-and-style.md §5.5); what they would add here is nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from shared.db.database import Database, DatabaseUnavailable
from shared.errors import ServiceUnavailable
from shared.redaction import redact

if TYPE_CHECKING:
    import httpx

_FUNCTION_NAME = re.compile(r"^store_[a-z0-9_]{1,60}$")
# Connection exceptions, insufficient resources, operator intervention (statement timeout,
# shutdown): the database's state, not the call's fault.
_UNAVAILABLE_CLASSES = ("08", "53", "57")


class StoreRefused(Exception):
    """The database refused the call: a constraint, a bad value, a missing function."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message

    @property
    def is_bad_data(self) -> bool:
        """Data exceptions (22xxx) and integrity violations (23xxx): the input's fault."""
        return self.sqlstate[:2] in ("22", "23")


class StoreRpc(Protocol):
    """Calls one store function with one JSON object; returns its JSON result."""

    @property
    def transport(self) -> str: ...

    async def call(self, function: str, args: Mapping[str, Any]) -> Any: ...


def _to_json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # a string keeps every digit; the SQL casts it back to numeric
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot send {type(value).__name__} to the store")


def encode_args(args: Mapping[str, Any]) -> str:
    return json.dumps(args, default=_to_json, separators=(",", ":"))


def decode_result(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def _checked(function: str) -> str:
    if not _FUNCTION_NAME.match(function):
        raise ValueError(f"not a store function: {function!r}")
    return function


class PostgresRpc:
    """Store calls over a direct Postgres connection (the embedded database or any DSN)."""

    transport = "postgres"

    def __init__(self, database: Database) -> None:
        self._database = database

    async def call(self, function: str, args: Mapping[str, Any]) -> Any:
        import psycopg  # already loaded with Database; kept local to keep this module light

        # The name is checked against a strict pattern, so it can be part of the statement.
        statement = f"select {_checked(function)}(%s::jsonb)::text as result"
        async with self._database.connection() as conn:
            try:
                cursor = await conn.execute(statement.encode(), (encode_args(args),))
            except psycopg.Error as error:
                if error.sqlstate is None or error.sqlstate[:2] in _UNAVAILABLE_CLASSES:
                    raise DatabaseUnavailable(
                        "the database connection failed",
                        details={"reason": redact(str(error))},
                    ) from error
                raise StoreRefused(error.sqlstate or "XX000", str(error)) from error
            row = await cursor.fetchone()
        text = None if row is None else row["result"]
        return None if text is None else decode_result(str(text))


class SupabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"


class PostgrestRpc:
    """Store calls through Supabase's PostgREST gateway, authenticated as the service role."""

    transport = "supabase"

    def __init__(
        self,
        supabase_url: str,
        service_role_key: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = supabase_url.rstrip("/") + "/rest/v1/rpc/"
        self._headers = rpc_headers(service_role_key)
        self._timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        # Made on first use (its TLS context costs ~60 ms) and reused while the container lives.
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._base_url,
                headers=self._headers,
                timeout=self._timeout_s,
                transport=self._transport,
            )
        return self._client

    async def call(self, function: str, args: Mapping[str, Any]) -> Any:
        import httpx

        try:
            response = await self._http().post(
                _checked(function), content=encode_args(args).encode()
            )
        except httpx.TransportError as error:
            raise SupabaseUnavailable(
                "Supabase could not be reached", details={"reason": type(error).__name__}
            ) from error
        if response.status_code == 204 or not response.content:
            return None
        if response.status_code < 300:
            return decode_result(response.content)
        raise _error_from(response)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def rpc_headers(service_role_key: str) -> dict[str, str]:
    """The gateway wants the key as `apikey`. A legacy service-role key is a JWT and also goes
    in Authorization, where PostgREST reads the role from it; a new secret key (`sb_secret_…`)
    is no JWT, and sending it there is refused (supabase-py #1228), so the gateway maps it."""
    headers = {
        "apikey": service_role_key,
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    if service_role_key.count(".") == 2:
        headers["Authorization"] = f"Bearer {service_role_key}"
    return headers


def _error_from(response: httpx.Response) -> Exception:
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = str(body.get("code") or "") if isinstance(body, dict) else ""
    message = str(body.get("message") or "") if isinstance(body, dict) else ""
    status = response.status_code
    # PostgREST's own errors (PGRSTxxx) and auth refusals are our configuration's fault or the
    # gateway's, not the caller's: the store is unavailable to us.
    if status in (401, 403) or status >= 500 or not code or code.startswith("PGRST"):
        return SupabaseUnavailable(
            "Supabase refused or failed the call",
            details={"status": status, "code": code or None, "reason": redact(message)[:200]},
        )
    return StoreRefused(code, message)
