"""Temporary budget increases: a grant in the ledger that the user's key follows at once, that
a rotation keeps and that lapses at its end."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from shared.jobs.service import advance_key_operations
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, EmulatorApiError
from shared.runtime import Runtime
from shared.usage.service import UsageService
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}


def _spend(emulator: Emulator, secret: str, amount: str) -> int | None:
    """OpenRouter's refusal of spending `amount` on the key, or None when it is billed."""
    try:
        emulator.charge(secret, Decimal(amount))
    except EmulatorApiError as refused:
        return refused.status
    return None


async def _report(runtime: Runtime, user: str, amount: str, generation: str) -> None:
    """What the platform reports of a billed request."""
    result = await UsageService(runtime).log(
        [{"user_id": user, "generation_id": generation, "model": "m", "cost_usd": amount}],
        actor="platform",
    )
    assert result.count("stored") == 1


async def _limit_at_openrouter(keys: KeyLifecycleService, emulator: Emulator, user: str) -> Decimal:
    current = await keys.current_key(Owner.user(user))
    key = emulator.key_by_hash(current.openrouter_hash or "")
    assert key is not None and key.limit is not None
    return key.limit


async def _secret(api: httpx.AsyncClient, runtime: Runtime, user: str) -> str:
    keys = KeyLifecycleService(runtime)
    current = await keys.current_key(Owner.user(user))
    return await keys.reveal(current, actor="test", request_id=None)


