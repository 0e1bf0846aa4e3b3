"""Fixtures of the key lifecycle tests: the service on the test database and emulator, and a
checker of the invariants that every scenario must leave true."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from shared.crypto.envelope import secret_context
from shared.db.database import Database
from shared.keys.repository import KeyRecord
from shared.openrouter.emulator import Emulator
from shared.runtime import Runtime


@dataclass
class InvariantReport:
    current_keys_per_owner: dict[str, int]
    orphans_at_openrouter: list[str]  # keys at the emulator the database does not call live
    live_missing_at_openrouter: list[str]
    secrets_matching: bool


async def check_invariants(
    database: Database, emulator: Emulator, runtime: Runtime
) -> InvariantReport:
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select owner, count(*) filter (where state = 'current') as current from api_keys"
            " group by owner"
        )
        per_owner = {str(r["owner"]): cast(int, r["current"]) for r in await cursor.fetchall()}
        cursor = await conn.execute("select * from api_keys where state in ('current', 'previous')")
        live = await cursor.fetchall()
    live_keys = [KeyRecord.from_row(row) for row in live]
    at_emulator = {k.hash: k for k in emulator.user_keys()}
    live_hashes = {k.openrouter_hash for k in live_keys}
    secrets_ok = all(
        k.openrouter_hash in at_emulator
        and k.sealed is not None
        and runtime.sealer().open(k.sealed, secret_context(k.owner, k.id))
        == at_emulator[k.openrouter_hash].secret
        for k in live_keys
    )
    return InvariantReport(
        current_keys_per_owner=per_owner,
        orphans_at_openrouter=sorted(h for h in at_emulator if h not in live_hashes),
        live_missing_at_openrouter=sorted(
            str(k.id) for k in live_keys if k.openrouter_hash not in at_emulator
        ),
        secrets_matching=secrets_ok,
    )
