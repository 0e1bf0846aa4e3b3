"""Tier policies enforced at OpenRouter: a tier's daily cap and model allowlist reach its keys
through the tier's guardrail, and the emulator, as OpenRouter, refuses what they forbid."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest

from shared.jobs.worker import work
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator, EmulatorApiError, Fault
from shared.runtime import Runtime
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN
from tests.openrouter.conftest import ManualClock

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
CHEAP = "openai/gpt-4o-mini"
DEAR = "anthropic/claude-opus-4"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emulator(clock: ManualClock) -> Emulator:
    """OpenRouter on a clock the test moves (its daily windows)."""
    return Emulator(clock=clock)


async def _set_policy(api: httpx.AsyncClient, tier: str, **policy: object) -> dict[str, object]:
    response = await api.put(f"/api/admin/tiers/{tier}/policy", headers=ADMIN, json=policy)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def _work_the_queue(runtime: Runtime) -> None:
    while (lane := await work(runtime, lane=0, stagger=False)).done or lane.failed:
        assert not lane.failed


async def _key_of(keys: KeyLifecycleService, user: str, tier: str) -> str:
    issued = await keys.create_key(Owner.user(user), actor="t", tier=tier)
    assert issued.secret is not None
    return issued.secret


def _refused(emulator: Emulator, secret: str, model: str) -> int | None:
    """OpenRouter's status refusing a $0.01 request on this model, or None when it passes."""
    try:
        emulator.charge(secret, Decimal("0.01"), model=model)
    except EmulatorApiError as refused:
        return refused.status
    return None


