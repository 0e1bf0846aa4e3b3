"""How OpenRouter's answers to a key change read to our caller: a refusal of the request itself
(400, 402, 409, 422...) is a 502 openrouter_refused, which retrying cannot help; an outage, a
rate limit or our own credential failing (401, 403) is a 503 to retry later; a key OpenRouter
no longer has is the 409 that says so."""

from __future__ import annotations

import httpx
import pytest

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.openrouter.emulator import Emulator, Fault
from shared.runtime import Runtime

ALICE = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"


@pytest.mark.parametrize(
    ("openrouter_status", "answer"),
    [
        (400, (502, "openrouter_refused")),
        (402, (502, "openrouter_refused")),
        (409, (502, "openrouter_refused")),
        (422, (502, "openrouter_refused")),
        (401, (503, "openrouter_unavailable")),
        (403, (503, "openrouter_unavailable")),
        (429, (503, "openrouter_rate_limited")),
        (500, (503, "openrouter_unavailable")),
        (404, (409, "key_missing_at_openrouter")),
    ],
)
async def test_openrouter_answering_a_disable_reads_as_what_it_means(
    api: httpx.AsyncClient,
    runtime: Runtime,
    emulator: Emulator,
    openrouter_status: int,
    answer: tuple[int, str],
) -> None:
    """GIVEN a user's key
    WHEN it is disabled and OpenRouter answers the PATCH with openrouter_status
    THEN the caller gets the answer that status means (a 400 is a refusal: 502, not 503)."""
    issued = await AccessService(runtime).issue_token(
        issued_by="test",
        name="backend",
        scopes=[Scope.KEYS_WRITE, Scope.KEYS_READ],
        expires_at=None,
    )
    writer = {"Authorization": f"Bearer {issued.token}"}
    created = await api.post("/api/keys/create", headers=writer, json={"user_id": ALICE})
    assert created.status_code == 201, created.text
    key_id = created.json()["key"]["id"]
    emulator.inject(
        Fault("status", method="PATCH", path="/keys/", status=openrouter_status, times=None)
    )

    disabled = await api.post(f"/api/keys/{key_id}/disable", headers=writer)

    error = disabled.json()["error"]
    assert (disabled.status_code, error["code"]) == answer, disabled.text
    if answer[0] == 502:
        assert error["details"] == {"key_id": key_id, "openrouter_status": openrouter_status}
        assert "retry-after" not in disabled.headers
    # the key was not disabled here either: OpenRouter did not confirm it
    emulator.clear_faults()
    key = await api.get(f"/api/keys/{key_id}", headers=writer)
    if openrouter_status != 404:
        assert key.json()["disabled"] is False
