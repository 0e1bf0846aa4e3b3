"""Every route x every kind of caller, generated from the app's own route table.

A route's expected answers follow from the one rule it declares: a caller the rule admits is
never refused (no 401/403), a caller with no valid credential gets 401, and a valid caller the
rule does not admit gets 403. A route that declares no rule cannot even be built.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import APIRouter

from shared.access.principals import Principal, PrincipalKind, Scope
from shared.access.rules import RouteWithoutAccessRule
from shared.access.service import AccessService
from shared.runtime import Runtime
from shared.web.app_factory import RouteAccess, create_app
from tests.access.signing import AuthServer, SigningKey
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN, CRON_SECRET

PATH_EXAMPLES = {"user_id": "someone", "name": "main", "tier": "free"}
PATH_EXAMPLES_BY_ROUTE = {"/admin/static/{name}": "/admin/static/dashboard.js"}
USER_A = str(uuid.uuid4())
USER_B = str(uuid.uuid4())
ADMIN_USER = str(uuid.uuid4())


@dataclass(frozen=True)
class Caller:
    name: str
    authorization: str | None
    principal: Principal | None  # who the service must see; None: no valid credential

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.authorization is None else {"Authorization": self.authorization}


async def _callers(
    runtime: Runtime, auth_server: AuthServer, signing_keys: dict[str, SigningKey]
) -> list[Caller]:
    access = AccessService(runtime)
    callers = [
        Caller("anonymous", None, None),
        Caller(
            "user A (ES256)",
            f"Bearer {auth_server.token(signing_keys['es'], user_id=USER_A)}",
            Principal(PrincipalKind.USER, USER_A),
        ),
        Caller(
            "user B (legacy HS256)",
            f"Bearer {auth_server.hs256_token(user_id=USER_B)}",
            Principal(PrincipalKind.USER, USER_B),
        ),
        Caller(
            "admin user (RS256)",
            "Bearer "
            + auth_server.token(
                signing_keys["rs"], user_id=ADMIN_USER, app_metadata={"role": "admin"}
            ),
            Principal(PrincipalKind.USER, ADMIN_USER, is_admin=True),
        ),
        Caller("expired JWT", f"Bearer {auth_server.token(exp=1)}", None),
        Caller("wrong-audience JWT", f"Bearer {auth_server.token(aud='anon')}", None),
        Caller(
            "JWT signed by another key",
            f"Bearer {auth_server.token(signing_keys['stranger'])}",
            None,
        ),
        Caller("cron secret", f"Bearer {CRON_SECRET}", Principal(PrincipalKind.CRON, "cron")),
        Caller(
            "bootstrap admin token",
            f"Bearer {BOOTSTRAP_ADMIN_TOKEN}",
            Principal(
                PrincipalKind.SERVICE, "bootstrap", is_admin=True, scopes=frozenset({Scope.ADMIN})
            ),
        ),
        Caller("garbage bearer", "Bearer not-a-credential", None),
        Caller("basic auth", "Basic dXNlcjpwYXNz", None),
    ]
    for scope in Scope:
        issued = await access.issue_token(
            issued_by="test", name=f"only {scope}", scopes=[scope], expires_at=None
        )
        callers.append(
            Caller(
                f"service token with {scope}",
                f"Bearer {issued.token}",
                Principal(
                    PrincipalKind.SERVICE,
                    str(issued.record.id),
                    is_admin=scope is Scope.ADMIN,
                    scopes=frozenset({scope}),
                ),
            )
        )
    revoked = await access.issue_token(
        issued_by="test", name="revoked", scopes=list(Scope), expires_at=None
    )
    await access.revoke_token(revoked.record.id, revoked_by="test")
    callers.append(Caller("revoked service token", f"Bearer {revoked.token}", None))
    # A token this instance verified (and cached) while it was valid, used after it expired.
    expires_at = datetime.now(UTC) + timedelta(seconds=1)
    expiring = await access.issue_token(
        issued_by="test", name="expiring", scopes=list(Scope), expires_at=expires_at
    )
    await access.authenticate(expiring.token)
    while datetime.now(UTC) <= expires_at:
        await asyncio.sleep(0.05)  # its own expiry, which must have passed: not a race
    callers.append(Caller("expired service token, cached", f"Bearer {expiring.token}", None))
    return callers


MatrixClient = tuple[httpx.AsyncClient, list[RouteAccess]]


@pytest.fixture
async def matrix_client(runtime: Runtime) -> AsyncIterator[MatrixClient]:
    app = create_app(runtime=runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        yield client, app.state.access_rules


async def test_every_route_answers_every_caller_as_its_rule_says(
    matrix_client: MatrixClient,
    runtime: Runtime,
    auth_server: AuthServer,
    signing_keys: dict[str, SigningKey],
) -> None:
    client, routes = matrix_client
    callers = await _callers(runtime, auth_server, signing_keys)
    assert len(routes) >= 8

    mismatches = []
    for route in routes:
        path = PATH_EXAMPLES_BY_ROUTE.get(route.path) or re.sub(
            r"\{(\w+)\}",
            lambda m: PATH_EXAMPLES.get(m.group(1), str(uuid.uuid4())),
            route.path,
        )
        for method in sorted(route.methods):
            for caller in callers:
                response = await client.request(
                    method,
                    path,
                    headers=caller.headers,
                    json={} if method in ("POST", "PUT") else None,
                )
                if route.rule.allows(caller.principal):
                    ok = response.status_code not in (401, 403) and response.status_code < 500
                    expected = "admitted (not 401/403/5xx)"
                else:
                    wanted = 401 if caller.principal is None else 403
                    ok = response.status_code == wanted
                    expected = str(wanted)
                if ok and response.status_code >= 400:
                    ok = "error" in response.json()  # the envelope, whatever the refusal
                if not ok:
                    mismatches.append(
                        f"{method} {route.path} as {caller.name}: {response.status_code}, "
                        f"expected {expected} ({route.rule.name})"
                    )
    assert mismatches == []


# The reviewed access policy. A new route, or a changed rule, must be added here on purpose:
# the matrix above proves the routes behave as declared, this proves they declare what we meant.
EXPECTED_RULES = {
    ("GET", "/health"): "public",
    ("GET", "/health/database"): "public",
    ("GET", "/health/keys"): "public",
    ("GET", "/api/auth/whoami"): "authenticated",
    ("POST", "/api/admin/tokens"): "admin",
    ("GET", "/api/admin/tokens"): "admin",
    ("DELETE", "/api/admin/tokens/{token_id}"): "admin",
    ("GET", "/api/jobs/prune-rate-limits"): "cron",
    ("GET", "/api/jobs/advance-key-operations"): "cron",
    ("POST", "/api/keys/create"): "services with keys:write",
    ("POST", "/api/keys/rotate"): "services with keys:write",
    ("DELETE", "/api/keys/{key_id}"): "services with keys:write",
    ("POST", "/api/keys/{key_id}/disable"): "services with keys:write",
    ("POST", "/api/keys/{key_id}/enable"): "services with keys:write",
    ("GET", "/api/keys/user/{user_id}"): "users or services with keys:read",
    ("GET", "/api/keys/user/{user_id}/history"): "users or services with keys:read",
    ("GET", "/api/keys/system/{name}"): "users or services with keys:read",
    ("GET", "/api/keys/operations/{operation_id}"): "users or services with keys:read",
    ("GET", "/api/keys/{key_id}"): "users or services with keys:read",
    ("GET", "/api/admin/audit"): "admin",
    ("GET", "/api/admin/audit/verify"): "admin",
    ("POST", "/api/admin/keys/reconcile"): "admin",
    ("GET", "/api/jobs/reconcile-keys"): "cron",
    ("GET", "/api/jobs/work"): "cron",
    ("GET", "/api/jobs/rotate-scheduled-keys"): "cron",
    ("GET", "/api/jobs/open-usage-period"): "cron",
    ("GET", "/api/jobs/measure-usage-drift"): "cron",
    ("GET", "/api/jobs/sync-usage-from-openrouter"): "cron",
    ("GET", "/api/jobs/deliver-alerts"): "cron",
    ("GET", "/api/jobs/verify-reported-usage"): "cron",
    ("GET", "/api/admin/usage"): "admin",
    ("GET", "/api/admin/usage/daily-capped"): "admin",
    ("GET", "/api/admin/keys"): "admin",
    ("POST", "/api/usage/log"): "services with usage:write",
    ("POST", "/api/admin/reset-usage"): "admin",
    ("GET", "/api/admin/tiers"): "admin",
    ("GET", "/api/admin/jobs"): "admin",
    ("GET", "/api/admin/keys/by-state"): "admin",
    ("GET", "/api/admin/emergency-rotate"): "admin",
    ("GET", "/admin"): "public",
    ("GET", "/admin/static/{name}"): "public",
    ("GET", "/api/admin/jobs/{job_id}"): "admin",
    ("PUT", "/api/admin/tiers/{tier}"): "admin",
    ("PUT", "/api/users/{user_id}"): "services with users:write",
    ("PUT", "/api/users/{user_id}/tier"): "services with users:write",
    ("POST", "/api/users/{user_id}/budget-increases"): "services with users:write",
    ("GET", "/api/users/{user_id}/budget-increases"): "services with users:write",
    ("GET", "/api/admin/tiers/policies"): "admin",
    ("PUT", "/api/admin/tiers/{tier}/policy"): "admin",
    ("GET", "/api/usage/{user_id}"): "users or services with usage:read",
    ("GET", "/api/usage/{user_id}/monthly"): "users or services with usage:read",
    ("POST", "/api/admin/emergency-rotate"): "admin",
    ("GET", "/api/admin/emergency-rotate/{rotation_id}"): "admin",
}


async def test_every_route_declares_the_reviewed_rule(
    matrix_client: MatrixClient,
) -> None:
    _, routes = matrix_client
    declared = {(m, r.path): r.rule.name for r in routes for m in r.methods}
    assert declared == EXPECTED_RULES


async def test_a_route_without_a_rule_cannot_be_built(runtime: Runtime) -> None:
    forgotten = APIRouter()

    @forgotten.get("/api/keys/forgotten")
    async def forgotten_route() -> dict[str, str]:
        return {}

    with pytest.raises(RouteWithoutAccessRule, match="/api/keys/forgotten"):
        create_app(runtime=runtime, extra_routers=(forgotten,))


async def test_refusals_carry_codes_and_www_authenticate(
    api: httpx.AsyncClient, auth_server: AuthServer
) -> None:
    anonymous = await api.get("/api/auth/whoami")
    expired = await api.get(
        "/api/auth/whoami", headers={"Authorization": f"Bearer {auth_server.token(exp=1)}"}
    )
    user = await api.get(
        "/api/admin/tokens", headers={"Authorization": f"Bearer {auth_server.token()}"}
    )
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (
        401,
        "authentication_required",
    )
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert (expired.status_code, expired.json()["error"]["code"]) == (401, "token_expired")
    assert (user.status_code, user.json()["error"]["code"]) == (403, "forbidden")


async def test_whoami_reports_the_verified_identity(
    api: httpx.AsyncClient, auth_server: AuthServer
) -> None:
    token = auth_server.token(user_id=USER_A, app_metadata={"role": "admin"})
    body = (await api.get("/api/auth/whoami", headers={"Authorization": f"Bearer {token}"})).json()
    assert body == {"kind": "user", "id": USER_A, "is_admin": True, "scopes": [], "name": None}


# ----- tiers: whichever route sets one, only admins and users:write may -------------------------

TIER_ROUTES = [
    ("POST", "/api/keys/create", lambda user: {"user_id": user, "tier": "admin"}),
    ("PUT", "/api/users/{user}", lambda user: {"tier": "admin"}),
    ("PUT", "/api/users/{user}/tier", lambda user: {"tier": "admin"}),
]


@pytest.mark.parametrize(("method", "path", "body"), TIER_ROUTES)
async def test_no_route_lets_a_caller_who_may_not_set_tiers_set_one(
    matrix_client: MatrixClient, runtime: Runtime, method: str, path: str, body: object
) -> None:
    client, _ = matrix_client
    access = AccessService(runtime)
    for scopes in [[s] for s in Scope] + [[Scope.KEYS_WRITE, Scope.KEYS_READ, Scope.USAGE_WRITE]]:
        # GIVEN a free user with no key (a create may run), and a caller with these scopes
        user = f"tiered-{uuid.uuid4().hex[:8]}"
        async with runtime.database().connection() as conn:
            await conn.execute(
                "insert into users (user_id, tier, updated_by) values (%s, 'free', 't')", (user,)
            )
        issued = await access.issue_token(
            issued_by="test", name="tier probe", scopes=scopes, expires_at=None
        )
        response = await client.request(
            method,
            path.format(user=user),
            headers={"Authorization": f"Bearer {issued.token}"},
            json=body(user),  # type: ignore[operator]
        )
        async with runtime.database().connection() as conn:
            cursor = await conn.execute("select tier from users where user_id = %s", (user,))
            tier = (await cursor.fetchone() or {}).get("tier")
        may = Scope.ADMIN in scopes or (
            Scope.USERS_WRITE in scopes and path.startswith("/api/users")
        )
        names = "+".join(scopes)
        if may:
            assert response.status_code in (200, 201), f"{names}: {response.text}"
            assert tier == "admin", names
        else:
            assert response.status_code == 403, f"{names} {method} {path}: {response.status_code}"
            assert tier == "free", f"{names} changed the tier through {method} {path}"
