"""The exceptions found by probing access control from outside (issue 14), one test each."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.audit.repository import AuditRepository
from shared.db.database import Database
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from shared.users.domain import write_user
from shared.users.repository import UserRepository
from shared.users.service import UsersService
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
TokenMaker = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
def token(runtime: Runtime) -> TokenMaker:
    async def make(
        *scopes: Scope, name: str = "probe", expires_at: datetime | None = None
    ) -> dict[str, str]:
        issued = await AccessService(runtime).issue_token(
            issued_by="test", name=name, scopes=list(scopes), expires_at=expires_at
        )
        return {"Authorization": f"Bearer {issued.token}"}

    return make


async def _audit_actions(database: Database) -> list[tuple[str, str, str | None]]:
    async with database.connection() as conn:
        cursor = await conn.execute("select actor, action, target from audit_log order by seq")
        return [(str(r["actor"]), str(r["action"]), r["target"]) for r in await cursor.fetchall()]  # type: ignore[misc]


# ----- 1. a cache may shorten a credential's life, never lengthen it --------------------------


async def test_an_expired_service_token_stops_working_even_on_an_instance_that_cached_it(
    api: httpx.AsyncClient, token: TokenMaker
) -> None:
    expires_at = datetime.now(UTC) + timedelta(seconds=1)
    caller = await token(Scope.KEYS_READ, expires_at=expires_at)
    assert (await api.get("/api/auth/whoami", headers=caller)).status_code == 200  # cached now
    while datetime.now(UTC) <= expires_at:
        await asyncio.sleep(0.05)  # the token's own expiry, not a race: it must have passed
    refused = await api.get("/api/auth/whoami", headers=caller)
    assert refused.status_code == 401, refused.text


# ----- 2. tiers are set only by those who may -------------------------------------------------


async def test_a_key_writer_cannot_give_a_user_another_tier_through_create(
    api: httpx.AsyncClient, token: TokenMaker, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    # GIVEN a free user, and a service that may write keys but not change tiers
    issued = await keys.create_key(Owner.user("victim"), actor="t", tier="free")
    writer = await token(Scope.KEYS_WRITE)
    revoked = await api.delete(f"/api/keys/{issued.key.id}", headers=writer)
    assert revoked.status_code == 200

    # WHEN it creates the user's next key asking for the unlimited tier
    escalated = await api.post(
        "/api/keys/create", headers=writer, json={"user_id": "victim", "tier": "admin"}
    )

    # THEN it is refused, and the user is still free
    assert escalated.status_code == 403, escalated.text
    assert escalated.json()["error"]["code"] == "tier_change_forbidden"
    shown = await api.post("/api/keys/create", headers=writer, json={"user_id": "victim"})
    assert shown.status_code == 201 and Decimal(shown.json()["key"]["limit_usd"]) == 10
    # nor can it place a new user on a tier
    new = await api.post(
        "/api/keys/create", headers=writer, json={"user_id": "newcomer", "tier": "enterprise"}
    )
    assert (new.status_code, new.json()["error"]["code"]) == (403, "tier_change_forbidden")


async def test_a_tier_set_at_create_is_audited_like_a_tier_change(
    api: httpx.AsyncClient, database: Database
) -> None:
    created = await api.post(
        "/api/keys/create", headers=ADMIN, json={"user_id": "placed", "tier": "micro"}
    )
    assert created.status_code == 201
    actions = await _audit_actions(database)
    assert ("service:bootstrap", "user.tier_changed", "user:placed") in actions


# ----- 3. no input leaves a row that breaks a later read ---------------------------------------


@pytest.mark.parametrize(
    "expires_at",
    [
        "9999-12-31T23:59:59-23:59",  # the year 10000 once in UTC
        (datetime.now(UTC) + timedelta(days=3 * 365)).isoformat(),  # beyond the maximum life
    ],
)
async def test_a_token_expiry_beyond_what_may_be_stored_is_refused(
    api: httpx.AsyncClient, expires_at: str
) -> None:
    issued = await api.post(
        "/api/admin/tokens",
        headers=ADMIN,
        json={"name": "far", "scopes": ["keys:read"], "expires_at": expires_at},
    )
    assert issued.status_code == 422, issued.text
    assert issued.json()["error"]["code"] in ("expiry_too_far", "validation_error")
    listed = await api.get("/api/admin/tokens", headers=ADMIN)
    assert listed.status_code == 200


# ----- 4. admin actions are audited, and the audit numbering reads true ------------------------


@pytest.mark.integration  # runs the CLI as its own process
async def test_issuing_and_revoking_tokens_and_changing_a_tier_budget_are_audited(
    api: httpx.AsyncClient, database: Database, database_dsn: str, tmp_path: Path
) -> None:
    issued = await api.post(
        "/api/admin/tokens", headers=ADMIN, json={"name": "svc", "scopes": ["usage:write"]}
    )
    token_id = issued.json()["token_info"]["id"]
    await api.delete(f"/api/admin/tokens/{token_id}", headers=ADMIN)
    await api.put(
        "/api/admin/tiers/micro",
        headers=ADMIN,
        json={"monthly_budget_usd": "120", "reason": "price change"},
    )
    # and from the command line
    env = {"APP_ENV": "development", "LOCAL_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "shared.cli", "tokens", "issue", "--name", "cli-admin"]
    subprocess.run(
        [*command, "--scope", "admin", "--dsn", database_dsn],
        env=env,
        capture_output=True,
        check=True,
    )
    actions = await _audit_actions(database)
    assert ("service:bootstrap", "token.issued", f"token:{token_id}") in actions
    assert ("service:bootstrap", "token.revoked", f"token:{token_id}") in actions
    assert ("service:bootstrap", "tier.budget_changed", "tier:micro") in actions
    assert any(a == "token.issued" and actor.startswith("cli:") for actor, a, _ in actions)
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select reason, details from audit_log where action = 'tier.budget_changed'"
        )
        row = await cursor.fetchone()
    assert row is not None and row["reason"] == "price change"
    assert row["details"] == {"from": "100", "to": "120"}


async def test_audit_rows_are_numbered_without_gaps(
    keys: KeyLifecycleService, database: Database
) -> None:
    await keys.create_key(Owner.user("numbered"), actor="t")
    await keys.rotate_key(Owner.user("numbered"), actor="t", grace_seconds=0)
    async with database.connection() as conn:
        cursor = await conn.execute("select seq from audit_log order by seq")
        seqs = [int(r["seq"]) for r in await cursor.fetchall()]  # type: ignore[call-overload]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


# ----- 5. users:write: the subscription system's least privilege -------------------------------


async def test_the_subscription_scope_creates_and_moves_users_and_nothing_else(
    api: httpx.AsyncClient, token: TokenMaker, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    subscriptions = await token(Scope.USERS_WRITE, name="billing")

    created = await api.put(
        "/api/users/subscriber", headers=subscriptions, json={"tier": "standard"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["tier"] == "standard"
    again = await api.put("/api/users/subscriber", headers=subscriptions, json={"tier": "standard"})
    assert again.status_code == 200
    # the user's first key gets the tier the subscription system set
    await keys.create_key(Owner.user("subscriber"), actor="t")
    assert emulator.user_keys()[0].limit == Decimal(50)
    moved = await api.put(
        "/api/users/subscriber/tier", headers=subscriptions, json={"tier": "micro"}
    )
    assert moved.status_code == 200 and moved.json()["key_limit_status"] == "applied"
    assert emulator.user_keys()[0].limit == Decimal(100)

    for method, path, body in [
        ("POST", "/api/keys/create", {"user_id": "other"}),
        ("GET", "/api/keys/user/subscriber", None),
        ("GET", "/api/usage/subscriber", None),
        ("POST", "/api/admin/reset-usage", {"user_id": "subscriber", "reason": "no"}),
        ("PUT", "/api/admin/tiers/free", {"monthly_budget_usd": "1"}),
        ("GET", "/api/admin/tokens", None),
    ]:
        refused = await api.request(method, path, headers=subscriptions, json=body)
        assert refused.status_code == 403, f"{method} {path}: {refused.status_code}"


async def _waits_on_a_lock(database: Database, task: asyncio.Task[object]) -> bool:
    """True once another backend is seen waiting on a lock, False if the task ends first."""
    async with database.connection() as conn:
        while not task.done():
            cursor = await conn.execute(
                "select count(*) as n from pg_stat_activity"
                " where wait_event_type = 'Lock' and pid <> pg_backend_pid()"
            )
            row = await cursor.fetchone()
            if row is not None and int(row["n"]) > 0:  # type: ignore[call-overload]
                return True
            await asyncio.sleep(0.01)  # polling an observable state, not waiting out a race
    return False


async def test_a_second_writer_of_a_user_not_yet_created_waits_for_the_first(
    runtime: Runtime, database: Database
) -> None:
    # GIVEN a key writer creating a user nobody has seen (their first key, as "free"),
    # holding the user in its transaction
    async with database.connection() as conn, conn.transaction():
        users = UserRepository(conn)
        assert await users.lock("newcomer") is None

        # WHEN the subscription system puts the same user on beta meanwhile
        subscription = asyncio.create_task(
            UsersService(runtime).put(
                "newcomer",
                tier="beta",
                rotation_policy=None,
                actor="billing",
                reason=None,
                request_id=None,
            )
        )
        # THEN it waits for the first writer instead of creating the user a second time
        assert await _waits_on_a_lock(database, subscription)
        await write_user(
            users,
            AuditRepository(conn),
            "newcomer",
            tier="free",
            rotation_policy=None,
            actor="agent",
            may_change_tier=False,
        )
    written = await subscription

    # and the user ends on beta, created once, the change from free audited as a change
    assert written.change.before is not None and written.change.before.tier == "free"
    assert written.change.after.tier == "beta"
    actions = [a for a in await _audit_actions(database) if a[2] == "user:newcomer"]
    assert actions == [
        ("agent", "user.created", "user:newcomer"),
        ("billing", "user.tier_changed", "user:newcomer"),
    ]


# ----- 6. reveal needs keys:reveal, admins included ---------------------------------------------


async def test_revealing_a_key_needs_the_reveal_scope_even_for_admins(
    api: httpx.AsyncClient, token: TokenMaker, keys: KeyLifecycleService
) -> None:
    await keys.create_key(Owner.user("secretive"), actor="t")
    admin_token = await token(Scope.ADMIN, name="ops")
    revealer = await token(Scope.KEYS_READ, Scope.KEYS_REVEAL, name="agent")
    for caller in (ADMIN, admin_token):
        refused = await api.get("/api/keys/user/secretive?reveal=true", headers=caller)
        assert (refused.status_code, refused.json()["error"]["code"]) == (
            403,
            "reveal_not_allowed",
        )
    allowed = await api.get("/api/keys/user/secretive?reveal=true", headers=revealer)
    assert allowed.status_code == 200 and allowed.json()["secret"] is not None
