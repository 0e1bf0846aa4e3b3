"""The reconciler: afterwards every key under our prefix at OpenRouter is known to the database,
and every key the database calls live exists at OpenRouter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.db.database import Database
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from tests.keys.conftest import check_invariants


async def test_reconcile_removes_orphans_and_replaces_missing_keys(
    keys: KeyLifecycleService, emulator: Emulator, database: Database, runtime: Runtime
) -> None:
    # GIVEN a healthy key, a key deleted behind our back, an old orphan under our prefix,
    # a fresh one (maybe a create in flight) and a key that is not ours at all
    healthy = await keys.create_key(Owner.user("healthy"), actor="t")
    vanished = await keys.create_key(Owner.user("vanished"), actor="t")
    await runtime.openrouter().delete_key(vanished.key.openrouter_hash or "")
    old_orphan = emulator.add_key(name="ora-00000000-0000-4000-8000-000000000001")
    old_orphan.created_at = datetime.now(UTC) - timedelta(hours=2)
    young_orphan = emulator.add_key(name="ora-00000000-0000-4000-8000-000000000002")
    not_ours = emulator.add_key(name="someone-elses-key")
    not_ours.created_at = datetime.now(UTC) - timedelta(days=30)

    report = await keys.reconcile(actor="admin", request_id=None)

    assert report.deleted_at_openrouter == [old_orphan.hash]
    assert report.too_young_to_judge == 1
    assert report.revoked_missing == [vanished.key.id]
    assert len(report.reprovisioned) == 1
    remaining = {k.hash for k in emulator.user_keys()}
    assert old_orphan.hash not in remaining
    assert young_orphan.hash in remaining and not_ours.hash in remaining
    assert (await keys.current_key(Owner.user("vanished"))).id == report.reprovisioned[0]
    assert (await keys.current_key(Owner.user("healthy"))).id == healthy.key.id
    invariants = await check_invariants(database, emulator, runtime)
    assert invariants.live_missing_at_openrouter == []
    assert invariants.orphans_at_openrouter == sorted([young_orphan.hash, not_ours.hash])
    assert invariants.secrets_matching


async def test_reconcile_twice_changes_nothing_the_second_time(
    keys: KeyLifecycleService, emulator: Emulator
) -> None:
    await keys.create_key(Owner.user("steady"), actor="t")
    await keys.reconcile(actor="admin", request_id=None)
    second = await keys.reconcile(actor="admin", request_id=None)
    assert (second.deleted_at_openrouter, second.revoked_missing, second.reprovisioned) == (
        [],
        [],
        [],
    )
