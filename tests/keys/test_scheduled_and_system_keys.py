"""Scheduled monthly rotation, and system keys published to AWS Secrets Manager (moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from shared.config import Settings
from shared.db.database import Database
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
    keys: KeyLifecycleService, database: Database, emulator: Emulator
) -> None:
    system = await keys.create_key(Owner.system("formul8-main"), actor="t")
    monthly = await keys.create_key(Owner.user("m"), actor="t", rotation_policy="monthly")
    on_demand = await keys.create_key(Owner.user("o"), actor="t")
    never = await keys.create_key(Owner.user("n"), actor="t", rotation_policy="never")
    await _age_keys(database)

    first = await keys.rotate_scheduled_keys(time_budget_s=30)
    second = await keys.rotate_scheduled_keys(time_budget_s=30)

    assert (first, second) == (2, 0)
    assert (await keys.current_key(Owner.system("formul8-main"))).id != system.key.id
    assert (await keys.current_key(Owner.user("m"))).id != monthly.key.id
    assert (await keys.current_key(Owner.user("o"))).id == on_demand.key.id
    assert (await keys.current_key(Owner.user("n"))).id == never.key.id


async def test_the_schedule_stops_at_its_time_budget_and_the_next_run_continues(
    keys: KeyLifecycleService, database: Database
) -> None:
    for i in range(3):
        await keys.create_key(Owner.system(f"svc-{i}"), actor="t")
    await _age_keys(database)

    assert await keys.rotate_scheduled_keys(time_budget_s=0) == 0
    assert await keys.rotate_scheduled_keys(time_budget_s=30, batch=1) == 3
    assert await keys.rotate_scheduled_keys(time_budget_s=30) == 0


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
