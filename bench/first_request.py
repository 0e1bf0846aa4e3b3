"""One cold start, in this process: import a Lambda module, hand its handler one API Gateway v2
event, print the status. Run by bench/cold_start.py as a fresh interpreter each time.

    python -m bench.first_request <module> <METHOD> <path> [bearer token]
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
from pathlib import Path
from typing import Any

EVENT = Path(__file__).resolve().parent.parent / "tests/events/apiGatewayV2_GET_health.json"


class Context:
    function_name = "cold-start-bench"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:cold-start-bench"
    aws_request_id = "cold-start-bench-request"

    def get_remaining_time_in_millis(self) -> int:
        return 25_000


def api_gateway_event(method: str, path: str, token: str | None) -> dict[str, Any]:
    event: dict[str, Any] = copy.deepcopy(json.loads(EVENT.read_text()))
    event["routeKey"] = f"{method} {path}"
    event["rawPath"] = path
    event["requestContext"]["http"].update(method=method, path=path)
    if token is not None:
        event["headers"]["authorization"] = f"Bearer {token}"
    return event


def main() -> None:
    module, method, path = sys.argv[1:4]
    token = sys.argv[4] if len(sys.argv) > 4 else None
    handler = importlib.import_module(module).handler
    response = handler(api_gateway_event(method, path, token), Context())
    print(response["statusCode"])


if __name__ == "__main__":
    main()