async def test_an_increase_is_spent_survives_a_rotation_and_lapses(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    """GIVEN a free user ($10 a month) with a key
    WHEN an admin grants $5 more, the user spends $12, the key is rotated, the new key spends
    the $3 left, and then the grant ends (the advance job runs)
    THEN the key's limit is $15 at once; the new key gets exactly the $3 left of $15 and
    nothing more; after the lapse the budget is $10 again, the key can spend nothing, and the
    month shows the 100 % threshold crossed."""
    issued = await keys.create_key(Owner.user("grantee"), actor="t", tier="free")
    assert issued.secret is not None

    granted = await api.post(
        "/api/users/grantee/budget-increases",
        headers=ADMIN,
        json={"amount_usd": "5", "reason": "launch week"},
    )
    raised = await _limit_at_openrouter(keys, emulator, "grantee")
    spent = _spend(emulator, issued.secret, "12")
    await _report(runtime, "grantee", "12", "g-12")
    rotated = await api.post(
        "/api/keys/rotate", headers=ADMIN, json={"user_id": "grantee", "grace_seconds": 0}
    )
    new_limit = await _limit_at_openrouter(keys, emulator, "grantee")
    new_secret = await _secret(api, runtime, "grantee")
    rest = [_spend(emulator, new_secret, "3"), _spend(emulator, new_secret, "0.01")]
    await _report(runtime, "grantee", "3", "g-3")
    usage_during = (await api.get("/api/usage/grantee", headers=ADMIN)).json()

    async with runtime.database().connection() as conn:  # the grant's end comes: time passes
        await conn.execute(
            "update budget_increases set granted_at = now() - interval '1 hour',"
            " ends_at = now() - interval '1 second' where user_id = 'grantee'"
        )
    await advance_key_operations(runtime)
    after_lapse = await _limit_at_openrouter(keys, emulator, "grantee")
    lapsed_spend = _spend(emulator, new_secret, "0.01")
    usage_after = (await api.get("/api/usage/grantee", headers=ADMIN)).json()

    assert granted.status_code == 201, granted.text
    assert granted.json()["key_limit_status"] == "applied"
    assert raised == Decimal(15)
    assert spent is None
    assert rotated.status_code in (200, 201), rotated.text
    assert new_limit == Decimal(3)
    assert rest[0] is None and rest[1] in (402, 403)
    assert Decimal(usage_during["limit_usd"]) == Decimal(15)
    assert after_lapse == Decimal(0)
    assert lapsed_spend in (402, 403)
    assert Decimal(usage_after["limit_usd"]) == Decimal(10)
    assert 100 in usage_after["thresholds_crossed"]


async def test_increases_are_listed_and_audited_and_bad_grants_are_refused(
    api: httpx.AsyncClient, keys: KeyLifecycleService
) -> None:
    """GIVEN a user
    WHEN an admin grants an increase until a date, lists them, and tries bad grants
    THEN the list shows it with its end, the audit has it, and bad input is a 4xx with a code:
    an unknown user 404, a zero, negative or too precise amount, a past end, no reason 422."""
    await keys.create_key(Owner.user("lister"), actor="t", tier="standard")
    until = "2099-01-15T00:00:00Z"
    granted = await api.post(
        "/api/users/lister/budget-increases",
        headers=ADMIN,
        json={"amount_usd": "20", "ends_at": until, "reason": "conference"},
    )
    listed = (await api.get("/api/users/lister/budget-increases", headers=ADMIN)).json()
    audit = (await api.get("/api/admin/audit", headers=ADMIN)).json()["data"]
    bad = [
        ("nobody", {"amount_usd": "5", "reason": "why not"}),
        ("lister", {"amount_usd": "0", "reason": "zero"}),
        ("lister", {"amount_usd": "-5", "reason": "negative"}),
        ("lister", {"amount_usd": "0.0000001", "reason": "too precise"}),
        ("lister", {"amount_usd": "5", "ends_at": "2001-01-01T00:00:00Z", "reason": "past"}),
        ("lister", {"amount_usd": "5"}),
    ]
    answers = [
        await api.post(f"/api/users/{u}/budget-increases", headers=ADMIN, json=body)
        for u, body in bad
    ]

    assert granted.status_code == 201
    [listed_one] = listed["data"]
    assert (listed_one["amount_usd"], listed_one["ends_at"]) == ("20", until)
    assert not listed_one["lapsed"]
    assert any(e["action"] == "user.budget_increased" for e in audit)
    codes = [(a.status_code, a.json()["error"]["code"]) for a in answers]
    assert codes[0] == (404, "user_not_found")
    assert all(status == 422 for status, _ in codes[1:])
    assert codes[4][1] == "increase_ended"


@pytest.mark.parametrize("path", ["/api/users/x/budget-increases"])
async def test_a_grant_needs_users_write_or_admin(api: httpx.AsyncClient, path: str) -> None:
    """GIVEN no credential
    WHEN it grants or lists increases
    THEN 401 both."""
    posted = await api.post(path, json={"amount_usd": "5", "reason": "sneaky"})
    listed = await api.get(path)

    assert (posted.status_code, listed.status_code) == (401, 401)


async def test_a_retried_grant_with_its_idempotency_key_grants_once(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    """GIVEN a free user with a key
    WHEN the same grant of $5 is sent twice with one Idempotency-Key, and once with another
    THEN the first two answer the same grant and the key's limit is $20 ($10 + 2 grants)."""
    await keys.create_key(Owner.user("retrier"), actor="t", tier="free")
    body = {"amount_usd": "5", "reason": "a retried request"}
    first, again, other = [
        await api.post(
            "/api/users/retrier/budget-increases",
            headers={**ADMIN, "Idempotency-Key": key},
            json=body,
        )
        for key in ("grant-1", "grant-1", "grant-2")
    ]
    limit = await _limit_at_openrouter(keys, emulator, "retrier")

    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 201)
    assert first.json()["increase"]["id"] == again.json()["increase"]["id"]
    assert other.json()["increase"]["id"] != first.json()["increase"]["id"]
    assert limit == Decimal(20)


async def test_an_idempotency_key_reused_for_another_grant_is_refused(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    """GIVEN a grant of $5 to one user under an Idempotency-Key
    WHEN the same key comes with a grant to another user, or another amount
    THEN both are refused with 409 idempotency_key_reused, and the other user got nothing."""
    for user in ("first-user", "second-user"):
        await keys.create_key(Owner.user(user), actor="t", tier="free")
    key = {**ADMIN, "Idempotency-Key": "promo-dec"}
    body = {"amount_usd": "5", "reason": "december promo"}
    first = await api.post("/api/users/first-user/budget-increases", headers=key, json=body)
    other_user = await api.post("/api/users/second-user/budget-increases", headers=key, json=body)
    other_amount = await api.post(
        "/api/users/first-user/budget-increases", headers=key, json={**body, "amount_usd": "7"}
    )
    second_limit = await _limit_at_openrouter(keys, emulator, "second-user")

    assert first.status_code == 201
    assert [(a.status_code, a.json()["error"]["code"]) for a in (other_user, other_amount)] == [
        (409, "idempotency_key_reused"),
        (409, "idempotency_key_reused"),
    ]
    assert second_limit == Decimal(10)
