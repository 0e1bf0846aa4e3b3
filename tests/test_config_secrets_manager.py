"""Secrets come from AWS Secrets Manager at start-up (moto's real API), cached per container."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws
from pydantic import ValidationError

from shared.config import Environment, Settings

SECRET_ID = "openrouter-agent/production/settings"
MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
SECRETS: dict[str, Any] = {
    "DATABASE_URL": "postgresql://app:pw-from-secrets-manager@db.internal:5432/app",
    "OPENROUTER_MANAGEMENT_KEY": "sk-or-v1-" + "a" * 64,
    "ENCRYPTION_MASTER_KEY": MASTER_KEY,
    "CRON_SECRET": "cron-secret-from-secrets-manager",
}


def clear_parameter_cache() -> None:
    """Powertools' per-container cache, emptied as a new container would start."""
    parameters.clear_caches()  # type: ignore[no-untyped-call]


@pytest.fixture
def secrets_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for name in ("DATABASE_URL", "OPENROUTER_MANAGEMENT_KEY", "CRON_SECRET", "APP_ENV"):
        monkeypatch.delenv(name, raising=False)
    clear_parameter_cache()
    with mock_aws():
        client = boto3.client("secretsmanager")
        client.create_secret(Name=SECRET_ID, SecretString=json.dumps(SECRETS))
        yield client
    clear_parameter_cache()


def test_a_lambda_gets_its_secrets_from_secrets_manager_by_name(
    secrets_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a production function whose environment holds only the secret's name
    monkeypatch.setenv("SECRETS_MANAGER_SECRET_ID", SECRET_ID)

    # WHEN its settings are read
    settings = Settings(app_env=Environment.PRODUCTION)

    # THEN every credential comes from the secret, and production's checks pass
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == SECRETS["DATABASE_URL"]
    assert settings.openrouter_management_key is not None
    assert (
        settings.openrouter_management_key.get_secret_value()
        == SECRETS["OPENROUTER_MANAGEMENT_KEY"]
    )
    assert settings.cron_secret is not None
    assert settings.cron_secret.get_secret_value() == SECRETS["CRON_SECRET"]
    # and none of them shows in the settings' own text
    assert "pw-from-secrets-manager" not in repr(settings)


def test_the_secret_is_cached_per_container(
    secrets_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN settings read once
    monkeypatch.setenv("SECRETS_MANAGER_SECRET_ID", SECRET_ID)
    first = Settings()

    # WHEN the secret changes and settings are read again within the cache's age
    secrets_manager.put_secret_value(
        SecretId=SECRET_ID, SecretString=json.dumps({**SECRETS, "CRON_SECRET": "x" * 40})
    )
    second = Settings()

    # THEN the cached value is used (no second call), until the cache is refreshed
    assert first.cron_secret == second.cron_secret
    clear_parameter_cache()
    third = Settings()
    assert third.cron_secret is not None
    assert third.cron_secret.get_secret_value() == "x" * 40


def test_the_environment_wins_over_the_secret(
    secrets_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an emergency override of one value in the environment
    monkeypatch.setenv("SECRETS_MANAGER_SECRET_ID", SECRET_ID)
    monkeypatch.setenv("CRON_SECRET", "override-from-the-environment")

    # WHEN settings are read
    settings = Settings()

    # THEN that value is the environment's, the others the secret's
    assert settings.cron_secret is not None
    assert settings.cron_secret.get_secret_value() == "override-from-the-environment"
    assert settings.database_url is not None


def test_a_misspelt_name_in_the_secret_stops_the_start(
    secrets_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a secret with a name that is not a secret setting
    secrets_manager.put_secret_value(
        SecretId=SECRET_ID, SecretString=json.dumps({**SECRETS, "OPENROUTER_MANAGMENT_KEY": "x"})
    )
    monkeypatch.setenv("SECRETS_MANAGER_SECRET_ID", SECRET_ID)

    # WHEN / THEN the function refuses to start, naming it (and never a value)
    with pytest.raises(ValueError, match="OPENROUTER_MANAGMENT_KEY") as refused:
        Settings()
    assert "pw-from-secrets-manager" not in str(refused.value)


def test_a_missing_secret_stops_the_start(
    secrets_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a function pointed at a secret that does not exist
    monkeypatch.setenv("SECRETS_MANAGER_SECRET_ID", "openrouter-agent/nowhere")

    # WHEN / THEN it refuses to start rather than run on defaults
    with pytest.raises((ValidationError, parameters.exceptions.GetParameterError)):
        Settings(app_env=Environment.PRODUCTION)
