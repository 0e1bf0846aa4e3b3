"""Service tokens end to end: issued once, usable, listed without secrets, revoked for good."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from shared.access.principals import Principal, PrincipalKind, Scope
from shared.access.service import AccessService
from shared.access.user_tokens import TokenRejected
from shared.crypto.tokens import SERVICE_TOKEN_LENGTH, has_valid_checksum
from shared.db.database import Database
from shared.runtime import Runtime
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}


async def test_token_lifecycle_end_to_end(api: httpx.AsyncClient, database_dsn: str) -> None:
    # GIVEN the bootstrap admin issues a token for a back end
    issued = await api.post(
        "/api/admin/tokens",
        headers=ADMIN,
        json={"name": "formul8-backend", "scopes": ["keys:read", "usage:write"]},
    )
    assert issued.status_code == 201
    token = issued.json()["token"]
    info = issued.json()["token_info"]
    assert token.startswith("ora_st_")
    assert len(token) == SERVICE_TOKEN_LENGTH
    assert has_valid_checksum(token)
    assert info["created_by"] == "service:bootstrap"
    assert info["last_used_at"] is None

    # WHEN the back end uses it
    me = await api.get("/api/auth/whoami", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["scopes"] == ["keys:read", "usage:write"]
    assert me.json()["id"] == info["id"]

    # THEN it is listed with its last use, and never with the token
    listed = await api.get("/api/admin/tokens", headers=ADMIN)
    [entry] = [t for t in listed.json()["data"] if t["id"] == info["id"]]
    assert entry["last_used_at"] is not None
    assert token not in listed.text
    assert entry["token_hint"].startswith("ora_st_") and entry["token_hint"].endswith(token[-4:])

    # AND only its HMAC is stored
    async with await psycopg.AsyncConnection.connect(database_dsn) as conn:
        cursor = await conn.execute("select service_tokens::text from service_tokens")
        stored = " ".join(row[0] for row in await cursor.fetchall())
    assert token not in stored and token[7:-6] not in stored

    # WHEN it is revoked, THEN it is refused at once, and revoking again is harmless
    revoked = await api.delete(f"/api/admin/tokens/{info['id']}", headers=ADMIN)
    again = await api.delete(f"/api/admin/tokens/{info['id']}", headers=ADMIN)
    refused = await api.get("/api/auth/whoami", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 200 and revoked.json()["revoked_by"] == "service:bootstrap"
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "credential_invalid")
    active = await api.get("/api/admin/tokens", headers=ADMIN)
    assert info["id"] not in active.text
    everything = await api.get("/api/admin/tokens?include_revoked=true", headers=ADMIN)
    assert info["id"] in everything.text


async def test_an_expired_token_is_refused(runtime: Runtime, database: Database) -> None:
    access = AccessService(runtime)
    issued = await access.issue_token(
        issued_by="test", name="short-lived", scopes=[Scope.KEYS_READ], expires_at=None
    )
    async with database.connection() as conn:
        await conn.execute(
            "update service_tokens set expires_at = now() - interval '1 second' where id = %s",
            (issued.record.id,),
        )
    with pytest.raises(TokenRejected):
        await access.authenticate(issued.token)


async def test_a_token_with_a_bad_checksum_is_refused_without_a_lookup(
    runtime: Runtime,
) -> None:
    access = AccessService(runtime)
    issued = await access.issue_token(
        issued_by="test", name="x", scopes=[Scope.KEYS_READ], expires_at=None
    )
    tampered = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
    with pytest.raises(TokenRejected, match="malformed"):
        await access.authenticate(tampered)


async def test_issuing_validates_the_request(api: httpx.AsyncClient) -> None:
    unknown_scope = await api.post(
        "/api/admin/tokens", headers=ADMIN, json={"name": "x", "scopes": ["keys:everything"]}
    )
    no_scopes = await api.post("/api/admin/tokens", headers=ADMIN, json={"name": "x", "scopes": []})
    past = await api.post(
        "/api/admin/tokens",
        headers=ADMIN,
        json={"name": "x", "scopes": ["admin"], "expires_at": "2020-01-01T00:00:00Z"},
    )
    naive = await api.post(
        "/api/admin/tokens",
        headers=ADMIN,
        json={"name": "x", "scopes": ["admin"], "expires_at": "2030-01-01T00:00:00"},
    )
    assert unknown_scope.status_code == 422
    assert no_scopes.status_code == 422
    assert (past.status_code, past.json()["error"]["code"]) == (400, "expiry_in_past")
    assert naive.status_code == 422


async def test_token_issuance_is_rate_limited_per_credential(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    body = {"name": "burst", "scopes": ["usage:read"]}
    limit = runtime.settings.rate_limit_token_issues_per_minute
    answers = [
        (await api.post("/api/admin/tokens", headers=ADMIN, json=body)).status_code
        for _ in range(limit)
    ]
    refused = await api.post("/api/admin/tokens", headers=ADMIN, json=body)
    assert answers == [201] * limit
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


async def test_the_rate_limit_holds_across_concurrent_instances(
    runtime: Runtime, database_dsn: str
) -> None:
    # GIVEN eight "function instances", each with its own pool, racing for one credential
    principal = Principal(PrincipalKind.SERVICE, "racing-service")
    instances = [
        AccessService(Runtime(runtime.settings, database=Database(database_dsn))) for _ in range(8)
    ]

    # WHEN they spend 40 requests against a limit of 10 at once
    decisions = await asyncio.gather(
        *(
            instances[i % 8].consume_rate_limit("key_write", principal, per_minute=10)
            for i in range(40)
        )
    )

    # THEN exactly 10 were allowed, and the counter saw every request
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.hits for d in decisions) == list(range(1, 41))


async def test_auth_failures_are_logged_without_the_credential(
    api: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    forged = "ora_st_" + "A" * 43
    await api.get("/api/auth/whoami", headers={"Authorization": f"Bearer {forged}"})
    logged = log_stream.getvalue()
    assert '"reason":"credential_invalid"' in logged
    assert forged not in logged and "A" * 20 not in logged


@pytest.mark.integration  # runs the CLI as its own process
async def test_the_cli_issues_lists_and_revokes(database_dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env.update(APP_ENV="development", LOCAL_DATA_DIR=str(tmp_path))
    cli = [sys.executable, "-m", "shared.cli", "tokens"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args, "--dsn", database_dsn],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    issued = run("issue", "--name", "from-cli", "--scope", "admin", "--scope", "keys:read")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert has_valid_checksum(token)
    token_id = issued.stderr.split()[1]

    listed = run("list", "--json")
    assert listed.returncode == 0
    assert token not in listed.stdout
    assert token_id in listed.stdout

    revoked = run("revoke", token_id)
    missing = run("revoke", "00000000-0000-4000-8000-000000000000")
    assert revoked.returncode == 0 and f"revoked {token_id}" in revoked.stdout
    assert missing.returncode == 3 and "no service token" in missing.stderr  # not found


async def test_a_token_revoked_elsewhere_is_refused_once_the_cache_lapses(
    runtime: Runtime, database: Database
) -> None:
    """Another instance revoking a token: this one remembers it for SERVICE_TOKEN_CACHE_S."""
    access = AccessService(runtime)
    issued = await access.issue_token(
        issued_by="test", name="cached", scopes=[Scope.KEYS_READ], expires_at=None
    )
    await access.authenticate(issued.token)
    async with database.connection() as conn:  # what another instance's revoke does
        await conn.execute("update service_tokens set revoked_at = now(), revoked_by = 'elsewhere'")
    assert (await access.authenticate(issued.token)).id == str(issued.record.id)

    uncached_runtime = Runtime(
        runtime.settings.model_copy(update={"service_token_cache_s": 0}), database=database
    )
    uncached = AccessService(uncached_runtime)
    with pytest.raises(TokenRejected):
        await uncached.authenticate(issued.token)


def test_the_token_cache_forgets_after_its_ttl() -> None:
    from shared.access.token_cache import ServiceTokenCache

    now = [0.0]
    cache = ServiceTokenCache(10, clock=lambda: now[0])
    principal = Principal(PrincipalKind.SERVICE, "t1")
    cache.put(b"h", principal)
    now[0] = 9.9
    assert cache.get(b"h") == principal
    now[0] = 10.1
    assert cache.get(b"h") is None
    cache.put(b"h", principal)
    cache.forget("t1")
    assert cache.get(b"h") is None
