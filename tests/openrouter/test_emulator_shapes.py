"""The emulator answers every endpoint with the documented shapes, errors and status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal

import httpx
import pytest

from shared.openrouter.emulator import Emulator
from tests.openrouter.documented_fields import (
    CREDITS,
    CURRENT_KEY,
    ERROR_BODY,
    KEY_OBJECT,
    shape_errors,
)


@pytest.fixture
async def raw(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP to the emulator with the management key, bypassing our client."""
    async with httpx.AsyncClient(
        transport=emulator.transport(),
        base_url="http://emulator/api/v1",
        headers={"Authorization": f"Bearer {emulator.management_key}"},
    ) as client:
        yield client


async def _create(raw: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await raw.post("/keys", json={"name": "shape-check", **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_create_returns_the_key_object_and_the_secret_at_top_level(
    raw: httpx.AsyncClient,
) -> None:
    # WHEN a key is created with a limit
    body = await _create(raw, limit=10, limit_reset="monthly")

    # THEN the body is {"data": <key object>, "key": "sk-or-v1-..."} with every documented field
    assert set(body) == {"data", "key"}
    assert shape_errors(body["data"], KEY_OBJECT) == []
    assert isinstance(body["key"], str) and body["key"].startswith("sk-or-v1-")
    data = body["data"]
    assert isinstance(data, dict)
    assert data["updated_at"] is None  # a never-updated key has a null updated_at
    assert data["limit_remaining"] == 10
    assert datetime.fromisoformat(str(data["created_at"])).utcoffset() is not None


async def test_every_key_endpoint_returns_documented_shapes(raw: httpx.AsyncClient) -> None:
    created = await _create(raw)
    key_hash = created["data"]["hash"]  # type: ignore[index]

    listed = (await raw.get("/keys")).json()
    fetched = (await raw.get(f"/keys/{key_hash}")).json()
    patched = (await raw.patch(f"/keys/{key_hash}", json={"limit": 5})).json()
    current = (await raw.get("/key")).json()
    credits = (await raw.get("/credits")).json()
    deleted = await raw.delete(f"/keys/{key_hash}")

    assert [shape_errors(item, KEY_OBJECT) for item in listed["data"]] == [[]]
    assert shape_errors(fetched["data"], KEY_OBJECT) == []
    assert shape_errors(patched["data"], KEY_OBJECT) == []
    assert patched["data"]["updated_at"] is not None
    assert shape_errors(current["data"], CURRENT_KEY) == []
    assert current["data"]["is_management_key"] is True
    assert shape_errors(credits["data"], CREDITS) == []
    assert (deleted.status_code, deleted.json()) == (200, {"deleted": True})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("PATCH", "/keys/{hash}", {}, 400, "No update fields provided"),
        ("PATCH", "/keys/{hash}", {"unknown": 1}, 400, "No update fields provided"),
        ("GET", "/keys/" + "0" * 64, None, 404, "Resource not found"),
        ("DELETE", "/keys/" + "0" * 64, None, 404, "Resource not found"),
        ("POST", "/keys", {"name": ""}, 400, None),
        ("POST", "/keys", {"name": "x", "limit_reset": "hourly"}, 400, None),
        ("POST", "/keys", {"name": "x", "expires_at": "2030-01-01T00:00:00+02:00"}, 400, None),
        ("POST", "/keys", {"name": "x", "expires_at": "2030-01-01T00:00Z"}, 400, None),
        ("POST", "/keys", {"name": "x", "expires_at": "2030-01-01T00:00:00"}, 400, None),
        ("POST", "/keys", {"name": "x", "external": {"user": ""}}, 400, None),
        ("POST", "/keys", {"name": "x", "external": {"user": "u", "api_key": "short"}}, 400, None),
    ],
)
async def test_documented_errors(
    raw: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, object] | None,
    status: int,
    message: str | None,
) -> None:
    created = await _create(raw)
    path = path.format(hash=created["data"]["hash"])  # type: ignore[index]

    response = await raw.request(method, path, json=body)

    assert response.status_code == status
    error = response.json()["error"]
    assert shape_errors(error, ERROR_BODY) == []
    assert error["code"] == status
    if message is not None:
        assert error["message"] == message


async def test_authentication_errors(emulator: Emulator, raw: httpx.AsyncClient) -> None:
    user_secret = (await _create(raw))["key"]
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="http://emulator/api/v1"
    ) as anonymous:
        missing = await anonymous.get("/keys")
        bad = await anonymous.get("/keys", headers={"Authorization": "Bearer sk-or-v1-" + "f" * 64})
        not_management = await anonymous.get(
            "/keys", headers={"Authorization": f"Bearer {user_secret}"}
        )
        own_key = await anonymous.get("/key", headers={"Authorization": f"Bearer {user_secret}"})

    assert (missing.status_code, missing.json()["error"]["message"]) == (
        401,
        "Missing Authentication header",
    )
    assert bad.status_code == 401
    assert (not_management.status_code, not_management.json()["error"]["message"]) == (
        403,
        "Only management keys can perform this operation",
    )
    # /key accepts any valid key and says it is not a management key
    assert own_key.status_code == 200
    assert own_key.json()["data"]["is_management_key"] is False


async def test_listing_is_newest_first_100_per_page_and_hides_disabled_by_default(
    emulator: Emulator, raw: httpx.AsyncClient
) -> None:
    hashes = [(await _create(raw, name=f"k{i}"))["data"]["hash"] for i in range(105)]  # type: ignore[index]
    await raw.patch(f"/keys/{hashes[-1]}", json={"disabled": True})

    first = (await raw.get("/keys", params={"offset": 0})).json()["data"]
    second = (await raw.get("/keys", params={"offset": 100})).json()["data"]
    with_disabled = (await raw.get("/keys", params={"include_disabled": "true"})).json()["data"]

    assert len(first) == 100
    assert [k["hash"] for k in first + second] == list(reversed(hashes[:-1]))
    assert with_disabled[0]["hash"] == hashes[-1]
    assert with_disabled[0]["disabled"] is True


async def test_patch_recomputes_limit_remaining_from_window_spend(
    emulator: Emulator, raw: httpx.AsyncClient
) -> None:
    # GIVEN a key that spent 25.5 this month (the spec's own example)
    created = await _create(raw, limit=50, limit_reset="monthly")
    emulator.charge(str(created["key"]), Decimal("25.5"))

    # WHEN its limit is raised to 75
    patched = await raw.patch(f"/keys/{created['data']['hash']}", json={"limit": 75})  # type: ignore[index]

    # THEN what is left is recomputed at once
    assert patched.json()["data"]["limit_remaining"] == 49.5
    assert patched.json()["data"]["usage"] == 25.5
