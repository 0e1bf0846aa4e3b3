"""serverless.yml grants each function only what it needs and holds no secret."""

from __future__ import annotations

from typing import Any

import yaml  # type: ignore[import-untyped]

from shared.config import REPOSITORY_ROOT, SECRET_SETTINGS

# Functions that create keys (so seal them with KMS), reveal them or complete system-key
# rotations (so unseal them and write Secrets Manager). Sagas started by a request continue in
# the key-operation job; rotations by schedule, emergency and reconciliation also create keys.
KEY_WRITERS = {
    "keys",
    "emergency",
    "jobs",  # the HTTP routes that re-run any job by hand
    "advanceKeyOperations",
    "reconcileKeys",
    "workLane0",  # the work lanes run every bulk job: emergencies and rotations among them
    "workLane1",
    "rotateScheduledKeys",
}


def _config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPOSITORY_ROOT / "serverless.yml").read_text())
    return loaded


def _actions(function: dict[str, Any]) -> set[str]:
    statements = function.get("iam", {}).get("role", {}).get("statements", [])
    return {action for statement in statements for action in statement["Action"]}


def test_every_function_has_its_own_role() -> None:
    config = _config()
    assert config["provider"]["iam"]["role"]["mode"] == "perFunction"
    assert "statements" not in config["provider"]["iam"]["role"]


def test_only_functions_that_write_keys_may_use_the_kms_key_or_write_secrets() -> None:
    # GIVEN every function's role
    functions = _config()["functions"]

    # THEN the KMS key and Secrets Manager writes belong to the key writers alone
    for name, function in functions.items():
        actions = _actions(function)
        kms = {a for a in actions if a.startswith("kms:")}
        writes = {
            a
            for a in actions
            if a in ("secretsmanager:PutSecretValue", "secretsmanager:CreateSecret")
        }
        if name in KEY_WRITERS:
            assert kms == {"kms:Encrypt", "kms:Decrypt"}, name
            assert writes == {"secretsmanager:PutSecretValue", "secretsmanager:CreateSecret"}, name
        else:
            assert kms == set() and writes == set(), name
        # and every function may read its settings, nothing more from Secrets Manager
        assert "secretsmanager:GetSecretValue" in actions, name


def test_no_statement_grants_everything() -> None:
    for name, function in _config()["functions"].items():
        for statement in function.get("iam", {}).get("role", {}).get("statements", []):
            assert statement["Resource"] != "*", name
            assert not any(action.endswith(":*") for action in statement["Action"]), name


def test_secrets_reach_functions_by_name_only() -> None:
    # GIVEN the environment every function gets
    config = _config()
    environments = [config["provider"].get("environment", {})] + [
        f.get("environment", {}) for f in config["functions"].values()
    ]

    # THEN none holds a secret setting, and the settings secret is named instead
    for environment in environments:
        assert not set(environment) & SECRET_SETTINGS
    assert "SECRETS_MANAGER_SECRET_ID" in config["provider"]["environment"]


def test_throttled_routes_are_routes_the_api_has() -> None:
    config = _config()
    route_keys = {
        event["httpApi"]
        for function in config["functions"].values()
        for event in function["events"]
        if "httpApi" in event
    }
    stage = config["resources"]["extensions"]["HttpApiStage"]["Properties"]
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
    assert set(stage["RouteSettings"]) <= route_keys
