"""Settings refuse unsafe values outside development; the local master key is made once."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from shared.config import Environment, Settings
from shared.crypto.master_key import MasterKeyError, load_or_generate_master_key

REAL_KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.mark.parametrize("env", [Environment.TEST, Environment.PRODUCTION])
def test_placeholder_secrets_are_refused_outside_development(env: Environment) -> None:
    with pytest.raises(ValidationError, match="OPENROUTER_MANAGEMENT_KEY holds a placeholder"):
        Settings(
            app_env=env,
            openrouter_management_key=SecretStr("sk-or-v1-your-provisioning-key"),
            encryption_master_key=SecretStr(REAL_KEY),
            database_url=SecretStr("postgresql://db/x"),
        )


def test_placeholders_are_tolerated_in_development() -> None:
    settings = Settings(
        app_env=Environment.DEVELOPMENT, supabase_service_role_key=SecretStr("changethis")
    )
    assert settings.supabase_service_role_key is not None


def test_production_refuses_embedded_defaults() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(app_env=Environment.PRODUCTION)
    message = str(refused.value)
    for name in ("OPENROUTER_MANAGEMENT_KEY", "ENCRYPTION_MASTER_KEY", "DATABASE_URL"):
        assert name in message


def test_the_original_provisioning_key_variable_is_still_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENROUTER_PROVISIONING_KEY", "sk-or-v1-" + "e" * 64)
    settings = Settings()
    assert settings.openrouter_management_key is not None
    assert settings.uses_openrouter_emulator is False
    assert "e" * 64 not in repr(settings)


def test_defaults_are_the_embedded_ones() -> None:
    settings = Settings()
    assert settings.port == 3001
    assert settings.uses_embedded_database
    assert settings.uses_openrouter_emulator
    assert settings.should_auto_migrate


def test_a_local_master_key_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = Settings(app_env=Environment.TEST, local_data_dir=tmp_path)

    first = load_or_generate_master_key(settings)
    second = load_or_generate_master_key(settings)

    assert (first.source, second.source) == ("generated", "file")
    assert first.material == second.material and len(first.material) == 32
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600
    assert base64.b64encode(first.material).decode() not in repr(first)


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_bad_configured_master_key_is_refused(value: str, tmp_path: Path) -> None:
    settings = Settings(
        app_env=Environment.TEST, local_data_dir=tmp_path, encryption_master_key=SecretStr(value)
    )
    with pytest.raises(MasterKeyError):
        load_or_generate_master_key(settings)


def test_settings_come_from_code_then_environment_then_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a .env file in the working directory and an environment that overrides part of it
    (tmp_path / ".env").write_text(
        "# local set-up\n"
        "export PORT=4000\n"
        "LOG_LEVEL='DEBUG'\n"
        'CORS_ALLOWED_ORIGINS=["https://a.example"]\n'
        "HOST=0.0.0.0 # every interface\n"
        "OPENROUTER_TIMEOUT_S=\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORT", "5000")
    monkeypatch.setenv("KMS_KEY_ID", "")

    # WHEN settings are read, one value also given by the code
    settings = Settings(log_level="WARNING")

    # THEN the code wins, then the environment, then the file; empty means unset
    assert settings.log_level == "WARNING"
    assert settings.port == 5000
    assert settings.host == "0.0.0.0"  # noqa: S104 - the value under test, never bound
    assert settings.cors_allowed_origins == ["https://a.example"]
    assert settings.openrouter_timeout_s == 10.0
    assert settings.kms_key_id is None


def test_a_list_that_is_not_json_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCRYPTION_PREVIOUS_MASTER_KEYS", "not-json-and-secret-looking")
    with pytest.raises(
        ValueError, match="ENCRYPTION_PREVIOUS_MASTER_KEYS must be a JSON list"
    ) as e:
        Settings()
    assert "secret-looking" not in str(e.value)
