"""The keys function over HTTP, as the multi-agent platform and its users call it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal

import httpx
import pytest

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.db.database import Database
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import Runtime
from tests.access.signing import AuthServer

TokenMaker = Callable[..., Awaitable[dict[str, str]]]
ALICE = "7d8f3c7e-4f2a-4a8b-9c1d-2e3f4a5b6c7d"


@pytest.fixture
def service_token(runtime: Runtime) -> TokenMaker:
    async def make(*scopes: Scope, name: str = "backend") -> dict[str, str]:
        issued = await AccessService(runtime).issue_token(
            issued_by="test", name=name, scopes=list(scopes), expires_at=None
        )
        return {"Authorization": f"Bearer {issued.token}"}

    return make


async def test_a_backend_creates_a_key_and_gets_the_secret_once(
    api: httpx.AsyncClient, service_token: TokenMaker, emulator: Emulator
) -> None:
    # the subscription system puts the user on their tier; the backend makes their key
    subscriptions = await service_token(Scope.USERS_WRITE, name="billing")
    placed = await api.put(f"/api/users/{ALICE}", headers=subscriptions, json={"tier": "micro"})
    assert placed.status_code == 201
    writer = await service_token(Scope.KEYS_WRITE, Scope.KEYS_READ)
    created = await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})
    assert created.status_code == 201
    body = created.json()
    assert body["secret"] == emulator.user_keys()[0].secret
    assert Decimal(body["key"]["limit_usd"]) == 100
    assert body["operation"]["status"] == "completed"
    # reading it back never shows the secret without the reveal scope
    read = await api.get(f"/api/keys/user/{ALICE}", headers=writer)
    assert read.status_code == 200
    assert read.json()["secret"] is None
    assert body["secret"] not in read.text
    refused = await api.get(f"/api/keys/user/{ALICE}?reveal=true", headers=writer)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "reveal_not_allowed")


async def test_reveal_is_for_the_reveal_scope_and_is_audited(
    api: httpx.AsyncClient, service_token: TokenMaker, emulator: Emulator, database: Database
) -> None:
    writer = await service_token(Scope.KEYS_WRITE)
    revealer = await service_token(Scope.KEYS_READ, Scope.KEYS_REVEAL, name="agent-runtime")
    await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})

    revealed = await api.get(f"/api/keys/user/{ALICE}?reveal=true", headers=revealer)

    assert revealed.status_code == 200
    assert revealed.json()["secret"] == emulator.user_keys()[0].secret
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select actor, request_id from audit_log where action = 'key.revealed'"
        )
        [row] = await cursor.fetchall()
    assert str(row["actor"]).startswith("service:")
    assert row["request_id"] == revealed.headers["x-request-id"]


async def test_users_read_their_own_key_and_no_one_elses(
    api: httpx.AsyncClient, service_token: TokenMaker, auth_server: AuthServer
) -> None:
    writer = await service_token(Scope.KEYS_WRITE)
    await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})
    alice = {"Authorization": f"Bearer {auth_server.token(user_id=ALICE)}"}
    mallory = {"Authorization": f"Bearer {auth_server.token()}"}

    own = await api.get(f"/api/keys/user/{ALICE}", headers=alice)
    others = await api.get(f"/api/keys/user/{ALICE}", headers=mallory)
    by_id = await api.get(f"/api/keys/{own.json()['key']['id']}", headers=mallory)
    reveal = await api.get(f"/api/keys/user/{ALICE}?reveal=true", headers=alice)
    rotate = await api.post("/api/keys/rotate", headers=alice, json={"user_id": ALICE})

    assert own.status_code == 200 and own.json()["key"]["user_id"] == ALICE
    assert others.status_code == 404
    assert by_id.status_code == 404
    assert reveal.status_code == 403
    assert rotate.status_code == 403


async def test_rotation_over_http_with_an_idempotency_key(
    api: httpx.AsyncClient, service_token: TokenMaker, emulator: Emulator
) -> None:
    writer = await service_token(Scope.KEYS_WRITE, Scope.KEYS_READ)
    await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})
    headers = {**writer, "Idempotency-Key": "rotate-2026-11"}
    body = {"user_id": ALICE, "grace_seconds": 0, "reason": "monthly"}

    first = await api.post("/api/keys/rotate", headers=headers, json=body)
    retry = await api.post("/api/keys/rotate", headers=headers, json=body)

    assert first.status_code == retry.status_code == 200
    assert first.json()["key"]["id"] == retry.json()["key"]["id"]
    assert first.json()["secret"] == retry.json()["secret"] == emulator.user_keys()[0].secret
    assert len(emulator.user_keys()) == 1
    operation = await api.get(
        f"/api/keys/operations/{first.json()['operation']['id']}", headers=writer
    )
    assert operation.json()["status"] == "completed"
    history = await api.get(f"/api/keys/user/{ALICE}/history", headers=writer)
    assert [k["state"] for k in history.json()["data"]] == ["current", "revoked"]


async def test_revoke_disable_and_enable(
    api: httpx.AsyncClient, service_token: TokenMaker, emulator: Emulator
) -> None:
    writer = await service_token(Scope.KEYS_WRITE)
    created = (await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})).json()
    key_id = created["key"]["id"]

    disabled = await api.post(f"/api/keys/{key_id}/disable", headers=writer)
    assert disabled.json()["disabled"] is True and emulator.user_keys()[0].disabled
    enabled = await api.post(f"/api/keys/{key_id}/enable", headers=writer)
    assert enabled.json()["disabled"] is False and not emulator.user_keys()[0].disabled

    revoked = await api.delete(f"/api/keys/{key_id}?reason=offboarded", headers=writer)
    again = await api.delete(f"/api/keys/{key_id}", headers=writer)
    assert revoked.json()["state"] == again.json()["state"] == "revoked"
    assert emulator.user_keys() == []
    assert (await api.post(f"/api/keys/{key_id}/disable", headers=writer)).status_code == 409


async def test_system_keys_are_read_by_the_service_they_belong_to(
    api: httpx.AsyncClient, service_token: TokenMaker
) -> None:
    writer = await service_token(Scope.KEYS_WRITE)
    owner = await service_token(Scope.KEYS_READ, Scope.KEYS_REVEAL, name="formul8-main")
    stranger = await service_token(Scope.KEYS_READ, Scope.KEYS_REVEAL, name="other")
    created = await api.post(
        "/api/keys/create", headers=writer, json={"system_name": "formul8-main"}
    )
    assert created.status_code == 201

    mine = await api.get("/api/keys/system/formul8-main?reveal=true", headers=owner)
    theirs = await api.get("/api/keys/system/formul8-main", headers=stranger)

    assert mine.json()["secret"] == created.json()["secret"]
    assert theirs.status_code == 404


async def test_bad_requests_are_4xx(api: httpx.AsyncClient, service_token: TokenMaker) -> None:
    writer = await service_token(Scope.KEYS_WRITE, Scope.USERS_WRITE)
    both = await api.post(
        "/api/keys/create", headers=writer, json={"user_id": "a", "system_name": "b"}
    )
    neither = await api.post("/api/keys/create", headers=writer, json={})
    unknown_tier = await api.post(
        "/api/keys/create", headers=writer, json={"user_id": "a", "tier": "platinum"}
    )
    no_key = await api.post("/api/keys/rotate", headers=writer, json={"user_id": "nobody"})
    bad_id = await api.delete("/api/keys/not-a-uuid", headers=writer)
    assert both.status_code == neither.status_code == 422
    assert (unknown_tier.status_code, unknown_tier.json()["error"]["code"]) == (422, "unknown_tier")
    assert (no_key.status_code, no_key.json()["error"]["code"]) == (404, "no_current_key")
    assert bad_id.status_code == 422


async def test_openrouter_refusing_a_rotations_reads_is_a_503_with_retry_after(
    api: httpx.AsyncClient, service_token: TokenMaker, emulator: Emulator
) -> None:
    # GIVEN a user's key, and OpenRouter rate-limiting every read of a key (found by the fault
    # campaign: the rotation's planning read escaped as a 500)
    writer = await service_token(Scope.KEYS_WRITE, Scope.KEYS_READ)
    created = await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})
    assert created.status_code == 201
    emulator.inject(
        Fault("status", method="GET", path="/keys/", status=429, retry_after_s=7, times=None)
    )

    # WHEN a rotation is asked for
    rotated = await api.post("/api/keys/rotate", headers=writer, json={"user_id": ALICE})

    # THEN the caller is told to come back, in the envelope, and the old key still works
    assert rotated.status_code == 503, rotated.text
    assert rotated.json()["error"]["code"] == "openrouter_rate_limited"
    assert rotated.headers["retry-after"] == "7"
    emulator.faults.clear()
    current = await api.get(f"/api/keys/user/{ALICE}", headers=writer)
    assert current.json()["key"]["id"] == created.json()["key"]["id"]


async def test_an_idempotency_key_reused_for_another_owner_or_operation_is_refused(
    api: httpx.AsyncClient, service_token: TokenMaker
) -> None:
    """GIVEN a key created for one user under an Idempotency-Key
    WHEN the same key comes with a create for another user, or a rotation of the first
    THEN both are refused with 409 idempotency_key_reused: no other user's key is answered."""
    writer = await service_token(Scope.KEYS_WRITE, Scope.KEYS_READ)
    headers = {**writer, "Idempotency-Key": "onboarding-1"}
    first = await api.post("/api/keys/create", headers=headers, json={"user_id": "idem-a"})
    other = await api.post("/api/keys/create", headers=headers, json={"user_id": "idem-b"})
    rotation = await api.post("/api/keys/rotate", headers=headers, json={"user_id": "idem-a"})

    assert first.status_code == 201
    assert [(a.status_code, a.json()["error"]["code"]) for a in (other, rotation)] == [
        (409, "idempotency_key_reused"),
        (409, "idempotency_key_reused"),
    ]
    assert "secret" not in other.text
