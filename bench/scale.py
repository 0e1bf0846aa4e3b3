"""The admin reports and the monthly job at 100,000 users and millions of usage events.

    .venv/bin/python -m bench.scale [--users 100000] [--events 2000000] [--requests 50]

Seeds the embedded PostgreSQL by SQL (generate_series): users across the tiers, a current key
each (1 % of them with a limit cut short last month, created for real at the emulator), last
month's and this month's books, and `--events` usage events. Then:

- GET /api/admin/keys (first page, and a page deep in the keyset) and GET /api/admin/usage,
  `--requests` each through the app in process: p50 and p95 (target p95 <= 100 ms), with the
  EXPLAIN of the key page's query;
- the monthly job: the database time of its opening statement (keys already at their budget
  roll over; the rest are enqueued; target <= 2 s) and the OpenRouter calls it then makes
  (only the keys whose limit really changes).

The seed is SQL rather than the sagas: these measure reads and bulk statements, not creates.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from pydantic import SecretStr

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.config import Environment, Settings
from shared.db.database import Database, PoolLimits
from shared.db.embedded import start_embedded_postgres
from shared.db.migrations import MigrationRunner, load_migrations
from shared.jobs.queue import QueueSettings
from shared.keys.domain import current_period
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import EMULATOR_BASE_URL, Runtime
from shared.usage.monthly import open_period
from shared.web.app_factory import create_app

SEED = """
insert into users (user_id, tier, updated_by)
select 'u' || g, (array['free', 'standard', 'micro', 'operator', 'enterprise'])[1 + g %% 5], 'seed'
from generate_series(1, %(users)s) g;

insert into api_keys (owner, user_id, state, openrouter_name, openrouter_hash, limit_usd,
                      limit_period, secret_ciphertext, secret_nonce, wrapped_data_key,
                      key_provider, created_at, activated_at)
select 'user:u' || g, 'u' || g, 'current', 'seed-' || g, 'seed-hash-' || g,
       (array[10, 50, 100, 250, 500])[1 + g %% 5], %(last_month)s, '\\x00', '\\x00', '\\x00',
       'seed', now() - make_interval(secs => g), now() - interval '40 days'
from generate_series(1, %(users)s) g;

insert into usage_totals (user_id, period, spent_usd, events)
select 'u' || g, p, (g %% 997) * 0.013, 20
from generate_series(1, %(users)s) g, unnest(array[%(last_month)s, %(this_month)s]::date[]) p;

insert into usage_breakdown (user_id, period, model, agent_name, cost_usd, events,
                             prompt_tokens, completion_tokens)
select 'u' || g, %(this_month)s,
       (array['openai/gpt-4o', 'anthropic/claude', 'google/gemini'])[1 + g %% 3],
       (array['compliance', 'formulation', 'marketing', ''])[1 + g %% 4], (g %% 997) * 0.013, 20,
       2000, 500
from generate_series(1, %(users)s) g;

insert into usage_events (user_id, generation_id, period, model, agent_name, prompt_tokens,
                          completion_tokens, cost_usd, occurred_at, recorded_by)
select 'u' || (1 + g %% %(users)s), 'gen-' || g,
       case when g %% 2 = 0 then %(this_month)s else %(last_month)s end,
       'openai/gpt-4o', 'compliance', 100, 25, 0.00065, now() - interval '1 day', 'seed'
from generate_series(1, %(events)s) g;
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(int(len(ordered) * 0.95) - 1, 0)]