async def test_a_free_key_is_refused_a_model_outside_the_free_allowlist(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    """GIVEN the free tier allowed only openai/gpt-4o-mini
    WHEN a free user's key (made after) and a standard user's key ask for another model
    THEN OpenRouter refuses the free key (403) and serves the allowed model; the standard key
    is not restricted."""
    policy = await _set_policy(api, "free", allowed_models=[CHEAP], reason="cheap models only")
    free = await _key_of(keys, "free-user", "free")
    standard = await _key_of(keys, "std-user", "standard")

    # computed before asserting: a failed assertion then shows no secret
    outcomes = [_refused(emulator, free, DEAR), _refused(emulator, free, CHEAP)]
    outcomes.append(_refused(emulator, standard, DEAR))

    assert policy["guardrail_id"]
    assert outcomes == [403, None, None]


async def test_a_daily_cap_holds_a_key_while_its_month_remains_and_releases_it_next_day(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, clock: ManualClock
) -> None:
    """GIVEN the free tier ($10 a month) capped at $1 a UTC day, and a free user's key
    WHEN the key spends $1, then asks for $0.01 more that day, and again the next UTC day
    THEN OpenRouter refuses it that day (its month still has $9 left) and serves it the next."""
    await _set_policy(api, "free", daily_cap_usd="1")
    secret = await _key_of(keys, "capped", "free")
    emulator.charge(secret, Decimal(1))

    held = _refused(emulator, secret, CHEAP)
    key = next(k for k in emulator.user_keys() if k.secret == secret)
    month_left = key.limit - Decimal(1) if key.limit is not None else None
    clock.advance(days=1)
    next_day = _refused(emulator, secret, CHEAP)

    assert held in (402, 403)
    assert month_left == Decimal(9)
    assert next_day is None


async def test_a_new_policy_reaches_every_key_of_the_tier_through_the_queue_and_a_change_at_once(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    """GIVEN three standard users with keys and a free user with one, and a request that
    leaves the assignment to the work lanes (TIER_POLICY_REQUEST_BUDGET_S=0)
    WHEN an admin gives the standard tier an allowlist, the work lanes run, then the admin
    changes the allowlist
    THEN before the lanes run no key is restricted; after, every standard key is refused other
    models (the free key is not), in one bulk assignment; the change reaches them at once, with
    no new assignment."""
    runtime.settings = runtime.settings.model_copy(update={"tier_policy_request_budget_s": 0})
    standard = {u: await _key_of(keys, u, "standard") for u in ("s1", "s2", "s3")}
    free = await _key_of(keys, "f1", "free")

    policy = await _set_policy(api, "standard", allowed_models=[CHEAP])
    before = [_refused(emulator, s, DEAR) for s in standard.values()]
    calls_before = len(emulator.requests)
    await _work_the_queue(runtime)
    assignments = [p for m, p in emulator.requests[calls_before:] if "assignments" in p]
    after = [_refused(emulator, s, DEAR) for s in standard.values()]
    await _set_policy(api, "standard", allowed_models=[DEAR])
    changed = [_refused(emulator, s, DEAR) for s in standard.values()]

    assert before == [None, None, None]
    assert after == [403, 403, 403]
    assert len(assignments) == 1
    free_key = _refused(emulator, free, DEAR)

    assert free_key is None
    assert changed == [None, None, None]
    guardrail = emulator.guardrail(str(policy["guardrail_id"]))
    assert guardrail is not None


async def test_a_user_moved_to_another_tier_takes_its_policy_and_a_removed_policy_frees_keys(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    """GIVEN a free tier restricted to one model and a free user's key
    WHEN the user moves to standard (unrestricted), back to free, and then free's policy is
    removed
    THEN the key is free on standard, restricted again on free, and free once the policy (and
    its guardrail at OpenRouter) is gone."""
    policy = await _set_policy(api, "free", allowed_models=[CHEAP])
    secret = await _key_of(keys, "mover", "free")
    restricted = _refused(emulator, secret, DEAR)

    moved = await api.put("/api/users/mover", headers=ADMIN, json={"tier": "standard"})
    on_standard = _refused(emulator, secret, DEAR)
    back = await api.put("/api/users/mover", headers=ADMIN, json={"tier": "free"})
    on_free = _refused(emulator, secret, DEAR)
    cleared = await _set_policy(api, "free")

    freed = _refused(emulator, secret, DEAR)

    assert (moved.status_code, back.status_code) == (200, 200)
    assert (restricted, on_standard, on_free, freed) == (403, None, 403, None)
    assert cleared["guardrail_id"] is None
    assert emulator.guardrail(str(policy["guardrail_id"])) is None


async def test_a_policy_refuses_bad_input_with_a_clear_code(api: httpx.AsyncClient) -> None:
    """GIVEN an admin
    WHEN a policy names an unknown tier, a negative cap, an empty allowlist or an unknown field
    THEN each answers 404 tier_not_found or 422 validation_error, never a 500."""
    answers = [
        await api.put("/api/admin/tiers/nosuch/policy", headers=ADMIN, json={}),
        await api.put("/api/admin/tiers/free/policy", headers=ADMIN, json={"daily_cap_usd": "-1"}),
        await api.put("/api/admin/tiers/free/policy", headers=ADMIN, json={"allowed_models": []}),
        await api.put("/api/admin/tiers/free/policy", headers=ADMIN, json={"cap": 1}),
    ]

    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [
        (404, "tier_not_found"),
        (422, "validation_error"),
        (422, "validation_error"),
        (422, "validation_error"),
    ]


async def test_the_reconciler_repairs_guardrails_changed_behind_our_back(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    """GIVEN the free tier restricted to one model, a free user's key, the standard tier
    capped daily; then at OpenRouter someone deletes free's guardrail, edits standard's, and
    makes one under our prefix that no tier names
    WHEN the reconcile runs and the work lanes finish it
    THEN free's guardrail is made again and the key is restricted again, standard's says its
    policy again, and the stray one is deleted."""
    from shared.keys.reconcile import reconcile

    free = await _set_policy(api, "free", allowed_models=[CHEAP])
    standard = await _set_policy(api, "standard", daily_cap_usd="2")
    secret = await _key_of(keys, "drifter", "free")
    client = runtime.openrouter()
    await client.delete_guardrail(str(free["guardrail_id"]))
    await client.update_guardrail(str(standard["guardrail_id"]), limit_usd=Decimal(100))
    stray = await client.create_guardrail(
        name=f"{runtime.settings.openrouter_key_name_prefix}-tier-gone", allowed_models=[CHEAP]
    )
    unrestricted = _refused(emulator, secret, DEAR)

    await reconcile(runtime, actor="test")
    await _work_the_queue(runtime)
    restricted = _refused(emulator, secret, DEAR)
    policies = {
        p["tier"]: p
        for p in (await api.get("/api/admin/tiers/policies", headers=ADMIN)).json()["data"]
    }
    remade = emulator.guardrail(str(policies["free"]["guardrail_id"]))
    edited = emulator.guardrail(str(standard["guardrail_id"]))

    assert (unrestricted, restricted) == (None, 403)
    assert policies["free"]["guardrail_id"] != free["guardrail_id"]
    assert remade is not None
    assert edited is not None and edited.limit_usd == Decimal(2)
    assert emulator.guardrail(stray.id) is None


async def test_an_unlimited_tier_may_still_carry_an_allowlist(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    """GIVEN the admin tier (no monthly budget) allowed only one model
    WHEN an admin user's key asks for another model, and for the allowed one
    THEN OpenRouter refuses the other and serves the allowed one, the key still unlimited."""
    await _set_policy(api, "admin", allowed_models=[CHEAP])
    secret = await _key_of(keys, "boss", "admin")
    key = next(k for k in emulator.user_keys() if k.secret == secret)
    outcomes = [_refused(emulator, secret, DEAR), _refused(emulator, secret, CHEAP)]

    assert outcomes == [403, None]
    assert key.limit is None


async def test_the_reconciler_assigns_again_a_key_unassigned_behind_our_back(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    """GIVEN the free tier restricted to one model and two free users' keys on its guardrail
    WHEN someone unassigns one key from the guardrail at OpenRouter, and the reconcile runs
    THEN that key is restricted again (the guardrail holds both keys)."""
    from shared.keys.reconcile import reconcile

    policy = await _set_policy(api, "free", allowed_models=[CHEAP])
    first = await _key_of(keys, "kept", "free")
    await _key_of(keys, "loose", "free")
    loose = await keys.current_key(Owner.user("loose"))
    guardrail_id = str(policy["guardrail_id"])
    await runtime.openrouter().unassign_keys_from_guardrail(
        guardrail_id, [loose.openrouter_hash or ""]
    )
    loose_secret = await keys.reveal(loose, actor="test", request_id=None)
    before = [_refused(emulator, first, DEAR), _refused(emulator, loose_secret, DEAR)]

    await reconcile(runtime, actor="test")
    await _work_the_queue(runtime)
    after = [_refused(emulator, first, DEAR), _refused(emulator, loose_secret, DEAR)]

    assert before == [403, None]
    assert after == [403, 403]
    assert await runtime.openrouter().count_key_assignments(guardrail_id) == 2


async def test_a_refused_policy_changes_nothing_at_openrouter_and_changes_of_a_tier_queue_up(
    api: httpx.AsyncClient, emulator: Emulator
) -> None:
    """GIVEN the free tier capped at $2 a day for one model
    WHEN a change is refused by the database (a reason it cannot store), and then eight
    changes of the beta tier arrive at once, some setting a cap and some taking it away
    THEN free's guardrail at OpenRouter is as it was; beta ends with at most one guardrail
    under our prefix, the one the database names."""
    policy = await _set_policy(api, "free", daily_cap_usd="2", allowed_models=[CHEAP])
    refused = await api.put(
        "/api/admin/tiers/free/policy",
        headers=ADMIN,
        json={"daily_cap_usd": "3", "reason": "ab\u0000cd"},
    )
    kept = emulator.guardrail(str(policy["guardrail_id"]))

    bodies = [{"daily_cap_usd": str(n)} if n % 2 else {} for n in range(1, 9)]
    answers = await asyncio.gather(
        *(api.put("/api/admin/tiers/beta/policy", headers=ADMIN, json=b) for b in bodies)
    )
    final = (await api.get("/api/admin/tiers/policies", headers=ADMIN)).json()["data"]
    beta = next(p for p in final if p["tier"] == "beta")
    named = [g.id for g in emulator.guardrails() if g.name.endswith("-tier-beta")]

    assert 400 <= refused.status_code < 500
    assert kept is not None and kept.limit_usd == Decimal(2)
    assert kept.allowed_models == [CHEAP]
    assert all(a.status_code == 200 for a in answers)
    assert named == ([] if beta["guardrail_id"] is None else [beta["guardrail_id"]])


async def test_a_tier_move_whose_assignment_failed_is_finished_by_its_retry(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator
) -> None:
    """GIVEN the free tier restricted to one model, and a standard user's key
    WHEN the user is moved to free while OpenRouter's guardrail routes fail (503), and the
    move is sent again once they work
    THEN the retry puts the key on free's guardrail: the other model is refused."""
    await _set_policy(api, "free", allowed_models=[CHEAP])
    secret = await _key_of(keys, "moving", "standard")
    emulator.inject(Fault("status", path="/guardrails", status=500, times=None))
    failed = await api.put("/api/users/moving/tier", headers=ADMIN, json={"tier": "free"})
    emulator.clear_faults()
    during = _refused(emulator, secret, DEAR)
    retried = await api.put("/api/users/moving/tier", headers=ADMIN, json={"tier": "free"})
    after = _refused(emulator, secret, DEAR)

    assert failed.status_code == 503
    assert (during, retried.status_code, after) == (None, 200, 403)


async def test_a_new_policy_request_assigns_the_tiers_keys_itself(
    api: httpx.AsyncClient, keys: KeyLifecycleService, emulator: Emulator, runtime: Runtime
) -> None:
    """GIVEN 150 keys on the micro tier
    WHEN an admin gives micro an allowlist (the request's default budget of 15 s)
    THEN when the request answers every micro key is refused other models: two bulk
    assignments made by the request, nothing left for the lanes."""
    secrets = [await _key_of(keys, f"m{n}", "micro") for n in range(150)]
    calls_before = len(emulator.requests)

    await _set_policy(api, "micro", allowed_models=[CHEAP])
    assignments = [p for m, p in emulator.requests[calls_before:] if "assignments" in p]
    outcomes = {_refused(emulator, s, DEAR) for s in secrets}
    async with runtime.database().connection() as conn:
        cursor = await conn.execute(
            "select count(*) as n from work_items i join work_jobs j on j.id = i.job_id"
            " where j.kind = 'tier_guardrail' and i.status <> 'done'"
        )
        row = await cursor.fetchone()

    assert outcomes == {403}
    assert len(assignments) == 2
    assert row is not None and row["n"] == 0
