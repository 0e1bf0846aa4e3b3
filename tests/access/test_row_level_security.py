"""The schema's policies, queried the way PostgREST queries them: as the role named by the JWT,
with the claims in request.jwt.claims, on the real SQL of schema/ (issue: Supabase clients
holding a user's JWT read only that user's rows and write nothing)."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

USER_A = str(uuid.uuid4())
USER_B = str(uuid.uuid4())


@pytest.fixture
async def seeded_dsn(database_dsn: str) -> str:
    async with await psycopg.AsyncConnection.connect(database_dsn, autocommit=True) as conn:
        await conn.execute(
            "insert into users (user_id, tier, updated_by) values"
            " (%s, 'standard', 'test'), (%s, 'enterprise', 'test')",
            (USER_A, USER_B),
        )
        await conn.execute(
            "insert into service_tokens (name, token_hash, token_hint, scopes, created_by)"
            " values ('svc', decode(repeat('ab', 32), 'hex'), 'ora_st_ab...cd', '{admin}', 't')"
        )
    return database_dsn


async def _as(dsn: str, role: str, sql: str, *, sub: str | None = None) -> list[tuple[object, ...]]:
    """Run sql as PostgREST would for a request with this role (and user)."""
    claims = {"role": role, **({"sub": sub} if sub else {})}
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        await conn.execute(f"set local role {role}")
        await conn.execute(
            "select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),)
        )
        cursor = await conn.execute(sql.encode())
        return await cursor.fetchall() if cursor.description else []


async def test_each_user_reads_only_their_own_user_row(seeded_dsn: str) -> None:
    sql = "select user_id, tier from users"
    assert await _as(seeded_dsn, "authenticated", sql, sub=USER_A) == [(USER_A, "standard")]
    assert await _as(seeded_dsn, "authenticated", sql, sub=USER_B) == [(USER_B, "enterprise")]
    assert await _as(seeded_dsn, "authenticated", sql, sub=str(uuid.uuid4())) == []


async def test_auth_uid_reads_the_claims_like_supabase(seeded_dsn: str) -> None:
    assert await _as(seeded_dsn, "authenticated", "select auth.uid()::text", sub=USER_A) == [
        (USER_A,)
    ]
    assert await _as(seeded_dsn, "anon", "select auth.uid()") == [(None,)]


@pytest.mark.parametrize(
    "sql",
    [
        "insert into users (user_id, tier, updated_by) values ('someone', 'admin', 'me')",
        "update users set tier = 'admin'",
        "delete from users",
        "update subscription_tiers set monthly_budget_usd = null",
        "select * from service_tokens",
        "select * from rate_limit_counters",
        "select * from schema_migrations",
        "select consume_rate_limit('x', 1, 60)",
        "select * from authenticate_service_token(decode(repeat('ab', 32), 'hex'))",
    ],
)
async def test_users_write_nothing_and_never_see_credentials(seeded_dsn: str, sql: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await _as(seeded_dsn, "authenticated", sql, sub=USER_A)


@pytest.mark.parametrize(
    "sql",
    [
        "select * from users",
        "select * from subscription_tiers",
        "select * from service_tokens",
    ],
)
async def test_anonymous_callers_read_nothing(seeded_dsn: str, sql: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await _as(seeded_dsn, "anon", sql)


async def test_users_may_read_the_tier_table(seeded_dsn: str) -> None:
    rows = await _as(
        seeded_dsn, "authenticated", "select count(*) from subscription_tiers", sub=USER_A
    )
    assert rows == [(8,)]


async def test_the_service_role_reads_and_writes_everything(seeded_dsn: str) -> None:
    subscriptions = await _as(seeded_dsn, "service_role", "select count(*) from users")
    tokens = await _as(seeded_dsn, "service_role", "select count(*) from service_tokens")
    updated = await _as(
        seeded_dsn,
        "service_role",
        "update users set tier = 'beta', updated_by = 'svc' returning tier",
    )
    assert updated == [("beta",), ("beta",)]
    assert subscriptions == [(2,)]
    assert tokens == [(1,)]
