"""The README's configuration table and the deployment files stay true to the code."""

from __future__ import annotations

import importlib
import json
import re

import yaml  # type: ignore[import-untyped]

from shared.config import REPOSITORY_ROOT, Settings
from shared.web.app_factory import GROUPS


def _documented_variables() -> set[str]:
    readme = (REPOSITORY_ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])
    }


def _setting_variables() -> set[str]:
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.update(choices if choices else [field_name.upper()])
    return names


def test_every_setting_is_documented_in_the_readme_and_nothing_else() -> None:
    assert _documented_variables() == _setting_variables()


def test_every_cron_route_is_scheduled_on_both_platforms() -> None:
    from shared.web.app_factory import create_app

    cron_routes = {r.path for r in create_app().state.access_rules if r.rule.name == "cron"}
    vercel = json.loads((REPOSITORY_ROOT / "vercel.json").read_text())
    serverless = yaml.safe_load((REPOSITORY_ROOT / "serverless.yml").read_text())
    scheduled_handlers = {
        spec["handler"].rpartition(".")[2].replace("_", "-")
        for spec in serverless["functions"].values()
        if any("schedule" in event for event in spec["events"])
    }
    assert {cron["path"].partition("?")[0] for cron in vercel["crons"]} == cron_routes
    assert {_cron_job_name(cron["path"]) for cron in vercel["crons"]} == scheduled_handlers


def test_vercel_routes_reach_every_group_through_modules_that_export_app() -> None:
    config = json.loads((REPOSITORY_ROOT / "vercel.json").read_text())
    destinations = {route["dest"] for route in config["routes"]}
    assert destinations == {f"functions/{group}/index.py" for group in GROUPS}
    for destination in destinations:
        module = importlib.import_module(destination.removesuffix(".py").replace("/", "."))
        assert hasattr(module, "app")


def test_serverless_declares_every_group_with_an_importable_handler() -> None:
    config = yaml.safe_load((REPOSITORY_ROOT / "serverless.yml").read_text())
    handlers = {name: spec["handler"] for name, spec in config["functions"].items()}
    http_functions = {
        name
        for name, spec in config["functions"].items()
        if any("httpApi" in event for event in spec["events"])
    }
    assert http_functions == set(GROUPS)
    assert config["provider"]["runtime"] == "python3.12"
    for handler in handlers.values():
        module_path, _, attribute = handler.rpartition(".")
        module = importlib.import_module(module_path.replace("/", "."))
        assert callable(getattr(module, attribute))


def _eventbridge_as_cron(expression: str) -> str:
    """An EventBridge schedule as the 5-field cron Vercel uses, for comparison."""
    if expression.startswith("rate("):
        amount, unit = expression[5:-1].split()
        assert unit.startswith("minute"), expression
        return "* * * * *" if amount == "1" else f"*/{amount} * * * *"
    fields = expression[5:-1].split()
    assert len(fields) == 6 and "?" in (fields[2], fields[4]), expression
    minute, hour, day, month, weekday, _year = fields
    if "/" in minute:  # 5/15 -> 5,20,35,50
        start, step = (int(p) for p in minute.split("/"))
        minute = ",".join(str(m) for m in range(start, 60, step))
    return " ".join("*" if f == "?" else f for f in (minute, hour, day, month, weekday))


def _valid_cron(expression: str) -> bool:
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
    fields = expression.split()
    if len(fields) != 5:
        return False
    for field, (low, high) in zip(fields, ranges, strict=True):
        for part in field.split(","):
            base = part.split("/")[0]
            if base == "*":
                continue
            if not base.isdigit() or not low <= int(base) <= high:
                return False
    return True


def _cron_job_name(path: str) -> str:
    """/api/jobs/work?lane=1 -> work-lane-1, as serverless.yml's handler work_lane_1 reads."""
    route, _, query = path.rpartition("/")[2].partition("?")
    lane = dict(part.split("=", 1) for part in query.split("&") if part).get("lane")
    return route if lane is None else f"{route}-lane-{lane}"


def test_both_platforms_run_the_same_jobs_at_the_same_times() -> None:
    vercel = json.loads((REPOSITORY_ROOT / "vercel.json").read_text())
    serverless = yaml.safe_load((REPOSITORY_ROOT / "serverless.yml").read_text())
    on_vercel = {_cron_job_name(cron["path"]): cron["schedule"] for cron in vercel["crons"]}
    on_aws = {
        spec["handler"].rpartition(".")[2].replace("_", "-"): _eventbridge_as_cron(
            next(e["schedule"] for e in spec["events"] if "schedule" in e)
        )
        for spec in serverless["functions"].values()
        if any("schedule" in event for event in spec["events"])
    }
    assert all(_valid_cron(expression) for expression in on_vercel.values())
    assert on_aws == on_vercel


def _example_path(template: str) -> str:
    return re.sub(r"\{\w+\}", "x1", template)


def _served_by(group: str) -> set[tuple[str, str]]:
    from shared.web.app_factory import create_app

    return {(m, r.path) for r in create_app(group).state.access_rules for m in r.methods}


