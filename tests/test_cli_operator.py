"""The operator's commands through typer's runner: every command, its --json, its exit codes.

Commands run against this test's database (--dsn) and the test's OpenRouter emulator, through
the same services as the functions; only the runtime's construction is pointed at them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from shared.cli import app, support
from shared.config import Settings
from shared.db.database import Database
from shared.jobs.queue import QueueSettings
from shared.keys.scheduled_rotation import rotate_scheduled_keys
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime
from shared.usage.service import UsageService

Invoke = Callable[..., Result]


@pytest.fixture
def cli(
    settings: Settings,
    database_dsn: str,
    emulator: Emulator,
    openrouter: OpenRouterClient,
    monkeypatch: pytest.MonkeyPatch,
) -> Invoke:
    def build_runtime(_: Settings, database: Database) -> Runtime:
        return Runtime(settings, database=database, openrouter=openrouter, emulator=emulator)

    monkeypatch.setattr(support, "build_runtime", build_runtime)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args, "--dsn", database_dsn])

    return invoke


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def sql(dsn: str, statement: str) -> None:
    async def execute() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(statement.encode())

    asyncio.run(execute())


def sql_value(dsn: str, query: str) -> Any:
    async def fetch() -> Any:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            row = await (await conn.execute(query.encode())).fetchone()
            return None if row is None else row[0]

    return asyncio.run(fetch())


def test_keys_create_show_rotate_list_and_revoke(cli: Invoke, emulator: Emulator) -> None:
    # WHEN an operator creates a user's key
    created = cli("keys", "create", "--user", "alice", "--tier", "micro")

    # THEN the secret is the last line of stdout, alone, and the key exists at OpenRouter
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("sk-or-v1-") and len(emulator.user_keys()) == 1

    # AND show, rotate, list and revoke all work on it, in JSON too
    shown = as_json(cli("keys", "show", "--user", "alice", "--json"))
    assert shown["key"]["owner"] == "user:alice" and shown["secret"] is None
    rotated = as_json(cli("keys", "rotate", "--user", "alice", "--grace-seconds", "0", "--json"))
    assert rotated["previous_key"]["id"] == shown["key"]["id"]
    listed = as_json(cli("keys", "list", "--user", "alice", "--json"))
    assert [k["state"] for k in listed["data"]] == ["current", "revoked"]
    table = cli("keys", "list")
    assert table.exit_code == 0 and "user:alice" in table.stdout
    revoked = cli("keys", "revoke", rotated["key"]["id"], "--reason", "leaving")
    again = cli("keys", "revoke", rotated["key"]["id"])
    assert revoked.exit_code == 0 and again.exit_code == 0
    assert emulator.user_keys() == []


def test_exit_codes_say_what_went_wrong(cli: Invoke) -> None:
    assert cli("keys", "create", "--user", "bob").exit_code == 0
    assert cli("keys", "create", "--user", "bob").exit_code == support.EXIT_CONFLICT
    assert cli("keys", "show", "--user", "nobody").exit_code == support.EXIT_NOT_FOUND
    assert cli("keys", "create").exit_code == support.EXIT_INVALID  # neither --user nor --system
    assert cli("tiers", "set", "free", "lots").exit_code == support.EXIT_INVALID
    assert cli("tiers", "set", "platinum", "5").exit_code == support.EXIT_NOT_FOUND
    missing = cli("jobs", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == support.EXIT_NOT_FOUND
    assert "job_not_found" in missing.stderr


def test_an_emergency_rotation_from_the_command_line(cli: Invoke, emulator: Emulator) -> None:
    # GIVEN three users' keys
    for user in ("u1", "u2", "u3"):
        assert cli("keys", "create", "--user", user).exit_code == 0
    old = {k.hash for k in emulator.user_keys()}

    # WHEN an operator first lists the scope, then rotates it for real
    dry = as_json(
        cli("keys", "rotate", "--emergency", "--all", "--reason", "leak", "--dry-run", "--json")
    )
    done = as_json(cli("keys", "rotate", "--emergency", "--all", "--reason", "leak", "--json"))
    refused = cli("keys", "rotate", "--emergency", "--all")  # no reason

    # THEN the dry run changed nothing, and the real one replaced every key
    assert dry["total"] == 3 and len(dry["keys"]) == 3
    assert (done["total"], done["replaced"], done["failed"], done["status"]) == (
        3,
        3,
        0,
        "completed",
    )
    assert {k.hash for k in emulator.user_keys()}.isdisjoint(old)
    assert refused.exit_code == support.EXIT_INVALID

    # AND without --json, one user's keys again: the progress bar on stderr, the summary on stdout
    plain = cli("keys", "rotate", "--emergency", "--user", "u1", "--reason", "again")
    assert plain.exit_code == 0, plain.output
    assert "1 replaced, 0 failed, 0 left (status completed)" in plain.stdout
    assert "emergency rotation" in plain.stderr


def test_usage_report_reset_and_tiers(cli: Invoke, runtime: Runtime) -> None:
    # GIVEN a user with spend this month
    assert cli("keys", "create", "--user", "carol", "--tier", "standard").exit_code == 0
    asyncio.run(
        UsageService(runtime).log(
            [{"user_id": "carol", "generation_id": "g1", "model": "m", "cost_usd": "40"}],
            actor="t",
        )
    )

    # WHEN the operator reads the month, resets it, and changes the tiers
    mine = as_json(cli("usage", "report", "--user", "carol", "--json"))
    system = as_json(cli("usage", "report", "--json"))
    tables = cli("usage", "report")
    reset = as_json(cli("reset-usage", "--user", "carol", "--reason", "goodwill", "--json"))
    moved = as_json(cli("tiers", "user", "carol", "micro", "--json"))
    assert cli("tiers", "set", "standard", "60").exit_code == 0
    tiers = as_json(cli("tiers", "list", "--json"))
    after = as_json(cli("usage", "report", "--user", "carol", "--json"))

    # THEN each says what the services say
    assert (mine["spent_usd"], mine["limit_usd"]) == ("40", "50")
    assert system["users"] == 1 and [u["user_id"] for u in system["over_80_percent"]] == ["carol"]
    assert "over 80 %" in tables.stdout and "carol" in tables.stdout
    assert reset["users"][0]["amount_usd"] == "-40" and reset["users"][0]["key_updated"]
    assert (moved["previous_tier"], moved["tier"]) == ("standard", "micro")
    assert {t["tier"]: t["monthly_budget_usd"] for t in tiers["data"]}["standard"] == "60"
    assert (after["spent_usd"], after["limit_usd"]) == ("0", "100")


def test_tokens_jobs_audit_and_reconcile(cli: Invoke, database_dsn: str) -> None:
    # Tokens: issued once on stdout, listed without the token, revoked
    issued = cli("tokens", "issue", "--name", "ops", "--scope", "admin")
    assert issued.exit_code == 0
    token = issued.stdout.strip()
    listed = as_json(cli("tokens", "list", "--json"))
    assert [t["name"] for t in listed] == ["ops"] and token not in json.dumps(listed)
    assert cli("tokens", "revoke", listed[0]["id"]).exit_code == 0
    # a lifetime past any storable date is refused like one past the maximum, not a traceback
    for days in ("731", "3000000", "99999999999"):
        refused = cli(
            "tokens", "issue", "--name", "far", "--scope", "keys:read", "--expires-in-days", days
        )
        assert refused.exit_code == 2, (days, refused.output)
        assert "expiry_too_far" in refused.output and "Traceback" not in refused.output

    # Jobs: the month's scheduled rotation shows up with its progress
    assert cli("keys", "create", "--system", "formul8").exit_code == 0
    sql(
        database_dsn,
        "update api_keys set activated_at = date_trunc('month', now()) - interval '1 day'",
    )
    support.run(database_dsn, lambda r: rotate_scheduled_keys(r, QueueSettings()))
    jobs = as_json(cli("jobs", "list", "--json"))["data"]
    assert [(j["kind"], j["done"], j["status"]) for j in jobs] == [
        ("scheduled_rotation", 1, "done")
    ]
    assert as_json(cli("jobs", "show", jobs[0]["id"], "--json"))["total"] == 1

    # Reconcile: nothing to mend
    mended = as_json(cli("reconcile", "--json"))
    assert mended["deleted_at_openrouter"] == [] and mended["revoked_missing"] == []

    # Audit: intact, then broken by someone who disabled the guard
    assert as_json(cli("audit", "verify", "--json"))["intact"] is True
    first_seq = sql_value(database_dsn, "select min(seq) from audit_log")
    sql(
        database_dsn,
        "alter table audit_log disable trigger audit_log_append_only;"
        " update audit_log set actor = 'someone else'"
        " where seq = (select min(seq) from audit_log);"
        " alter table audit_log enable trigger audit_log_append_only",
    )
    broken = cli("audit", "verify", "--json")
    assert broken.exit_code == support.EXIT_PROBLEM
    assert json.loads(broken.stdout)["broken_seq"] == first_seq


def test_keys_rewrap_moves_every_data_key_to_a_new_master_key(
    cli: Invoke,
    settings: Settings,
    emulator: Emulator,
    openrouter: OpenRouterClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN two keys sealed under the local master key
    assert cli("keys", "create", "--user", "dora").exit_code == 0
    assert cli("keys", "create", "--system", "formul8").exit_code == 0
    old = Runtime(settings).master_key().material

    # WHEN the operator sets a new master key, keeps the old one as previous, and re-wraps
    rotated = settings.model_copy(
        update={
            "encryption_master_key": SecretStr(base64.b64encode(os.urandom(32)).decode()),
            "encryption_previous_master_keys": [SecretStr(base64.b64encode(old).decode())],
        }
    )

    def build_runtime(_: Settings, database: Database) -> Runtime:
        return Runtime(rotated, database=database, openrouter=openrouter, emulator=emulator)

    monkeypatch.setattr(support, "build_runtime", build_runtime)
    first = cli("keys", "rewrap")
    again = cli("keys", "rewrap")

    # THEN both moved once, and nothing is left under the old key
    assert first.exit_code == 0 and first.stdout.strip() == "re-wrapped 2 data keys"
    assert again.stdout.strip() == "re-wrapped 0 data keys"


MONEY = r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?"


def _money_fields(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every field of a JSON document that holds dollars (its name ends in _usd)."""
    if isinstance(value, dict):
        return [
            found
            for key, item in value.items()
            for found in (
                [(f"{path}.{key}", item)]
                if key.endswith("_usd") and not isinstance(item, dict)
                else _money_fields(item, f"{path}.{key}")
            )
        ]
    if isinstance(value, list):
        return [
            found for n, item in enumerate(value) for found in _money_fields(item, f"{path}[{n}]")
        ]
    return []


