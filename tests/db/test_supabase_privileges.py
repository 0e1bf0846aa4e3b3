"""What Supabase's API roles may do with our objects, on a database prepared the way Supabase
prepares its own: its roles, its auth schema and functions (owned by Supabase, not by us), and
its default privileges (every new table, function and sequence in public granted to anon,
authenticated and service_role), all before our migrations run, which run as a role that is
not a superuser (Supabase's `postgres` is not).

The reviewed table below is the access policy. The test lists every privilege the three roles
(and PUBLIC, which every role inherits) hold on every table, view, sequence and function in
public, and compares: a new object, or a default grant left in place, fails it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from shared.db.database import Database
from shared.db.embedded import EmbeddedPostgres
from shared.db.migrations import MigrationRunner, load_migrations

OWNER = "supabase_project_owner"  # stands for Supabase's `postgres`: owns what it creates
API_ROLES = ("anon", "authenticated", "service_role", "PUBLIC")
ALL = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}
)  # PostgreSQL 17 adds MAINTAIN to "all"; it is filtered out below
SERVICE_ALL = {"service_role": ALL}
READ_OWN = {"service_role": ALL, "authenticated": frozenset({"SELECT"})}
EXECUTE = {"service_role": frozenset({"EXECUTE"})}

REVIEWED_TABLES: dict[str, dict[str, frozenset[str]]] = {
    "subscription_tiers": READ_OWN,
    "users": READ_OWN,  # a policy limits a user to their own row
    "service_tokens": SERVICE_ALL,
    "rate_limit_counters": SERVICE_ALL,
    "schema_migrations": {},  # read by store_probe, a security definer
    "api_keys": {"service_role": ALL},  # users: some columns, below
    "key_operations": SERVICE_ALL,
    "audit_log": {"service_role": frozenset({"SELECT", "INSERT"})},  # append-only
    "emergency_rotations": SERVICE_ALL,
    "emergency_rotation_items": SERVICE_ALL,
    "usage_events": READ_OWN,
    "usage_adjustments": READ_OWN,
    "usage_totals": READ_OWN,
    "usage_breakdown": READ_OWN,
    "usage_threshold_crossings": READ_OWN,
    "alert_outbox": SERVICE_ALL,
    "usage_drift": SERVICE_ALL,
    "work_jobs": SERVICE_ALL,
    "work_items": SERVICE_ALL,
    "work_job_progress": {"service_role": frozenset({"SELECT"})},
    "owner_leases": {"service_role": frozenset({"SELECT", "INSERT", "UPDATE"})},
    "openrouter_fleet": SERVICE_ALL,
    "openrouter_fleet_workers": SERVICE_ALL,
    "openrouter_key_usage": SERVICE_ALL,
    "usage_corrections": SERVICE_ALL,
    "key_guardrails": SERVICE_ALL,
    "budget_increases": SERVICE_ALL,
    "budget_increases_id_seq": {},
    # identity sequences: the tables' own privileges cover them
    "alert_outbox_id_seq": {},
    "usage_adjustments_id_seq": {},
    "usage_events_id_seq": {},
    "usage_corrections_id_seq": {},
}
# Signed-in users read their own keys' metadata, never the sealed secret or the hash's twins.
REVIEWED_COLUMNS = {
    ("api_keys", "authenticated"): frozenset(
        {
            "id",
            "owner",
            "user_id",
            "state",
            "openrouter_hash",
            "label",
            "limit_usd",
            "limit_period",
            "disabled",
            "created_at",
            "activated_at",
            "superseded_at",
            "grace_until",
            "revoked_at",
        }
    )
}
REVIEWED_FUNCTIONS: dict[str, dict[str, frozenset[str]]] = {
    # what the service calls (directly, or through Supabase's REST gateway as service_role)
    "authenticate_service_token(p_token_hash bytea)": EXECUTE,
    "consume_rate_limit(p_bucket text, p_limit integer, p_window_seconds integer)": EXECUTE,
    "prune_rate_limit_counters()": EXECUTE,
    "record_usage_events(p_events jsonb, p_recorded_by text)": EXECUTE,
    "reset_usage(p_user_id text, p_period date, p_reason text, p_actor text)": EXECUTE,
    "store_authenticate_service_token(jsonb)": EXECUTE,
    "store_consume_rate_limit(jsonb)": EXECUTE,
    "store_probe(jsonb)": EXECUTE,
    "store_record_usage_events(jsonb)": EXECUTE,
    "store_usage_history(jsonb)": EXECUTE,
    "store_usage_month(jsonb)": EXECUTE,
    "store_usage_period(p_user_id text, p_period date)": EXECUTE,
    "verify_audit_chain()": EXECUTE,
    "claim_work_items(p_job_id uuid, p_worker text, p_limit integer, p_lease_seconds integer)": (
        EXECUTE
    ),
    "complete_work_item(p_job_id uuid, p_item text, p_worker text, p_result jsonb)": EXECUTE,
    "work_jobs_due(p_limit integer)": EXECUTE,
    "cross_usage_thresholds(p_period date, p_user_id text, p_tier text)": EXECUTE,
    "sync_counted_usage(p_period date, p_keys jsonb, p_users text[])": EXECUTE,
    "user_budget_usd(p_user_id text, p_tier_budget numeric, p_period date)": EXECUTE,
    "store_budget_increases(p_user_id text, p_period date)": EXECUTE,
    "record_usage_verification(p_event_id bigint, p_found boolean, p_openrouter_cost numeric,"
    " p_generation_user text, p_now timestamp with time zone, p_retry_s numeric,"
    " p_give_up_s numeric, p_alert_usd numeric)": EXECUTE,
    "openrouter_fleet_share(p_worker text, p_max integer, p_lease_seconds integer,"
    " p_successes integer, p_throttled boolean, p_retry_after_s numeric, p_leave boolean)": (
        EXECUTE
    ),
    "fail_work_item(p_job_id uuid, p_item text, p_worker text, p_error text,"
    " p_retry_seconds numeric)": EXECUTE,
    # helpers: called by the functions above, as their caller
    "audit_row_payload(a audit_log)": EXECUTE,
    "usage_effective(t usage_totals)": EXECUTE,
    # trigger functions: run by the triggers, never called
    "audit_log_append_only()": {},
    "audit_log_chain()": {},
}

PREPARE_AS_SUPABASE = """
do $$
declare
    name text;
