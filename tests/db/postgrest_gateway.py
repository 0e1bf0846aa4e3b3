"""A PostgREST-compatible RPC endpoint on the embedded PostgreSQL, as an httpx transport.

It does for POST /rest/v1/rpc/<function> what Supabase's gateway and PostgREST do, so that the
Supabase transport is tested against the real SQL functions, roles and grants:

- the gateway (Kong) wants the project's `apikey`; a legacy key is a JWT and comes again as
  `Authorization: Bearer`, a new secret key (`sb_secret_...`) alone, mapped to service_role;
- PostgREST verifies the JWT (HS256, the project's secret), then in one transaction switches
  to the JWT's role (`set local role`), sets `request.jwt.claims`, and makes the transaction
  read-only for a STABLE or IMMUTABLE function;
- a function with a single unnamed json/jsonb parameter receives the request body as it is;
- errors come back as {code, message, details, hint} with PostgREST's status for the SQLSTATE.

Nothing here is imported by the service.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jwt
import psycopg

RPC_PATH = re.compile(r"^/rest/v1/rpc/(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")
NEW_SECRET_KEY_PREFIX = "sb_secret_"


def _status_for(sqlstate: str, role: str) -> int:
    """PostgREST's table of SQLSTATE to HTTP status (docs: references/errors)."""
    exact = {
        "23503": 409,
        "23505": 409,
        "25006": 405,
        "P0001": 400,
        "42883": 404,
        "42P01": 404,
        "42501": 401 if role == "anon" else 403,
    }
    if sqlstate in exact:
        return exact[sqlstate]
    by_class = {
        "08": 503,
        "09": 500,
        "0L": 403,
        "0P": 403,
        "25": 500,
        "28": 403,
        "2D": 500,
        "38": 500,
        "39": 500,
        "3B": 500,
        "40": 500,
        "53": 503,
        "54": 500,
        "55": 500,
        "57": 500,
        "58": 500,
        "F0": 500,
        "HV": 500,
        "P0": 500,
        "XX": 500,
    }
    return by_class.get(sqlstate[:2], 400)


def _error(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    body = {"code": code, "message": message, "details": None, "hint": None, **extra}
    return httpx.Response(status, json=body)


class PostgrestGateway(httpx.AsyncBaseTransport):
    def __init__(self, dsn: str, *, jwt_secret: str, api_keys: set[str]) -> None:
        self._dsn = dsn
        self._jwt_secret = jwt_secret
        self._api_keys = api_keys
        self.calls: list[tuple[str, str]] = []  # (function, role) of every call that ran

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        match = RPC_PATH.match(request.url.path)
        if match is None:
            return _error(404, "PGRST125", "Invalid path specified in request URL")
        if request.method != "POST":
            return _error(405, "PGRST101", "only POST is served here")
        api_key = request.headers.get("apikey")
        if api_key not in self._api_keys:
            return httpx.Response(401, json={"message": "Invalid API key"})
        claims = self._claims(request, api_key)
        if isinstance(claims, httpx.Response):
            return claims
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return _error(415, "PGRST107", "The request's Content-Type is not acceptable")
        body = (await request.aread()).decode()
        try:
            json.loads(body)
        except ValueError:
            return _error(400, "PGRST102", "Empty or invalid json")
        return await self._call(match["function"], body, claims)

    def _claims(self, request: httpx.Request, api_key: str) -> dict[str, Any] | httpx.Response:
        authorization = request.headers.get("authorization")
        if authorization is None:
            if api_key.startswith(NEW_SECRET_KEY_PREFIX):
                return {"role": "service_role"}  # what the gateway puts in for a secret key
            return {"role": "anon"}
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.count(".") != 2:
            return _error(401, "PGRST301", "Expected 3 parts in JWT; got 1")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
        except jwt.InvalidTokenError as error:
            return _error(401, "PGRST301", str(error))
        return claims

    async def _call(self, function: str, body: str, claims: dict[str, Any]) -> httpx.Response:
        role = str(claims.get("role", "anon"))
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            volatility = await self._single_json_function(conn, function)
            if volatility is None:
                return _error(
                    404,
                    "PGRST202",
                    f"Could not find the function public.{function} in the schema cache",
                )
            try:
                async with conn.transaction():
                    if volatility in ("s", "i"):
                        await conn.execute("set transaction read only")
                    await conn.execute("select set_config('role', %s, true)", (role,))
                    await conn.execute(
                        "select set_config('request.jwt.claims', %s, true),"
                        " set_config('request.method', 'POST', true),"
                        " set_config('request.path', %s, true)",
                        (json.dumps(claims), f"/rpc/{function}"),
                    )
                    cursor = await conn.execute(
                        f'select public."{function}"(%s::jsonb)::text', (body,)
                    )
                    row = await cursor.fetchone()
            except psycopg.Error as error:
                diag = error.diag
                sqlstate = error.sqlstate or "XX000"
                return _error(
                    _status_for(sqlstate, role),
                    sqlstate,
                    diag.message_primary or str(error),
                    details=diag.message_detail,
                    hint=diag.message_hint,
                )
        self.calls.append((function, role))
        text = None if row is None else row[0]
        return httpx.Response(
            200,
            content=(text or "null").encode(),
            headers={"content-type": "application/json; charset=utf-8"},
        )

    @staticmethod
    async def _single_json_function(conn: psycopg.AsyncConnection[Any], name: str) -> str | None:
        """The volatility of public.<name>(json|jsonb) with an unnamed parameter, if it exists."""
        cursor = await conn.execute(
            "select p.provolatile from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'public' and p.proname = %s and p.pronargs = 1"
            " and p.proargtypes[0] in ('json'::regtype, 'jsonb'::regtype)"
            " and coalesce(p.proargnames[1], '') = ''",
            (name,),
        )
        row = await cursor.fetchone()
        return None if row is None else str(row[0])
