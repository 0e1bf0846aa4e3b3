"""One checker of ARCHITECTURE.md's invariants, used by every fault test: what must hold after
any fault, once the service's own jobs have run."""

from __future__ import annotations

from shared.audit.repository import AuditRepository
from shared.db.database import Database
from shared.openrouter.emulator import Emulator


async def violations(database: Database, emulator: Emulator, *, key_prefix: str) -> list[str]:
    """Every invariant that does not hold, described; empty when all do."""
    found: list[str] = []
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select owner, count(*) as n from api_keys where state = 'current'"
            " group by owner having count(*) > 1"
        )
        found += [f"{row['owner']} has {row['n']} current keys" for row in await cursor.fetchall()]

        cursor = await conn.execute(
            "select openrouter_name, openrouter_hash from api_keys"
            " where state in ('current', 'previous')"
        )
        live = {
            str(row["openrouter_hash"]): str(row["openrouter_name"])
            for row in await cursor.fetchall()
        }
        cursor = await conn.execute("select openrouter_name from api_keys")
        known_names = {str(row["openrouter_name"]) for row in await cursor.fetchall()}

        cursor = await conn.execute(
            "select t.user_id, t.period, t.spent_usd, t.events,"
            " coalesce(e.spent, 0) as ledger_spent, coalesce(e.n, 0) as ledger_events"
            " from usage_totals t left join (select user_id, period, sum(cost_usd) as spent,"
            " count(*) as n from usage_events group by user_id, period) e"
            " on e.user_id = t.user_id and e.period = t.period"
            " where t.spent_usd <> coalesce(e.spent, 0) or t.events <> coalesce(e.n, 0)"
        )
        found += [
            f"{row['user_id']} {row['period']}: book {row['spent_usd']} over {row['events']}"
            f" events, ledger {row['ledger_spent']} over {row['ledger_events']}"
            for row in await cursor.fetchall()
        ]

        chain = await AuditRepository(conn).verify()
        if chain.broken_seq is not None:
            found.append(f"audit chain broken at {chain.broken_seq}: {chain.problem}")

        cursor = await conn.execute(
            "select count(*) as n from key_operations"
            " where status in ('started', 'planned', 'key_created', 'activated')"
        )
        open_operations = (await cursor.fetchone() or {}).get("n", 0)
        if open_operations:
            found.append(f"{open_operations} key operations still open")

    at_openrouter = {
        key.hash: key.name for key in emulator.user_keys() if key.name.startswith(f"{key_prefix}-")
    }
    for key_hash, name in live.items():
        if key_hash not in at_openrouter:
            found.append(f"live key {name} is missing at OpenRouter")
    for key_hash, name in at_openrouter.items():
        if key_hash not in live:
            state = "unknown to the database" if name not in known_names else "not live"
            found.append(f"key {name} at OpenRouter is {state}")
    return found
