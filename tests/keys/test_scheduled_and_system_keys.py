"""Scheduled monthly rotation, and system keys published to AWS Secrets Manager (moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from shared.config import Settings
from shared.db.database import Database
from shared.jobs.queue import QueueSettings
from shared.keys.scheduled_rotation import rotate_scheduled_keys
from shared.keys.service import KeyLifecycleService, Owner
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime


async def _age_keys(database: Database) -> None:
    """Make every current key look activated last month."""
    async with database.connection() as conn:
        await conn.execute(
            "update api_keys set activated_at = date_trunc('month', now()) - interval '1 day'"
            " where state = 'current'"
        )


async def test_the_schedule_rotates_system_keys_and_monthly_users_once_a_month(
    keys: KeyLifecycleService, database: Database, runtime: Runtime
) -> None:
    system = await keys.create_key(Owner.system("formul8-main"), actor="t")
    monthly = await keys.create_key(Owner.user("m"), actor="t", rotation_policy="monthly")
    on_demand = await keys.create_key(Owner.user("o"), actor="t")
    never = await keys.create_key(Owner.user("n"), actor="t", rotation_policy="never")
    await _age_keys(database)

    first = await rotate_scheduled_keys(runtime, QueueSettings(time_budget_s=30))
    second = await rotate_scheduled_keys(runtime, QueueSettings(time_budget_s=30))

    assert (first.done, first.finished) == (2, True)
    assert (second.done, second.finished) == (0, True)
    assert (await keys.current_key(Owner.system("formul8-main"))).id != system.key.id
    assert (await keys.current_key(Owner.user("m"))).id != monthly.key.id
    assert (await keys.current_key(Owner.user("o"))).id == on_demand.key.id
    assert (await keys.current_key(Owner.user("n"))).id == never.key.id


async def test_the_schedule_stops_at_its_time_budget_and_the_next_run_continues(
    keys: KeyLifecycleService, database: Database, runtime: Runtime
) -> None:
    for i in range(3):
        await keys.create_key(Owner.system(f"svc-{i}"), actor="t")
    await _age_keys(database)

    spent = await rotate_scheduled_keys(runtime, QueueSettings(time_budget_s=0))
    assert (spent.done, spent.finished) == (0, False)
    following = await rotate_scheduled_keys(runtime, QueueSettings(time_budget_s=30))
    assert (following.done, following.finished) == (3, True)


async def test_an_item_run_again_does_not_rotate_twice(
    keys: KeyLifecycleService, database: Database, runtime: Runtime, emulator: Emulator
) -> None:
    # GIVEN a month's job whose one item was done, but whose completion was lost (its worker
    # died after the rotation and before marking it done)
    await keys.create_key(Owner.user("m"), actor="t", rotation_policy="monthly")
    await _age_keys(database)
    await rotate_scheduled_keys(runtime, QueueSettings(time_budget_s=30))
    rotated = await keys.current_key(Owner.user("m"))
    async with database.connection() as conn:
        await conn.execute(
            "update work_items set status = 'pending', finished_at = null, lease_until = null"
        )
        await conn.execute("update work_jobs set status = 'running', finished_at = null")
    creates_before = sum(1 for m, p in emulator.requests if m == "POST" and p.endswith("/keys"))
    assert creates_before == 2  # the key, and its scheduled replacement

    # WHEN the item runs again
    again = await rotate_scheduled_keys(runtime, QueueSettings(time_budget_s=30))

    # THEN it is done without a second rotation: same key, no new key at OpenRouter
    assert again.done == 1
    assert (await keys.current_key(Owner.user("m"))).id == rotated.id
    assert sum(1 for m, p in emulator.requests if m == "POST" and p.endswith("/keys")) == 2


@pytest.fixture
def secrets_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="eu-west-1")


async def test_system_keys_are_written_to_secrets_manager_on_every_rotation(
    settings: Settings,
    emulator: Emulator,
    openrouter: OpenRouterClient,
    secrets_manager: object,
) -> None:
    runtime = Runtime(
        settings.model_copy(update={"system_keys_secret_prefix": "openrouter-agent/system/"}),
        openrouter=openrouter,
        emulator=emulator,
    )
    keys = KeyLifecycleService(runtime)
    client = secrets_manager
    secret_id = "openrouter-agent/system/formul8-main"

    created = await keys.create_key(Owner.system("formul8-main"), actor="t")
    published = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])  # type: ignore[attr-defined]
    assert published["key"] == created.secret
    assert published["key_id"] == str(created.key.id)

    rotated = await keys.rotate_key(Owner.system("formul8-main"), actor="t", grace_seconds=300)
    current = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])  # type: ignore[attr-defined]
    previous = json.loads(
        client.get_secret_value(SecretId=secret_id, VersionStage="AWSPREVIOUS")["SecretString"]  # type: ignore[attr-defined]
    )
    assert current["key"] == rotated.secret
    assert previous["key"] == created.secret
    await runtime.database().close()
