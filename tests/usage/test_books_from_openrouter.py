"""The books as OpenRouter counts them: spend no service reported, found by the sync job."""

from __future__ import annotations

from decimal import Decimal

import httpx

from shared.jobs import service as jobs
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from shared.usage.service import UsageService
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}


async def _books(api: httpx.AsyncClient, user: str) -> dict[str, Decimal]:
    body = (await api.get(f"/api/usage/{user}", headers=ADMIN)).json()
    return {
        name: Decimal(body[f"{name}_usd"])
        for name in ("spent", "reported", "unreported", "counted", "remaining")
    }


async def _report(runtime: Runtime, user: str, generation: str, cost: str) -> None:
    await UsageService(runtime).log(
        [{"user_id": user, "generation_id": generation, "model": "m", "cost_usd": cost}],
        actor="platform",
    )


async def _sync(runtime: Runtime) -> None:
    summary = await jobs.sync_usage_from_openrouter(runtime)
    assert summary["finished"], summary


async def test_spend_nobody_reported_is_in_the_books_after_one_sync(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator
) -> None:
    """GIVEN a free user whose service never reports, who spent $3.25 at OpenRouter
    WHEN the sync runs once THEN the books say $3.25 spent, all of it unreported, and $6.75
    remaining; the key was made naming the user at OpenRouter."""
    issued = await keys.create_key(Owner.user("silent"), actor="t", tier="free")
    assert issued.secret is not None
    emulator.charge(issued.secret, Decimal("3.25"))
    before = await _books(api, "silent")

    await _sync(runtime)

    assert before["spent"] == 0
    assert await _books(api, "silent") == {
        "spent": Decimal("3.25"),
        "reported": Decimal(0),
        "unreported": Decimal("3.25"),
        "counted": Decimal("3.25"),
        "remaining": Decimal("6.75"),
    }
    assert [k.external_user for k in emulator.user_keys()] == ["silent"]
    # the forecast counts it too: at this pace the month ends above what is spent already
    forecast = (await api.get("/api/usage/silent", headers=ADMIN)).json()["forecast_month_end_usd"]
    assert Decimal("3.25") < Decimal(forecast) <= 10


async def test_spend_on_a_key_rotated_out_this_month_counts_too(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator
) -> None:
    """GIVEN a user who spent $2 on a key rotated out (and deleted) earlier this month, then
    $1.50 on the new one, none of it reported WHEN the sync runs THEN the books say $3.50."""
    first = await keys.create_key(Owner.user("rotor"), actor="t", tier="free")
    assert first.secret is not None
    emulator.charge(first.secret, Decimal(2))
    second = await keys.rotate_key(Owner.user("rotor"), actor="t", grace_seconds=0)
    assert second.secret is not None
    assert emulator.key_by_hash(first.key.openrouter_hash or "") is None  # deleted there
    emulator.charge(second.secret, Decimal("1.5"))

    await _sync(runtime)

    books = await _books(api, "rotor")
    assert (books["spent"], books["unreported"]) == (Decimal("3.5"), Decimal("3.5"))


async def test_a_report_after_the_sync_counted_the_spend_is_not_counted_twice(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator
) -> None:
    """GIVEN $4 spent at OpenRouter, counted by a sync as unreported
    WHEN the service reports it late, then reports it again (the same generation)
    THEN the books still say $4: the unreported part shrank as the report arrived; a later
    report beyond what OpenRouter counted counts in full."""
    issued = await keys.create_key(Owner.user("late"), actor="t", tier="free")
    assert issued.secret is not None
    emulator.charge(issued.secret, Decimal(3))
    emulator.charge(issued.secret, Decimal(1))
    await _sync(runtime)
    assert (await _books(api, "late"))["unreported"] == 4

    await _report(runtime, "late", "g-late", "3")
    await _report(runtime, "late", "g-late", "3")  # the same generation: a duplicate
    after_one = await _books(api, "late")
    await _report(runtime, "late", "g-late-2", "1")
    await _report(runtime, "late", "g-new", "0.5")  # not yet counted by OpenRouter's sync
    after_all = await _books(api, "late")

    assert (after_one["spent"], after_one["reported"], after_one["unreported"]) == (
        Decimal(4),
        Decimal(3),
        Decimal(1),
    )
    assert (after_all["spent"], after_all["reported"], after_all["unreported"]) == (
        Decimal("4.5"),
        Decimal("4.5"),
        Decimal(0),
    )