begin
    foreach name in array array['anon', 'authenticated', 'supabase_admin',
                                'supabase_auth_admin'] loop
        if not exists (select 1 from pg_roles where rolname = name) then
            execute format('create role %I nologin noinherit', name);
        end if;
    end loop;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticator') then
        create role authenticator login noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'supabase_project_owner') then
        create role supabase_project_owner login createrole;
    end if;
end
$$;
grant anon, authenticated, service_role to authenticator;
create schema auth authorization supabase_admin;
create function auth.uid() returns uuid language sql stable
    as $f$ select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $f$;
create function auth.role() returns text language sql stable
    as $f$ select nullif(current_setting('request.jwt.claim.role', true), '')::text $f$;
create function auth.jwt() returns jsonb language sql stable
    as $f$ select nullif(current_setting('request.jwt.claims', true), '')::jsonb $f$;
alter function auth.uid() owner to supabase_auth_admin;
alter function auth.role() owner to supabase_auth_admin;
alter function auth.jwt() owner to supabase_auth_admin;
grant usage on schema auth to anon, authenticated, service_role, supabase_project_owner;
grant usage on schema public to anon, authenticated, service_role;
grant create on schema public to supabase_project_owner;
alter default privileges for role supabase_project_owner in schema public
    grant all on tables to anon, authenticated, service_role;
alter default privileges for role supabase_project_owner in schema public
    grant all on functions to anon, authenticated, service_role;
alter default privileges for role supabase_project_owner in schema public
    grant all on sequences to anon, authenticated, service_role;
