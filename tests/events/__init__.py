"""API Gateway sample events (payload format 2.0, shaped like AWS's documented examples)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

EVENTS_DIR = Path(__file__).parent


@cache
def _read(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / name).read_text())  # type: ignore[no-any-return]


def load_event(name: str, *, method: str | None = None, path: str | None = None) -> dict[str, Any]:
    """A fresh copy of a sample event; method and path are set where Mangum reads them."""
    event = copy.deepcopy(_read(name))
    if method is not None:
        event["requestContext"]["http"]["method"] = method
        event["routeKey"] = event["requestContext"]["routeKey"] = f"{method} {path or ''}"
    if path is not None:
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
    return event
