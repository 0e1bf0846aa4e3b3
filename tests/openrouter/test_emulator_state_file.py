"""The emulator's state file, shared by every emulator on one state directory (the local server
and the commands beside it): reads reload it and never rewrite it, writes are seen by the
others, and a section marked reading that changes the state is caught.

Every test here runs with _SharedState.check_reads on: each reading section compares the
emulator's snapshot at its start and end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from shared.openrouter.emulator import API_PREFIX, Emulator, EmulatorApiError, _SharedState

STATE_FILE = "openrouter-emulator.json"


@pytest.fixture(autouse=True)
def check_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_SharedState, "check_reads", True)


@pytest.fixture
def emulator(tmp_path: Path) -> Emulator:
    return Emulator(state_dir=tmp_path, generation_delay_s=0)


@pytest.fixture
async def management(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=emulator.transport(),
        base_url=f"http://emulator{API_PREFIX}",
        headers={"Authorization": f"Bearer {emulator.management_key}"},
    ) as client:
        yield client


def _stamp(folder: Path) -> tuple[int, int, int]:
    stat = (folder / STATE_FILE).stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _writes(emulator: Emulator) -> int:
    return emulator._lock.writes


async def _read_everything(
    emulator: Emulator, management: httpx.AsyncClient, secret: str, key_hash: str
) -> None:
    """One of each read the emulator answers, from Python and over HTTP, each checked."""
    user = {"Authorization": f"Bearer {secret}"}
    assert emulator.generation("gen-state-0") is not None
    assert len(emulator.generations(key_hash)) >= 1
    assert emulator.key_by_hash(key_hash) is not None
    emulator.guardrail_of(key_hash)
    assert [row["hash"] for row in emulator.state()] == [key_hash]
    reads = [
        await management.get("/generation", params={"id": "gen-state-0"}),
        await management.get("/generation", params={"id": "gen-state-0"}, headers=user),
        await management.get("/keys"),
        await management.get(f"/keys/{key_hash}"),
        await management.get("/key", headers=user),
        await management.get("/credits"),
        await management.get("/activity"),
        await management.get("/guardrails"),
        await management.get("/guardrails/assignments/keys"),
        await management.get("/guardrails/assignments/members"),
        await management.get("http://emulator/_emulator/state"),
    ]
    assert [r.status_code for r in reads] == [200] * len(reads), [r.text for r in reads]
    # refusals and misses are reads too
    assert (await management.get("/generation", params={"id": "gen-none"})).status_code == 404
    assert (await management.get("/keys/none")).status_code == 404


async def test_reads_do_not_rewrite_the_state_file(
    emulator: Emulator,
    management: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN an emulator on a state directory with a key that was charged, and every workspace
    default guardrail it lists already made
    WHEN it answers 100 reads (Python lookups, GET /generation, /keys, /key, /credits,
    /activity, /guardrails, ...)
    THEN the state file is the same file (inode, mtime_ns, size, text) and was written no more
    times: a read does not even serialise the state to compare it."""
    key = emulator.add_key(name="reader")
    for i in range(3):
        emulator.charge(key.secret, Decimal("0.01"), generation_id=f"gen-state-{i}")
    await management.get("/guardrails")  # a workspace's first look makes its default guardrail
    stamp, text, writes = _stamp(tmp_path), (tmp_path / STATE_FILE).read_text(), _writes(emulator)
    saves: list[object] = []
    save = _SharedState._save

    def counted(state: _SharedState, *, unless_unchanged: bool) -> None:
        saves.append(state)
        save(state, unless_unchanged=unless_unchanged)

    monkeypatch.setattr(_SharedState, "_save", counted)

    for _ in range(100 // 18 + 1):  # 18 reads a round
        await _read_everything(emulator, management, key.secret, key.hash)

    assert saves == []  # no serialisation, not even to compare
    assert _stamp(tmp_path) == stamp
    assert (tmp_path / STATE_FILE).read_text() == text
    assert _writes(emulator) == writes


async def test_a_write_is_seen_beside_and_a_read_there_does_not_clobber_it(
    tmp_path: Path,
) -> None:
    """GIVEN two emulators on one state directory (the local server and a command beside it)
    WHEN the first makes a key and charges it, and the second reads it many times, then
    charges it too, and the first charges again
    THEN each sees the other's writes at its next section; the second's reads wrote nothing,
    so the first's changes stay in the file; and an emulator started later sees them all."""
    server = Emulator(state_dir=tmp_path, generation_delay_s=0)
    command = Emulator(state_dir=tmp_path, generation_delay_s=0)
    key = server.add_key(name="shared", limit=Decimal(10), limit_reset="monthly")
    server.charge(key.secret, Decimal(1), generation_id="gen-server-1")
    written_by_server = _stamp(tmp_path)

    seen = command.key_by_hash(key.hash)
    for _ in range(50):
        assert command.generation("gen-server-1") is not None
        assert command.state()[0]["usage_monthly"] == "1"
    assert seen is not None and seen.name == "shared"
    assert _writes(command) == 0
    assert _stamp(tmp_path) == written_by_server

    command.charge(key.secret, Decimal(2), generation_id="gen-command-1")  # reloads, then writes
    server.charge(key.secret, Decimal(3), generation_id="gen-server-2")
    for emulator in (server, command, Emulator(state_dir=tmp_path, generation_delay_s=0)):
        assert emulator.state()[0]["usage_monthly"] == "6"
        assert [g.id for g in emulator.generations(key.hash)] == [
            "gen-server-1",
            "gen-command-1",
            "gen-server-2",
        ]
    assert _writes(command) == 1


async def test_a_refused_write_leaves_the_file_alone_and_a_write_rewrites_it_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    """GIVEN a key with $1 left
    WHEN a charge is refused (402: more than is left), then one is billed
    THEN the refusal changed nothing and wrote nothing; the billed charge wrote the file once."""
    key = emulator.add_key(name="limited", limit=Decimal(1))
    stamp, writes = _stamp(tmp_path), _writes(emulator)

    with pytest.raises(EmulatorApiError, match="only afford"):
        emulator.charge(key.secret, Decimal(2))
    assert (_stamp(tmp_path), _writes(emulator)) == (stamp, writes)

    emulator.charge(key.secret, Decimal("0.5"))
    assert _writes(emulator) == writes + 1
    assert _stamp(tmp_path) != stamp


@pytest.mark.parametrize("state_dir", [True, False], ids=["state_dir", "memory"])
def test_a_reading_section_that_changes_the_state_is_caught(
    tmp_path: Path, state_dir: bool
) -> None:
    """GIVEN an emulator (on a state directory or in memory) with check_reads on
    WHEN a section marked reading changes the state: a key's field, a new key through a
    writing section opened inside it
    THEN the first fails when the section ends (AssertionError), the second at once
    (RuntimeError), and the lock is left usable: a write afterwards is written."""
    emulator = Emulator(state_dir=tmp_path if state_dir else None)
    key = emulator.add_key(name="victim")

    with pytest.raises(AssertionError, match="reading section"), emulator._lock.reading():
        key.disabled = True
    with pytest.raises(AssertionError, match="reading section"), emulator._lock.reading():
        emulator.total_credits += 1
    with (
        pytest.raises(RuntimeError, match="writing section inside a reading one"),
        emulator._lock.reading(),
    ):
        emulator.add_key(name="never")

    # a reading section inside a writing one is the writing one's: no complaint
    with emulator._lock, emulator._lock.reading():
        key.disabled = False
    assert emulator._lock._depth == 0
    if state_dir:
        writes = _writes(emulator)
        emulator.add_key(name="after")
        assert _writes(emulator) == writes + 1
        assert "after" in (tmp_path / STATE_FILE).read_text()


async def test_every_reading_section_passes_the_check(
    emulator: Emulator, management: httpx.AsyncClient, tmp_path: Path
) -> None:
    """GIVEN an emulator on a state directory with a key charged, a guardrail assigned to it and
    check_reads on
    WHEN every read runs (those of the first test, a guardrail's own reads and assignment
    lists, a member (un)assignment, a charge and a chat completion over HTTP, whose last
    sections are reading ones)
    THEN none changed the state in a reading section: no check failed."""
    key = emulator.add_key(name="checked")
    emulator.charge(key.secret, Decimal("0.01"), generation_id="gen-state-0")
    created = await management.post("/guardrails", json={"name": "g"})
    guardrail = created.json()["data"]["id"]
    assert (
        await management.post(
            f"/guardrails/{guardrail}/assignments/keys", json={"key_hashes": [key.hash]}
        )
    ).status_code == 200
    user = {"Authorization": f"Bearer {key.secret}"}

    await _read_everything(emulator, management, key.secret, key.hash)
    answers = [
        await management.get(f"/guardrails/{guardrail}"),
        await management.get(f"/guardrails/{guardrail}/assignments/keys"),
        await management.get(f"/guardrails/{guardrail}/assignments/members"),
        await management.post(
            f"/guardrails/{guardrail}/assignments/members", json={"member_user_ids": ["u"]}
        ),
        await management.post(
            "http://emulator/_emulator/charge", json={"cost": 0.01}, headers=user
        ),
        await management.post(
            "/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers=user,
        ),
    ]
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]
    assert emulator.guardrail(guardrail) is not None
    assert emulator.guardrail_of(key.hash) is not None