"""


@pytest.fixture
def supabase_like_dsn(embedded_postgres: EmbeddedPostgres) -> Iterator[tuple[str, str]]:
    """A fresh database prepared as Supabase prepares one: (superuser DSN, owner DSN)."""
    name = "sb_" + uuid.uuid4().hex[:12]
    with psycopg.connect(embedded_postgres.dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = embedded_postgres.dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PREPARE_AS_SUPABASE.encode())
        conn.execute(f'grant create on database "{name}" to {OWNER}'.encode())
    owner_dsn = psycopg.conninfo.make_conninfo(dsn, user=OWNER)
    yield dsn, owner_dsn
    with psycopg.connect(embedded_postgres.dsn, autocommit=True) as conn:
        conn.execute(f'drop database "{name}" with (force)')
        # Objects on other databases of the cluster keep the role; only its grants here go.


def _privileges(dsn: str) -> tuple[dict[str, dict[str, set[str]]], ...]:
    tables: dict[str, dict[str, set[str]]] = {}
    functions: dict[str, dict[str, set[str]]] = {}
    columns: dict[str, dict[str, set[str]]] = {}
    with psycopg.connect(dsn) as conn:
        for name, grantee, privilege in conn.execute(
            "select c.relname, case when a.grantee = 0 then 'PUBLIC'"
            " else a.grantee::regrole::text end, a.privilege_type"
            " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " cross join lateral aclexplode(coalesce(c.relacl, acldefault("
            "  (case when c.relkind = 'S' then 's' else 'r' end)::\"char\", c.relowner))) a"
            " where n.nspname = 'public' and c.relkind in ('r', 'v', 'S', 'm', 'p')"
        ).fetchall():
            entry = tables.setdefault(name, {})
            if grantee in API_ROLES and privilege != "MAINTAIN":
                entry.setdefault(grantee, set()).add(privilege)
        for name, grantee, privilege in conn.execute(
            "select p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',"
            " case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end,"
            " a.privilege_type from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " cross join lateral aclexplode("
            "  coalesce(p.proacl, acldefault('f'::\"char\", p.proowner))) a"
            " where n.nspname = 'public'"
        ).fetchall():
            entry = functions.setdefault(name, {})
            if grantee in API_ROLES:
                entry.setdefault(grantee, set()).add(privilege)
        for table, column, grantee, _ in conn.execute(
            "select c.relname, at.attname, a.grantee::regrole::text, a.privilege_type"
            " from pg_attribute at join pg_class c on c.oid = at.attrelid"
            " join pg_namespace n on n.oid = c.relnamespace"
            " cross join lateral aclexplode(at.attacl) a"
            " where n.nspname = 'public' and at.attacl is not null and a.grantee <> 0"
        ).fetchall():
            if grantee in API_ROLES:
                columns.setdefault(table, {}).setdefault(grantee, set()).add(column)
    return tables, functions, columns


async def test_supabase_roles_hold_exactly_the_reviewed_privileges(
    supabase_like_dsn: tuple[str, str],
) -> None:
    superuser_dsn, owner_dsn = supabase_like_dsn
    notices: list[str] = []
    database = Database(owner_dsn)
    async with database.connection() as conn:
        conn.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))
    try:
        await MigrationRunner(database).migrate(load_migrations())
    finally:
        await database.close()

    tables, functions, columns = _privileges(superuser_dsn)

    # nothing in our migrations is refused or ignored on Supabase's own schemas
    warnings = [n for n in notices if n.startswith("WARNING")]
    assert {t: {r: frozenset(p) for r, p in g.items()} for t, g in tables.items()} == (
        REVIEWED_TABLES
    )
    assert {f: {r: frozenset(p) for r, p in g.items()} for f, g in functions.items()} == (
        REVIEWED_FUNCTIONS
    )
    assert {
        (table, role): frozenset(cols) for table, g in columns.items() for role, cols in g.items()
    } == REVIEWED_COLUMNS
    assert warnings == []
