"""The command's promise when things are wrong before any work starts: a bad setting, a busy
port, a refused argument. One line (or, under --json, one JSON document) and an exit code;
never a traceback. Real processes, as a user runs them."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.cli.support import EXIT_INVALID, EXIT_UNAVAILABLE
from tests.test_cli import CLI, _clean_env

pytestmark = pytest.mark.integration  # real processes: `-m integration`

# Nothing listens here: a command that gets as far as the database fails fast and says so.
NO_DATABASE = "postgresql://127.0.0.1:1/none?connect_timeout=2"


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={**_clean_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _json_error(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one document on stdout, which must be an error."""
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    return error


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_a_misspelt_log_level_is_a_settings_error_never_a_traceback(tmp_path: Path) -> None:
    # GIVEN LOG_LEVEL or POWERTOOLS_LOG_LEVEL set to something that is no level
    # WHEN any command starts (even --help, which reads no settings)
    helped = _run(tmp_path, "--help", LOG_LEVEL="loud")
    powertools_helped = _run(tmp_path, "--help", POWERTOOLS_LOG_LEVEL="loud")
    as_json = _run(tmp_path, "tokens", "list", "--json", LOG_LEVEL="loud")
    plain = _run(tmp_path, "tokens", "list", LOG_LEVEL="loud")
    # POWERTOOLS_LOG_LEVEL is the logging library's own: it falls back; the command goes on
    powertools = _run(tmp_path, "tokens", "list", "--dsn", NO_DATABASE, POWERTOOLS_LOG_LEVEL="x")

    # THEN importing never fails; the command refuses LOG_LEVEL by name, in one line, exit 2
    for result in (helped, powertools_helped, as_json, plain, powertools):
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert helped.returncode == 0 and powertools_helped.returncode == 0, helped.stderr
    assert as_json.returncode == EXIT_INVALID
    error = _json_error(as_json)
    assert error["code"] == "invalid_settings" and "LOG_LEVEL" in error["message"], error
    assert plain.returncode == EXIT_INVALID
    assert _one_line(plain.stderr).startswith("error: invalid_settings: LOG_LEVEL: ")
    assert powertools.returncode == EXIT_UNAVAILABLE, powertools.stderr
    assert "database_unavailable" in powertools.stderr


def test_an_invalid_setting_is_named_and_its_value_never_echoed(tmp_path: Path) -> None:
    # GIVEN a numeric setting holding something else (which could be a pasted secret)
    value = "sk-pasted-by-mistake-7f3a"

    # WHEN a command reads the settings, with and without --json
    plain = _run(tmp_path, "keys", "list", DATABASE_POOL_MAX_SIZE=value)
    as_json = _run(tmp_path, "keys", "list", "--json", DATABASE_POOL_MAX_SIZE=value)
    not_a_list = _run(tmp_path, "keys", "list", CORS_ALLOWED_ORIGINS="https://a.example")

    # THEN one line names the variable, exit 2, and the value appears nowhere
    assert plain.returncode == EXIT_INVALID, plain.stderr
    line = _one_line(plain.stderr)
    assert line.startswith("error: invalid_settings: DATABASE_POOL_MAX_SIZE: "), line
    assert as_json.returncode == EXIT_INVALID
    error = _json_error(as_json)
    assert (error["code"], error["exit_code"]) == ("invalid_settings", EXIT_INVALID)
    assert "DATABASE_POOL_MAX_SIZE" in error["message"]
    for result in (plain, as_json):
        assert value not in result.stdout + result.stderr
    assert not_a_list.returncode == EXIT_INVALID, not_a_list.stderr
    assert "invalid_settings: CORS_ALLOWED_ORIGINS must be a JSON list" in not_a_list.stderr


def test_serve_on_a_busy_or_impossible_port_says_so_in_one_line(tmp_path: Path) -> None:
    # GIVEN a port another program listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])

        # WHEN the server and the emulator are asked to listen there, or out of range
        served = _run(tmp_path, "serve", "--port", str(busy))
        emulated = _run(tmp_path, "emulator", "--port", str(busy))
        too_high = _run(tmp_path, "serve", "--port", "70000")
        from_env = _run(tmp_path, "serve", PORT="70000")

    # THEN a port in use is "unavailable" (5), one line, before any database was started
    for result in (served, emulated, too_high, from_env):
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert served.returncode == EXIT_UNAVAILABLE, served.stdout + served.stderr
    assert _one_line(served.stderr) == (
        f"error: address_in_use: 127.0.0.1:{busy} is in use by another program"
    )
    assert served.stdout == ""
    assert not (tmp_path / "local" / "pgdata").exists()
    assert emulated.returncode == EXIT_UNAVAILABLE, emulated.stderr
    assert "address_in_use" in _one_line(emulated.stderr)
    # AND a port that cannot exist is invalid (2): as an argument, or as PORT
    assert too_high.returncode == EXIT_INVALID
    assert "--port" in too_high.stderr
    assert from_env.returncode == EXIT_INVALID
    assert _one_line(from_env.stderr).startswith("error: invalid_settings: PORT: ")


def test_a_bad_parameter_found_inside_a_command_is_invalid_argument(tmp_path: Path) -> None:
    # GIVEN Supabase configured but no direct connection (which operator commands need)
    env = {"SUPABASE_URL": "https://project.supabase.co"}

    # WHEN a command looks for its database
    as_json = _run(tmp_path, "tokens", "list", "--json", **env)
    plain = _run(tmp_path, "tokens", "list", **env)

    # THEN it is the operator's argument that is wrong: invalid_argument, exit 2
    assert as_json.returncode == EXIT_INVALID, as_json.stdout + as_json.stderr
    error = _json_error(as_json)
    assert error["code"] == "invalid_argument" and "--dsn" in error["message"], error
    assert plain.returncode == EXIT_INVALID
    assert _one_line(plain.stderr).startswith("error: invalid_argument: ")


def test_a_master_key_found_bad_when_first_used_is_a_settings_error(tmp_path: Path) -> None:
    """GIVEN an ENCRYPTION_MASTER_KEY too short to be a key WHEN a command needs it THEN the
    answer is invalid_settings naming the variable, exit 2, the value never echoed."""
    result = _run(
        tmp_path,
        "keys",
        "create",
        "--user",
        "emk1",
        "--json",
        ENCRYPTION_MASTER_KEY="short-secret-value",
    )
    error = _json_error(result)
    assert (result.returncode, error["code"]) == (EXIT_INVALID, "invalid_settings"), error
    assert "ENCRYPTION_MASTER_KEY" in error["message"]
    assert "short-secret-value" not in result.stdout + result.stderr
    # and nothing was made at OpenRouter or begun in the database before the key was found bad
    listed = _run(tmp_path, "keys", "list", "--json")
    assert json.loads(listed.stdout)["data"] == [], listed.stdout
    emulator_state = tmp_path / "local" / "openrouter-emulator.json"
    if emulator_state.exists():  # the emulator writes its state when something changes
        keys = json.loads(emulator_state.read_text())["keys"]
        assert [k for k in keys if not k.get("is_management")] == [], keys