async def timed_requests(
    api: httpx.AsyncClient, path: str, headers: dict[str, str], count: int
) -> tuple[float, float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = await api.get(path, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return percentiles(samples)


async def run(options: argparse.Namespace, data_dir: Path) -> None:
    server = start_embedded_postgres(data_dir / "pgdata")
    database = Database(server.dsn, PoolLimits(max_size=8, statement_timeout_ms=600_000))
    await MigrationRunner(database).migrate(load_migrations())
    this_month = current_period()
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    started = time.perf_counter()
    values = {
        "users": options.users,
        "events": options.events,
        "this_month": this_month,
        "last_month": last_month,
    }
    async with database.connection() as conn:
        for statement in filter(str.strip, SEED.split(";")):
            await conn.execute(statement.encode(), values)
        await conn.execute("vacuum analyze")
    seeded_s = time.perf_counter() - started

    emulator = Emulator()
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
    )
    # 1 % of the keys had their limit cut short last month: they exist at the emulator for real.
    cut = options.users // 100
    async with database.connection() as conn:
        for g in range(1, cut + 1):
            created = await client.create_key(name=f"cut-{g}", limit=None, limit_reset="monthly")
            await conn.execute(
                "update api_keys set openrouter_hash = %s, limit_usd = 1 where owner = %s",
                (created.key.hash, f"user:u{g * 100}"),
            )

    settings = Settings(
        app_env=Environment.TEST, local_data_dir=data_dir, database_url=SecretStr(server.dsn)
    )
    runtime = Runtime(settings, database=database, openrouter=client, emulator=emulator)
    admin = await AccessService(runtime).issue_token(
        issued_by="bench", name="bench", scopes=[Scope.ADMIN], expires_at=None
    )
    headers = {"Authorization": f"Bearer {admin.token}"}
    transport = httpx.ASGITransport(app=create_app("admin", runtime=runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as api:
        first = (await api.get("/api/admin/keys?limit=100", headers=headers)).json()
        await timed_requests(api, "/api/admin/keys", headers, 5)  # warm
        keys_first = await timed_requests(
            api, "/api/admin/keys?limit=100", headers, options.requests
        )
        deep_cursor = first["next_cursor"]
        for _ in range(50):  # 50 pages in: a cursor deep in the keyset
            page = (
                await api.get(f"/api/admin/keys?limit=100&cursor={deep_cursor}", headers=headers)
            ).json()
            deep_cursor = page["next_cursor"]
        keys_deep = await timed_requests(
            api, f"/api/admin/keys?limit=100&cursor={deep_cursor}", headers, options.requests
        )
        keys_tier = await timed_requests(
            api, "/api/admin/keys?limit=100&tier=operator&status=current", headers, options.requests
        )
        await timed_requests(api, "/api/admin/usage", headers, 3)  # warm
        usage = await timed_requests(api, "/api/admin/usage", headers, options.requests)

    async with database.connection() as conn:
        cursor = await conn.execute(
            "explain (analyze, buffers off, costs off, timing off, summary on)"
            " select k.*, u.tier from api_keys k left join users u on u.user_id = k.user_id"
            " where (null::text is null or k.state = null::text)"
            " order by k.created_at desc, k.id desc limit 100"
        )
        plan = [row["QUERY PLAN"] for row in await cursor.fetchall()]

    patches_before = sum(1 for method, _ in emulator.requests if method == "PATCH")
    opening_started = time.perf_counter()
    result = await open_period(runtime, QueueSettings(concurrency=16, time_budget_s=0))
    opening_s = time.perf_counter() - opening_started
    restore_started = time.perf_counter()
    while result.status != "done":
        result = await open_period(runtime, QueueSettings(concurrency=16, time_budget_s=50))
    restore_s = time.perf_counter() - restore_started
    patches = sum(1 for method, _ in emulator.requests if method == "PATCH") - patches_before

    await client.aclose()
    await database.close()
    server.destroy()

    print(f"{options.users:,} users, {options.events:,} usage events; seeded in {seeded_s:.1f} s")
    print(f"{'request':58}{'p50 ms':>9}{'p95 ms':>9}")
    for name, (p50, p95) in (
        ("GET /api/admin/keys?limit=100 (first page)", keys_first),
        ("GET /api/admin/keys?limit=100&cursor=... (page 51)", keys_deep),
        ("GET /api/admin/keys?limit=100&tier=operator&status=current", keys_tier),
        ("GET /api/admin/usage (this month, system-wide)", usage),
    ):
        print(f"{name:58}{p50:9.1f}{p95:9.1f}")
    print("EXPLAIN ANALYZE of the key page:")
    for line in plan:
        print("   ", line)
    print(
        f"monthly job: opening statement (roll over + enqueue) {opening_s:.2f} s;"
        f" then {patches} OpenRouter calls for the {cut} keys whose limit changes,"
        f" in {restore_s:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--requests", type=int, default=50)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(run(options, Path(scratch)))


if __name__ == "__main__":
    main()