def _route_regex(route_path: str) -> str:
    """An HTTP API route (`/api/keys/{proxy+}`, `/health/{check}`) as a regular expression."""
    parts = []
    for segment in route_path.strip("/").split("/"):
        if segment.endswith("+}"):
            parts.append(".+")
        elif segment.startswith("{"):
            parts.append("[^/]+")
        else:
            parts.append(re.escape(segment))
    return "^/" + "/".join(parts) + "$"


def _aws_function_for(method: str, path: str, functions: dict[str, object]) -> str | None:
    """The function API Gateway (HTTP API) sends a request to: an exact route beats a route
    with a greedy {proxy+}; among those, the longest literal prefix wins."""
    best: tuple[int, int, str] | None = None
    for name, spec in functions.items():
        for event in spec["events"]:  # type: ignore[index]
            if "httpApi" not in event:
                continue
            route_method, route_path = event["httpApi"].split(" ", 1)
            if route_method not in ("ANY", method):
                continue
            pattern = _route_regex(route_path)
            if not re.match(pattern, path):
                continue
            greedy = "+}" in route_path
            literal = len(route_path.split("{", 1)[0])
            rank = (0 if greedy else 1, literal, name)
            if best is None or rank[:2] > best[:2]:
                best = rank
    return None if best is None else best[2]


def test_every_route_is_reachable_through_both_configurations() -> None:
    from shared.web.app_factory import create_app

    vercel = json.loads((REPOSITORY_ROOT / "vercel.json").read_text())
    serverless = yaml.safe_load((REPOSITORY_ROOT / "serverless.yml").read_text())
    served = {group: _served_by(group) for group in GROUPS}
    unreachable = []
    for route in create_app().state.access_rules:
        path = _example_path(route.path)
        for method in route.methods:
            on_vercel = next(
                (
                    r["dest"].split("/")[1]
                    for r in vercel["routes"]
                    if re.match(f"^{r['src']}$", path)
                ),
                None,
            )
            on_aws = _aws_function_for(method, path, serverless["functions"])
            for platform, group in (("vercel", on_vercel), ("aws", on_aws)):
                if group is None or (method, route.path) not in served.get(group, set()):
                    unreachable.append(f"{platform}: {method} {route.path} -> {group}")
    assert unreachable == []


def test_both_platforms_run_the_same_python() -> None:
    # Vercel reads .python-version; Lambda reads the runtime in serverless.yml.
    serverless = yaml.safe_load((REPOSITORY_ROOT / "serverless.yml").read_text())
    vercel_python = (REPOSITORY_ROOT / ".python-version").read_text().strip()
    assert serverless["provider"]["runtime"] == f"python{vercel_python}"


def _error_codes_in(source: str) -> set[str]:
    """Codes an error may carry: AppError classes' `code = ...`, `code=...` arguments, and the
    first string of error_response(status, code, ...) and TokenRejected(code, ...)."""
    import ast

    codes: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "code"
        ]:
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                codes.add(value.value)
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    codes.add(str(keyword.value.value))
            name = getattr(node.func, "id", None)
            position = {"error_response": 1, "TokenRejected": 0}.get(str(name))
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    codes.add(argument.value)
    return codes


def test_every_error_code_the_code_can_answer_is_in_the_readme() -> None:
    readme = (REPOSITORY_ROOT / "README.md").read_text()
    documented = set(re.findall(r"`([a-z_]+)`", readme))
    answered = set().union(
        *(_error_codes_in(path.read_text()) for path in (REPOSITORY_ROOT / "shared").rglob("*.py"))
    )
    assert answered, "the scan found no codes at all"
    assert sorted(answered - documented) == []


def test_the_local_server_runs_the_deployed_jobs_on_their_schedules() -> None:
    from shared.jobs.schedule import scheduled_jobs

    vercel = json.loads((REPOSITORY_ROOT / "vercel.json").read_text())
    # locally one process: one work lane stands for all of them
    on_vercel = {
        cron["path"].partition("?")[0].rpartition("/")[2]: cron["schedule"]
        for cron in vercel["crons"]
    }
    assert {name: cron.expression for name, (_, cron) in scheduled_jobs().items()} == on_vercel


def test_both_platforms_run_as_many_work_lanes_as_configured() -> None:
    import functions.jobs.aws as aws

    vercel = json.loads((REPOSITORY_ROOT / "vercel.json").read_text())
    serverless = yaml.safe_load((REPOSITORY_ROOT / "serverless.yml").read_text())
    lanes = Settings().work_lanes
    on_vercel = sorted(
        c["path"] for c in vercel["crons"] if c["path"].startswith("/api/jobs/work?")
    )
    on_aws = sorted(
        spec["handler"]
        for spec in serverless["functions"].values()
        if spec["handler"].startswith("functions/jobs/aws.work_lane_")
    )
    assert on_vercel == [f"/api/jobs/work?lane={n}" for n in range(lanes)]
    assert on_aws == [f"functions/jobs/aws.work_lane_{n}" for n in range(lanes)]
    assert all(callable(getattr(aws, f"work_lane_{n}")) for n in range(lanes))