async def test_unreported_spend_crosses_thresholds_and_alerts_once(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator
) -> None:
    """GIVEN a free user ($10) who spent $8.50 that nobody reported
    WHEN the sync runs, twice THEN 50 and 80 % are crossed with one alert each, as reported
    spend would have crossed them, and the second run adds none."""
    issued = await keys.create_key(Owner.user("quiet"), actor="t", tier="free")
    assert issued.secret is not None
    emulator.charge(issued.secret, Decimal("8.5"))

    await _sync(runtime)
    await _sync_next_slot(runtime)

    async with runtime.database().connection() as conn:
        cursor = await conn.execute(
            "select payload ->> 'threshold' as threshold from alert_outbox"
            " where payload ->> 'user_id' = 'quiet' order by 1"
        )
        alerts = [row["threshold"] for row in await cursor.fetchall()]
    assert alerts == ["50", "80"]
    assert (await api.get("/api/usage/quiet", headers=ADMIN)).json()["thresholds_crossed"] == [
        50,
        80,
    ]


async def _sync_next_slot(runtime: Runtime) -> None:
    """A later slot's run (the cron's next quarter hour): its job is a new one."""
    async with runtime.database().connection() as conn:
        await conn.execute(
            "update work_jobs set name = name || '-earlier' where kind = 'usage_sync'"
        )
    await _sync(runtime)


async def test_a_user_whose_every_key_was_deleted_this_month_keeps_its_spend(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator
) -> None:
    """GIVEN a user who spent $2.50 unreported on a key then revoked (deleted at OpenRouter,
    its final usage read) WHEN the sync runs, its pages listing no key of theirs THEN the
    books still say $2.50: the conclusion counts the users on no page."""
    issued = await keys.create_key(Owner.user("gone"), actor="t", tier="free")
    assert issued.secret is not None
    emulator.charge(issued.secret, Decimal("2.5"))
    revoked = await keys.revoke_key(issued.key.id, actor="t", reason="test", request_id=None)
    assert revoked.deleted_at is not None

    await _sync(runtime)

    assert (await _books(api, "gone"))["spent"] == Decimal("2.5")


async def test_a_reset_gives_back_spend_made_since_the_last_sync(
    api: httpx.AsyncClient, keys: KeyLifecycleService, runtime: Runtime, emulator: Emulator
) -> None:
    """GIVEN a free user with $3.50 counted by a sync, then $2 more spent at OpenRouter that no
    sync has read yet WHEN an admin resets their month, and the next sync runs THEN they have
    their whole $10 back (the reset counted what OpenRouter counted up to then, not the books'
    last sync), and the key can spend $10 more."""
    issued = await keys.create_key(Owner.user("resetme"), actor="t", tier="free")
    assert issued.secret is not None
    emulator.charge(issued.secret, Decimal("3.5"))
    await _sync(runtime)
    emulator.charge(issued.secret, Decimal(2))

    reset = await api.post(
        "/api/admin/reset-usage", headers=ADMIN, json={"user_id": "resetme", "reason": "goodwill"}
    )
    await _sync_next_slot(runtime)

    assert reset.status_code == 200, reset.text
    books = await _books(api, "resetme")
    assert (books["spent"], books["remaining"]) == (Decimal(0), Decimal(10)), books
    emulator.charge(issued.secret, Decimal(10))  # the whole budget, at OpenRouter too
