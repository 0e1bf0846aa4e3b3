"""The emulator bills as OpenRouter does: a request is admitted against the key's limit as it
stands (in-flight requests included) and billed when it completes, whatever happened to the
key meanwhile; deleted keys keep their books; latency lands after the request was handled."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from shared.openrouter.emulator import API_PREFIX, Emulator, EmulatorApiError

BASE = "http://emulator.test"


def _client(emulator: Emulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator), base_url=BASE)


def _usage(emulator: Emulator, key_hash: str) -> Decimal:
    [row] = [k for k in emulator.state() if k["hash"] == key_hash]
    return Decimal(row["usage_monthly"])


async def test_a_request_admitted_before_a_limit_is_lowered_is_billed_after_it() -> None:
    # GIVEN a key with $10 left and a $4 request in flight
    emulator = Emulator()
    key = emulator.add_key(name="k", limit=Decimal(10), limit_reset="monthly")
    in_flight = asyncio.create_task(emulator.spend(key.secret, Decimal(4), duration_s=0.05))
    await asyncio.sleep(0.01)

    # WHEN the limit is lowered to $1 and the key disabled, before the request completes
    key.limit, key.disabled = Decimal(1), True
    await in_flight

    # THEN the request is billed in full: $4 on a key whose limit is now $1
    assert _usage(emulator, key.hash) == Decimal(4)
    with pytest.raises(EmulatorApiError):
        emulator.charge(key.secret, Decimal("0.01"))


async def test_requests_in_flight_count_against_what_is_left() -> None:
    emulator = Emulator()
    key = emulator.add_key(name="k", limit=Decimal(5), limit_reset="monthly")
    first = asyncio.create_task(emulator.spend(key.secret, Decimal(4), duration_s=0.05))
    await asyncio.sleep(0.01)
    # $1 is left while $4 is in flight: a $2 request cannot be admitted
    with pytest.raises(EmulatorApiError) as refused:
        await emulator.spend(key.secret, Decimal(2))
    assert refused.value.status == 402
    await first
    assert _usage(emulator, key.hash) == Decimal(4)


async def test_a_deleted_key_is_still_billed_and_keeps_its_books() -> None:
    emulator = Emulator()
    key = emulator.add_key(name="ora-gone", limit=Decimal(10), limit_reset="monthly")
    emulator.charge(key.secret, Decimal(1))
    in_flight = asyncio.create_task(emulator.spend(key.secret, Decimal(2), duration_s=0.05))
    await asyncio.sleep(0.01)
    async with _client(emulator) as client:
        deleted = await client.delete(
            f"{API_PREFIX}/keys/{key.hash}",
            headers={"Authorization": f"Bearer {emulator.management_key}"},
        )
        assert deleted.status_code == 200
        await in_flight
        state = (await client.get("/_emulator/state")).json()["data"]
    [row] = [k for k in state if k["hash"] == key.hash]
    assert row["deleted"] is True and Decimal(row["usage_monthly"]) == Decimal(3)
    assert emulator.user_keys() == []  # gone from the API


async def test_charges_over_http_take_their_duration_and_bill_at_the_end() -> None:
    emulator = Emulator()
    key = emulator.add_key(name="k", limit=Decimal(10), limit_reset="monthly")
    async with _client(emulator) as client:
        charge = asyncio.create_task(
            client.post(
                "/_emulator/charge",
                json={"cost": "1.5", "duration_s": 0.05},
                headers={"Authorization": f"Bearer {key.secret}"},
            )
        )
        await asyncio.sleep(0.01)
        assert _usage(emulator, key.hash) == 0  # admitted, not billed yet
        assert (await charge).status_code == 200
    assert _usage(emulator, key.hash) == Decimal("1.5")


async def test_a_fractional_latency_fault_sent_over_http_delays_without_failing() -> None:
    emulator = Emulator()
    async with _client(emulator) as client:
        injected = await client.post(
            "/_emulator/faults",
            json={"kind": "latency", "method": "GET", "path": "/credits", "delay_s": 0.05},
        )
        assert injected.status_code == 204
        started = asyncio.get_running_loop().time()
        answered = await client.get(
            f"{API_PREFIX}/credits",
            headers={"Authorization": f"Bearer {emulator.management_key}"},
        )
    assert answered.status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.05


async def test_latency_lands_after_the_request_was_handled() -> None:
    # GIVEN OpenRouter that answers a create only after a while
    emulator = Emulator(latency_s=0.1)
    async with _client(emulator) as client:
        creating = asyncio.create_task(
            client.post(
                f"{API_PREFIX}/keys",
                json={"name": "ora-slow"},
                headers={"Authorization": f"Bearer {emulator.management_key}"},
            )
        )
        # THEN the key exists before its answer arrives: a caller that dies now lost it
        while not emulator.user_keys():
            assert not creating.done()
            await asyncio.sleep(0.005)
        assert not creating.done()
        assert (await creating).status_code == 201


# ----- one emulator for a whole local installation ----------------------------------------------


def test_emulators_on_one_state_directory_are_one_emulator(tmp_path: Path) -> None:
    # GIVEN the local server's emulator, and a command's beside it, on the same folder
    server = Emulator(state_dir=tmp_path)
    command = Emulator(state_dir=tmp_path)
    assert command.management_key == server.management_key

    # WHEN one makes a key and the other spends on it
    key = server.add_key(name="ora-shared", limit=Decimal(10), limit_reset="monthly")
    command.charge(key.secret, Decimal(3))

    # THEN both see it, and so does an emulator started later (after a restart)
    restarted = Emulator(state_dir=tmp_path)
    for emulator in (server, command, restarted):
        assert _usage(emulator, key.hash) == Decimal(3)
    assert restarted.management_key == server.management_key
    with pytest.raises(EmulatorApiError):
        restarted.charge(key.secret, Decimal(8))  # its limit is remembered too
    # and no key's secret is written down, only its digest; the management key sits in a
    # file of its own that only its owner may read
    state = (tmp_path / "openrouter-emulator.json").read_text()
    assert key.secret not in state and server.management_key not in state
    assert (tmp_path / "openrouter-emulator.key").stat().st_mode & 0o777 == 0o600
