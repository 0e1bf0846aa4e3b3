"""Health checks. A failing check raises a 503 AppError naming the check and the reason."""

from __future__ import annotations

import time
from functools import lru_cache

from shared.db.migrations import MIGRATIONS_DIR, MigrationError, load_migrations
from shared.db.rpc import StoreRefused, StoreRpc
from shared.errors import ServiceUnavailable
from shared.health.repository import HealthRepository
from shared.health.schemas import CreditsSummary, DatabaseHealth, KeysHealth
from shared.openrouter.errors import OpenRouterError, OpenRouterUnauthorized
from shared.runtime import Runtime


class CheckFailed(ServiceUnavailable):
    def __init__(self, check: str, code: str, reason: str) -> None:
        super().__init__(
            f"{check} check failed: {reason}", code=code, details={"check": check, "reason": reason}
        )


@lru_cache(maxsize=1)
def expected_migration_version() -> str | None:
    """The newest migration this code ships, when the schema folder was deployed with it."""
    if not MIGRATIONS_DIR.is_dir():
        return None
    try:
        migrations = load_migrations(MIGRATIONS_DIR)
    except MigrationError:
        return None
    return migrations[-1].version if migrations else None


async def check_database(store: StoreRpc) -> DatabaseHealth:
    try:
        probe = await HealthRepository(store).probe()
    except StoreRefused as exc:
        # No store functions: a database that was never migrated, or migrated before 0007.
        raise CheckFailed(
            "database",
            "database_schema_outdated",
            f"the store functions are missing ({exc.sqlstate}); run `openrouter-agent migrate`",
        ) from exc
    except ServiceUnavailable as exc:
        reason = str((exc.details or {}).get("reason") or exc.message)
        raise CheckFailed("database", exc.code, reason) from exc
    expected = expected_migration_version()
    if expected is not None and (probe.migration_version or "") < expected:
        raise CheckFailed(
            "database",
            "database_schema_outdated",
            f"schema is at migration {probe.migration_version or 'none'}, this code needs "
            f"{expected}; run `openrouter-agent migrate`",
        )
    return DatabaseHealth(
        transport="supabase" if store.transport == "supabase" else "postgres",
        latency_ms=probe.latency_ms,
        server_version=probe.server_version,
        migration_version=probe.migration_version,
        expected_migration_version=expected,
    )


def store_of(runtime: Runtime) -> StoreRpc:
    """The runtime's store, or a failed check when it cannot even be configured."""
    try:
        return runtime.store()
    except ServiceUnavailable as exc:
        raise CheckFailed("database", exc.code, exc.message) from exc


async def check_openrouter_keys(runtime: Runtime) -> KeysHealth:
    client = runtime.openrouter()
    started = time.perf_counter()
    try:
        current = await client.get_current_key()
    except OpenRouterUnauthorized as exc:
        raise CheckFailed("keys", "openrouter_key_invalid", exc.message) from exc
    except OpenRouterError as exc:
        raise CheckFailed("keys", "openrouter_unavailable", exc.message) from exc
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    if not current.is_management_key:
        raise CheckFailed(
            "keys",
            "openrouter_key_not_management",
            "the configured key is not a management key; create one under "
            "Settings > Management keys",
        )
    credits: CreditsSummary | None = None
    credits_error: str | None = None
    try:
        balance = await client.get_credits()
        credits = CreditsSummary(
            total_credits=balance.total_credits,
            total_usage=balance.total_usage,
            balance=balance.balance,
        )
    except OpenRouterError as exc:
        credits_error = exc.message  # credits are informative; the key itself is healthy
    return KeysHealth(
        provider=runtime.openrouter_provider,
        is_management_key=True,
        latency_ms=latency_ms,
        credits=credits,
        credits_error=credits_error,
    )