def test_reports_after_a_reset_read_true_and_money_is_written_one_way(
    cli: Invoke, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a line of the report, unwrapped
    # GIVEN a free user who spent $8.20 over three events in two models, then was reset
    assert cli("keys", "create", "--user", "dana", "--tier", "free").exit_code == 0
    asyncio.run(
        UsageService(runtime).log(
            [
                {"user_id": "dana", "generation_id": f"d{n}", "model": model, "cost_usd": cost}
                for n, (model, cost) in enumerate([("m1", "4.5"), ("m2", "3.2"), ("m2", "0.5")])
            ],
            actor="t",
        )
    )
    assert cli("reset-usage", "--user", "dana", "--reason", "goodwill").exit_code == 0

    # WHEN the operator reads the user's month and the system's, as tables and as JSON
    mine = as_json(cli("usage", "report", "--user", "dana", "--json"))
    system = as_json(cli("usage", "report", "--json"))
    user_table = cli("usage", "report", "--user", "dana").stdout
    system_table = cli("usage", "report").stdout

    # THEN both say the same: spent = events + adjustments, the breakdowns sum to the events
    for report, breakdowns in ((mine, ("by_model",)), (system, ("by_model", "by_tier"))):
        assert (report["spent_usd"], report["events_usd"], report["adjustments_usd"]) == (
            "0",
            "8.2",
            "-8.2",
        ), report
        for name in breakdowns:
            assert sum(Decimal(row["cost_usd"]) for row in report[name]) == Decimal("8.2")
    for table in (user_table, system_table):
        assert "spent $0.00" in table, table
        assert (
            "events $8.20 over 3 events, corrected $0.00, unreported $0.00, adjustments -$8.20"
            in (table)
        ), table
        assert "events by model" in table
    assert "adjustments -$8.20) by 1 user\n" in system_table
    # AND every amount in every JSON document is an exact decimal string, written one way
    tiers = as_json(cli("tiers", "list", "--json"))
    keys = as_json(cli("keys", "list", "--json"))
    fields = [f for doc in (mine, system, tiers, keys) for f in _money_fields(doc)]
    assert len(fields) > 10
    for path, value in fields:
        assert value is None or (isinstance(value, str) and re.fullmatch(MONEY, value)), (
            path,
            value,
        )


def test_a_key_limited_to_nothing_is_not_shown_as_unlimited(cli: Invoke) -> None:
    # GIVEN a tier whose budget is $0, and a key of a user on it
    assert cli("tiers", "set", "free", "0", "--reason", "closed beta").exit_code == 0
    assert cli("keys", "create", "--user", "zero", "--tier", "free").exit_code == 0

    # WHEN the operator shows it, lists it, and lists an emergency's one key in scope
    shown = cli("keys", "show", "--user", "zero").stdout
    listed = cli("keys", "list", "--user", "zero").stdout
    dry = cli(
        "keys", "rotate", "--emergency", "--user", "zero", "--reason", "lost laptop", "--dry-run"
    )

    # THEN the limit is $0.00, and one key is one key
    assert "limit $0.00" in shown and "unlimited" not in shown, shown
    assert "$0.00" in listed and "unlimited" not in listed, listed
    assert "1 key in scope" in dry.stdout, dry.stdout


def _refused(result: Result, code: str) -> dict[str, Any]:
    """Under --json, the one document on stdout is the error, with exit 2."""
    assert result.exit_code == support.EXIT_INVALID, result.output
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    assert (error["code"], error["exit_code"]) == (code, support.EXIT_INVALID), error
    return error


def test_ids_and_names_are_refused_as_the_api_refuses_them(cli: Invoke) -> None:
    # GIVEN values the HTTP API's own types refuse: an empty user id, one of 500 characters,
    # one with a slash, a system name with a space, a tier name in capitals, a short reason
    refusals = [
        ("keys", "create", "--user", ""),
        ("keys", "create", "--user", "u" * 500),
        ("keys", "create", "--user", "a/b"),
        ("keys", "create", "--system", "Bad Name"),
        ("keys", "create", "--user", "ok", "--tier", "Gold Plus"),
        ("keys", "rotate", "--user", ""),
        ("keys", "rotate", "--emergency", "--user", "", "--reason", "leaked"),
        ("keys", "show", "--system", ""),
        ("keys", "list", "--user", "x" * 256),
        ("usage", "report", "--user", ""),
        ("reset-usage", "--user", "", "--reason", "goodwill"),
        ("reset-usage", "--tier", "free", "--reason", "  "),
        ("tiers", "user", "", "free"),
        ("tiers", "user", "ok", "NOT-A-TIER"),
        ("tiers", "set", "Free", "5"),
        ("tokens", "issue", "--name", " ", "--scope", "admin"),
    ]

    # WHEN an operator passes each, asking for JSON
    # THEN each is invalid_input, exit 2, one JSON document, the option named
    for args in refusals:
        error = _refused(cli(*args, "--json"), "invalid_input")
        assert "Traceback" not in error["message"], (args, error)

    # AND a value left out (`--system --json` gives --system the value "--json") creates nothing
    for args in (("keys", "create", "--system", "--json"), ("keys", "create", "--user", "--json")):
        missing = cli(*args)
        assert missing.exit_code == support.EXIT_INVALID, (args, missing.output)
        assert "--json" in missing.stderr
    assert as_json(cli("keys", "list", "--json"))["data"] == []
    assert as_json(cli("tokens", "list", "--json")) == []


def test_a_tier_budget_is_a_plain_amount_of_dollars(cli: Invoke) -> None:
    before = as_json(cli("tiers", "list", "--json"))

    # WHEN an operator sets a budget that is not a number, not finite, negative, too large, or
    # finer than the micro-dollar every amount is kept in
    for budget in ("NaN", "nan", "sNaN", "Infinity", "1e999", "10000001", "0.0000001", "1e-9",
                   "lots", "5 dollars"):  # fmt: skip
        # THEN it is invalid_input, exit 2, and nothing changed
        _refused(cli("tiers", "set", "free", budget, "--json"), "invalid_input")
    for budget in ("-1", "-inf"):  # click reads these as options: a usage error, exit 2 too
        negative = cli("tiers", "set", "free", budget, "--json")
        assert negative.exit_code == support.EXIT_INVALID, negative.output
    assert as_json(cli("tiers", "list", "--json")) == before

    # AND a plain amount, or unlimited, is set and answered in one JSON document
    set_to = as_json(cli("tiers", "set", "free", "12.500000", "--reason", "beta", "--json"))
    unlimited = as_json(cli("tiers", "set", "free", "unlimited", "--json"))
    assert (set_to["tier"], set_to["monthly_budget_usd"]) == ("free", "12.5")
    assert unlimited["monthly_budget_usd"] is None and "description" in unlimited


def test_every_write_command_answers_in_json(cli: Invoke) -> None:
    # GIVEN a key and a service token
    created = as_json(cli("keys", "create", "--user", "erin", "--json"))
    issued = as_json(cli("tokens", "issue", "--name", "ops", "--scope", "admin", "--json"))

    # WHEN each is revoked, data keys are re-wrapped and a tier's budget set, all in JSON
    revoked = as_json(cli("keys", "revoke", created["key"]["id"], "--reason", "gone", "--json"))
    again = as_json(cli("keys", "revoke", created["key"]["id"], "--json"))
    rewrapped = as_json(cli("keys", "rewrap", "--json"))
    token_revoked = as_json(cli("tokens", "revoke", issued["token_info"]["id"], "--json"))
    tier = as_json(cli("tiers", "set", "standard", "60", "--json"))

    # THEN each is one document shaped as the HTTP API answers (or as its list command prints)
    assert issued["token"].startswith("ora_st_") and issued["token_info"]["name"] == "ops"
    assert (revoked["id"], revoked["state"]) == (created["key"]["id"], "revoked")
    assert again["state"] == "revoked"
    assert rewrapped == {"rewrapped": 0}
    assert token_revoked["id"] == issued["token_info"]["id"] and token_revoked["revoked_at"]
    assert (tier["tier"], tier["monthly_budget_usd"]) == ("standard", "60")
    # AND an error under --json is one document too
    missing = cli("tokens", "revoke", "00000000-0000-0000-0000-000000000000", "--json")
    assert missing.exit_code == support.EXIT_NOT_FOUND
    assert json.loads(missing.stdout)["error"]["code"] == "token_not_found"


def test_the_system_report_shows_drift_and_shares_as_the_api_writes_them(
    cli: Invoke, runtime: Runtime, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a free user who reported $9 but whose key OpenRouter counted at $10, with the
    drift measured WHEN the operator reads the month as a table THEN it lists the drift and
    the share used is written as amounts are ("100", not "100.00"); and a --period beside
    --user, which the user's report cannot honour, is refused instead of ignored."""
    monkeypatch.setenv("COLUMNS", "200")
    created = as_json(cli("keys", "create", "--user", "erin", "--tier", "free", "--json"))
    asyncio.run(
        UsageService(runtime).log(
            [{"user_id": "erin", "generation_id": "e1", "model": "m", "cost_usd": "9"}],
            actor="t",
        )
    )
    emulator.charge(created["secret"], Decimal(10))
    assert cli("jobs", "run", "measure-usage-drift").exit_code == 0

    table = cli("usage", "report").stdout
    both = cli("usage", "report", "--user", "erin", "--period", "2026-01")

    assert "drift from OpenRouter" in table, table
    cells = r"[\s│]+"
    assert re.search(cells.join(["erin", r"\$10\.00", r"\$9\.00", r"\$1\.00"]), table), table
    # the drift job reads OpenRouter's count into the books first: $10 of $10 spent
    assert re.search(cells.join(["erin", "free", r"\$10\.00", r"\$10\.00", "100", ""]), table)
    assert both.exit_code == 2, both.stdout


def test_rotate_refuses_what_it_would_silently_ignore(cli: Invoke) -> None:
    """GIVEN two users with keys WHEN an operator names both in an emergency dry run THEN
    both are in scope (not only the last); and a plain rotation refuses --dry-run and --tier,
    which only an emergency honours, instead of rotating for real."""
    for user in ("r1", "r2"):
        assert cli("keys", "create", "--user", user).exit_code == 0
    dry = as_json(
        cli(
            "keys",
            "rotate",
            "--emergency",
            "--user",
            "r1",
            "--user",
            "r2",
            "--reason",
            "leak drill",
            "--dry-run",
            "--json",
        )
    )
    plain_dry = cli("keys", "rotate", "--user", "r1", "--dry-run", "--json")
    plain_tier = cli("keys", "rotate", "--user", "r1", "--tier", "free", "--json")
    both = cli("keys", "rotate", "--user", "r1", "--user", "r2", "--json")
    all_and_user = cli(
        "keys", "rotate", "--emergency", "--all", "--user", "r1", "--reason", "x" * 5, "--json"
    )
    shown = as_json(cli("keys", "show", "--user", "r1", "--json"))

    assert dry["total"] == 2, dry
    for refused in (plain_dry, plain_tier, both, all_and_user):
        _refused(refused, "invalid_argument")
    assert shown["key"]["state"] == "current" and shown.get("rotation") is None
