-- openrouter-agent: the whole schema in one file, for Supabase's SQL editor.
-- Generated from schema/migrations by `openrouter-agent migrate --bundle`; do not edit.
-- Paste it into a fresh project. To upgrade later, run `openrouter-agent migrate`
-- against the project's Postgres DSN: it skips the versions recorded below.

begin;

create table if not exists schema_migrations (
    version text primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);
alter table schema_migrations enable row level security;

-- ===== migration 0001_subscription_tiers.sql =====

-- Subscription tiers and their monthly USD budgets. A NULL budget means unlimited.
-- Budgets are numeric (exact), never float and never rounded to cents.

create table if not exists subscription_tiers (
    tier text primary key check (tier ~ '^[a-z0-9_]{1,32}$'),
    monthly_budget_usd numeric check (monthly_budget_usd is null or monthly_budget_usd >= 0),
    description text not null default '',
    updated_at timestamptz not null default now()
);

comment on table subscription_tiers is
    'Monthly USD budget per subscription tier; NULL monthly_budget_usd = unlimited.';

insert into subscription_tiers (tier, monthly_budget_usd, description) values
    ('free', 10, 'Basic usage'),
    ('standard', 50, 'Standard features'),
    ('micro', 100, 'Micro business'),
    ('operator', 250, 'Operations support'),
    ('enterprise', 500, 'Enterprise features'),
    ('beta', 1000, 'Beta testing'),
    ('admin', null, 'Admin access'),
    ('future4200', null, 'Future4200 integration')
on conflict (tier) do nothing;

-- Supabase exposes the public schema through its API; every table is closed until a policy
-- opens it (the access-control migration adds the policies).
alter table subscription_tiers enable row level security;

insert into schema_migrations (version, name, checksum) values ('0001', 'subscription_tiers', 'eaed319615c4c9672099a442bc1f4d7be2b23853f59be5cb22c878268d47bfa3')
on conflict (version) do nothing;

-- ===== migration 0002_access_control.sql =====

-- Access control: Supabase's roles and auth helpers where they are missing (plain Postgres,
-- the embedded server), user subscriptions, service tokens, and rate-limit counters.
--
-- amends: 7261e2a91d2e4f7c5aa2e652db36f8cdc8680a5eb0925e7de5ea607f42aa0e51
-- (the schema grants below now run only on schemas we own; where this migration ran before,
-- they had run already, so nothing is to be done there.)

-- ---------------------------------------------------------------------------------------------
-- Supabase compatibility. On Supabase these roles and functions exist and nothing here runs;
-- elsewhere they are created with Supabase's semantics, so the same policies work everywhere:
-- PostgREST switches to the role named by the JWT and exposes the claims as request.jwt.claims.
-- ---------------------------------------------------------------------------------------------
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
end
$$;

create schema if not exists auth;
-- Only on schemas we own: on Supabase, auth is Supabase's own (and its API roles already use
-- it), and a grant there only earns "WARNING: no privileges were granted".
do $$
begin
    if (select nspowner from pg_namespace where nspname = 'auth')
           = (select oid from pg_roles where rolname = current_user) then
        grant usage on schema auth to anon, authenticated, service_role;
    end if;
    if (select nspowner from pg_namespace where nspname = 'public')
           = (select oid from pg_roles where rolname = current_user) then
        grant usage on schema public to anon, authenticated, service_role;
    end if;
end
$$;

do $$
begin
    if to_regprocedure('auth.jwt()') is null then
        create function auth.jwt() returns jsonb
        language sql stable
        as 'select coalesce(nullif(current_setting(''request.jwt.claim'', true), ''''),
                            nullif(current_setting(''request.jwt.claims'', true), ''''))::jsonb';
    end if;
    if to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid
        language sql stable
        as 'select coalesce(nullif(current_setting(''request.jwt.claim.sub'', true), ''''),
                            (nullif(current_setting(''request.jwt.claims'', true), '''')::jsonb
                             ->> ''sub''))::uuid';
    end if;
    if to_regprocedure('auth.role()') is null then
        create function auth.role() returns text
        language sql stable
        as 'select coalesce(nullif(current_setting(''request.jwt.claim.role'', true), ''''),
                            (nullif(current_setting(''request.jwt.claims'', true), '''')::jsonb
                             ->> ''role''))::text';
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Users of the platform and their subscription tier. The id is the platform's own: a Supabase
-- Auth user id (a UUID) or an opaque string such as a username.
-- ---------------------------------------------------------------------------------------------
create table users (
    user_id text primary key check (length(user_id) between 1 and 255),
    tier text not null default 'free' references subscription_tiers (tier),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    updated_by text not null
);

comment on table users is 'Platform users and their subscription tier.';

-- ---------------------------------------------------------------------------------------------
-- Service tokens: only an HMAC-SHA256 of the token is stored; the token is shown once.
-- ---------------------------------------------------------------------------------------------
create table service_tokens (
    id uuid primary key default gen_random_uuid(),
    name text not null check (length(name) between 1 and 100),
    token_hash bytea not null unique check (length(token_hash) = 32),
    token_hint text not null,
    scopes text[] not null check (
        cardinality(scopes) > 0
        and scopes <@ array['keys:read', 'keys:write', 'keys:reveal', 'usage:write',
                            'usage:read', 'admin']::text[]
    ),
    created_at timestamptz not null default now(),
    created_by text not null,
    expires_at timestamptz,
    revoked_at timestamptz,
    revoked_by text,
    last_used_at timestamptz,
    check ((revoked_at is null) = (revoked_by is null))
);

comment on table service_tokens is
    'Credentials of back-end services; token_hash = HMAC-SHA256(token, key derived from the master key).';

-- The one statement that authenticates a token: the token's row if it is valid (not revoked,
-- not expired), else nothing. last_used_at is written at most once a minute per token, so that a
-- busy service does not turn every request into a write on the same row.
create function authenticate_service_token(p_token_hash bytea)
returns setof service_tokens
language sql
as $$
    with valid as (
        select *
          from service_tokens
         where token_hash = p_token_hash
           and revoked_at is null
           and (expires_at is null or expires_at > now())
    ),
    touched as (
        update service_tokens t
           set last_used_at = now()
          from valid
         where t.id = valid.id
           and (valid.last_used_at is null or valid.last_used_at < now() - interval '1 minute')
        returning t.*
    )
    select * from touched
    union all
    select * from valid where not exists (select 1 from touched);
$$;

-- ---------------------------------------------------------------------------------------------
-- Rate limits, enforced here so that they hold across every function instance: fixed windows,
-- one row per (bucket, window), counted by one atomic upsert.
-- ---------------------------------------------------------------------------------------------
create table rate_limit_counters (
    bucket text not null,
    window_start timestamptz not null,
    window_seconds integer not null check (window_seconds > 0),
    hits integer not null,
    primary key (bucket, window_start)
);

create function consume_rate_limit(p_bucket text, p_limit integer, p_window_seconds integer)
returns table (allowed boolean, hits integer, retry_after_seconds integer)
language sql
as $$
    with window_bounds as (
        select to_timestamp(floor(extract(epoch from now()) / p_window_seconds)
                            * p_window_seconds) as started
    ),
    counted as (
        insert into rate_limit_counters as c (bucket, window_start, window_seconds, hits)
        select p_bucket, started, p_window_seconds, 1 from window_bounds
        on conflict (bucket, window_start) do update set hits = c.hits + 1
        returning c.hits, c.window_start
    )
    select hits <= p_limit,
           hits,
           greatest(1, ceil(extract(epoch from
               window_start + make_interval(secs => p_window_seconds) - now()))::integer)
      from counted;
$$;

create function prune_rate_limit_counters()
returns integer
language sql
as $$
    with pruned as (
        delete from rate_limit_counters
         where window_start + make_interval(secs => window_seconds) < now()
        returning 1
    )
    select count(*)::integer from pruned;
$$;

-- ---------------------------------------------------------------------------------------------
-- Row-level security and grants. Supabase grants every role everything on new tables by
-- default; we take it all back and give each role only what the access rules allow. The
-- service itself connects as the table owner (or service_role) and enforces its own rules.
-- ---------------------------------------------------------------------------------------------
alter table users enable row level security;
alter table service_tokens enable row level security;
alter table rate_limit_counters enable row level security;

revoke all on subscription_tiers, users, service_tokens, rate_limit_counters,
    schema_migrations from anon, authenticated;
revoke all on function authenticate_service_token(bytea), consume_rate_limit(text, integer, integer),
    prune_rate_limit_counters() from public, anon, authenticated;
grant all on subscription_tiers, users, service_tokens, rate_limit_counters
    to service_role;
grant execute on function authenticate_service_token(bytea), consume_rate_limit(text, integer, integer),
    prune_rate_limit_counters() to service_role;

-- Signed-in users may read the tier table and their own user row; they write nothing.
grant select on subscription_tiers to authenticated;
create policy subscription_tiers_readable_by_users on subscription_tiers
    for select to authenticated using (true);

grant select on users to authenticated;
create policy users_own_row on users
    for select to authenticated using (user_id = auth.uid()::text);

insert into schema_migrations (version, name, checksum) values ('0002', 'access_control', '2ed6f354293cde2472764e82b9b9beda2128b1cdca722328e1227f0a7843ae5f')
on conflict (version) do nothing;

-- ===== migration 0003_key_lifecycle.sql =====

-- Key lifecycle: keys, the operations (sagas) that create and rotate them, and the audit trail.

-- ---------------------------------------------------------------------------------------------
-- Keys. The OpenRouter hash is an id and is stored in clear; the secret only as an envelope
-- (AES-256-GCM under a fresh data key, the data key wrapped by the key provider), with the
-- owner and key id as associated data. States: pending -> current -> previous -> revoked,
-- or pending -> failed when no key was ever made.
-- ---------------------------------------------------------------------------------------------
create table api_keys (
    id uuid primary key default gen_random_uuid(),
    -- 'user:<user id>' or 'system:<name>': one column for the one-current-key rule.
    owner text not null check (owner ~ '^(user|system):.+$'),
    user_id text references users (user_id),
    state text not null check (state in ('pending', 'current', 'previous', 'revoked', 'failed')),
    openrouter_name text not null unique,
    openrouter_hash text unique,
    label text,
    limit_usd numeric check (limit_usd is null or limit_usd >= 0),
    -- The UTC month the limit was computed for, and what the owner had already spent in it
    -- before this key existed: budget continuity across rotations without a ledger.
    limit_period date not null,
    spent_before_usd numeric not null default 0 check (spent_before_usd >= 0),
    -- The key's spend in limit_period when it was revoked (read from OpenRouter first).
    final_usage_usd numeric,
    secret_ciphertext bytea,
    secret_nonce bytea,
    wrapped_data_key bytea,
    key_provider text,
    fingerprint text,
    disabled boolean not null default false,
    created_at timestamptz not null default now(),
    activated_at timestamptz,
    superseded_at timestamptz,
    grace_until timestamptz,
    revoked_at timestamptz,
    check ((owner like 'user:%') = (user_id is not null)),
    check (owner not like 'user:%' or owner = 'user:' || user_id),
    -- a key that was ever handed out has its hash and its sealed secret
    check (state in ('pending', 'failed') or (openrouter_hash is not null
        and secret_ciphertext is not null and wrapped_data_key is not null))
);

-- The invariant: at most one current key per owner, whatever runs concurrently or crashes.
create unique index api_keys_one_current_per_owner on api_keys (owner) where state = 'current';
create index api_keys_owner on api_keys (owner, created_at desc);

comment on table api_keys is 'OpenRouter keys managed by this service; secrets envelope-encrypted.';

-- ---------------------------------------------------------------------------------------------
-- Operations: each create or rotation is a persisted state machine that any invocation can
-- resume. A lease (lease_until) lets exactly one invocation advance it at a time; a crashed
-- invocation's lease simply expires.
--   started -> planned -> key_created -> activated -> completed   (or -> failed)
-- ---------------------------------------------------------------------------------------------
create table key_operations (
    id uuid primary key default gen_random_uuid(),
    kind text not null check (kind in ('create', 'rotate')),
    owner text not null,
    status text not null check (status in ('started', 'planned', 'key_created', 'activated',
                                           'completed', 'failed')),
    old_key_id uuid references api_keys (id),
    new_key_id uuid references api_keys (id),
    grace_seconds integer not null default 0 check (grace_seconds >= 0),
    -- the plan, fixed once so that a resumed operation uses the same numbers
    budget_usd numeric,
    spent_at_plan_usd numeric,
    old_usage_at_plan_usd numeric,
    grace_allowance_usd numeric,
    requested_by text not null,
    idempotency_key text,
    reason text,
    request_id text,
    error_code text,
    error_message text,
    attempts integer not null default 0,
    lease_until timestamptz,
    -- Set before POST /keys is sent: a resumed operation then looks for the key by name
    -- before creating again, since the first POST may have succeeded.
    create_sent_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    completed_at timestamptz
);

-- One open operation per owner: concurrent rotations of one user cannot interleave.
create unique index key_operations_one_open_per_owner on key_operations (owner)
    where status not in ('completed', 'failed');
-- A retried request with the same Idempotency-Key finds the first one's operation.
create unique index key_operations_idempotency on key_operations (requested_by, idempotency_key)
    where idempotency_key is not null;
create index key_operations_open on key_operations (updated_at)
    where status not in ('completed', 'failed');

-- ---------------------------------------------------------------------------------------------
-- Audit trail: append-only and hash-chained. Each row's hash covers the previous row's hash
-- and its own content, computed here so that every writer chains the same way.
-- ---------------------------------------------------------------------------------------------
create table audit_log (
    seq bigint generated always as identity primary key,
    occurred_at timestamptz not null default clock_timestamp(),
    actor text not null,
    action text not null,
    target text,
    outcome text not null default 'ok',
    reason text,
    request_id text,
    fingerprint text,
    details jsonb not null default '{}'::jsonb,
    prev_hash bytea not null,
    row_hash bytea not null
);

create function audit_row_payload(a audit_log) returns text
language sql immutable
as $$
    select concat_ws(
        '|', a.seq::text, to_char(a.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
        a.actor, a.action, coalesce(a.target, ''), a.outcome, coalesce(a.reason, ''),
        coalesce(a.request_id, ''), coalesce(a.fingerprint, ''), a.details::text
    );
$$;

create function audit_log_chain() returns trigger
language plpgsql
as $$
declare
    previous bytea;
begin
    -- Serialise writers so that each row links to the one before it.
    perform pg_advisory_xact_lock(7461203951);
    select row_hash into previous from audit_log order by seq desc limit 1;
    new.prev_hash := coalesce(previous, '\x'::bytea);
    new.row_hash := sha256(new.prev_hash || convert_to(audit_row_payload(new), 'UTF8'));
    return new;
end;
$$;

create trigger audit_log_chain before insert on audit_log
    for each row execute function audit_log_chain();

create function audit_log_append_only() returns trigger
language plpgsql
as $$
begin
    raise exception 'audit_log is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end;
$$;

create trigger audit_log_append_only before update or delete on audit_log
    for each row execute function audit_log_append_only();
create trigger audit_log_no_truncate before truncate on audit_log
    for each statement execute function audit_log_append_only();

-- The first row whose link is broken (edited, or following a deleted row), or nothing.
create function verify_audit_chain()
returns table (broken_seq bigint, problem text, rows_checked bigint)
language sql stable
as $$
    with ordered as (
        select a.seq, a.prev_hash, a.row_hash,
               lag(a.row_hash) over (order by a.seq) as previous_row_hash,
               sha256(a.prev_hash || convert_to(audit_row_payload(a), 'UTF8')) as recomputed
          from audit_log a
    ),
    broken as (
        select seq,
               case when row_hash <> recomputed then 'row content does not match its hash'
                    else 'previous row is missing or was changed' end as problem
          from ordered
         where row_hash <> recomputed
            or prev_hash <> coalesce(previous_row_hash, '\x'::bytea)
         order by seq
         limit 1
    )
    select b.seq, b.problem, (select count(*) from audit_log)
      from (select 1) one left join broken b on true;
$$;

-- ---------------------------------------------------------------------------------------------
-- Access: RLS on, nothing for anon; signed-in users read their own keys' metadata (never the
-- sealed secret: column grants exclude it); the service role has everything but may still
-- only append to the audit log (the triggers apply to every role).
-- ---------------------------------------------------------------------------------------------
alter table api_keys enable row level security;
alter table key_operations enable row level security;
alter table audit_log enable row level security;

revoke all on api_keys, key_operations, audit_log from anon, authenticated;
grant all on api_keys, key_operations to service_role;
grant select, insert on audit_log to service_role;
grant execute on function verify_audit_chain() to service_role;
revoke all on function verify_audit_chain() from public, anon, authenticated;

grant select (id, owner, user_id, state, openrouter_hash, label, limit_usd, limit_period,
              disabled, created_at, activated_at, superseded_at, grace_until, revoked_at)
    on api_keys to authenticated;
create policy api_keys_own_metadata on api_keys
    for select to authenticated using (user_id = auth.uid()::text);

insert into schema_migrations (version, name, checksum) values ('0003', 'key_lifecycle', 'e14758162d169718f49bb13bccb42dd1d2d2beeee3a0275d5414f491e7cb188a')
on conflict (version) do nothing;

-- ===== migration 0004_emergency_rotation.sql =====

-- Emergency rotation: revoke-first replacement of many keys at once, as a resumable job.
-- Each key is an item: pending -> disabled (blocked at OpenRouter, read back, timed)
-- -> replaced (a new key issued by the ordinary rotation), or failed after retries.

create table emergency_rotations (
    id uuid primary key default gen_random_uuid(),
    requested_by text not null,
    reason text not null check (length(reason) between 3 and 500),
    scope jsonb not null,
    status text not null check (status in ('running', 'completed')),
    total integer not null check (total >= 0),
    request_id text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    completed_at timestamptz
);

create table emergency_rotation_items (
    rotation_id uuid not null references emergency_rotations (id),
    key_id uuid not null references api_keys (id),
    owner text not null,
    status text not null check (status in ('pending', 'disabled', 'replaced', 'failed')),
    revoke_ms numeric,
    replacement_key_id uuid references api_keys (id),
    error text,
    attempts integer not null default 0,
    lease_until timestamptz,
    updated_at timestamptz not null default now(),
    primary key (rotation_id, key_id)
);

create index emergency_rotation_items_open on emergency_rotation_items (rotation_id)
    where status in ('pending', 'disabled');

alter table emergency_rotations enable row level security;
alter table emergency_rotation_items enable row level security;
revoke all on emergency_rotations, emergency_rotation_items from anon, authenticated;
grant all on emergency_rotations, emergency_rotation_items to service_role;

insert into schema_migrations (version, name, checksum) values ('0004', 'emergency_rotation', '8034da8b73f69f93a1bd271165ab6cf1004c755133b76197146c9577fc72b67e')
on conflict (version) do nothing;

-- ===== migration 0005_rotation_policy.sql =====

-- Scheduled rotation policy per user. System keys are always rotated monthly.
--   monthly:   the schedule rotates the user's key once each UTC month
--   on_demand: rotated only when asked (or in an emergency)
--   never:     the same for the schedule; kept apart so that intent is recorded

alter table users add column rotation_policy text not null default 'on_demand'
    check (rotation_policy in ('never', 'monthly', 'on_demand'));

insert into schema_migrations (version, name, checksum) values ('0005', 'rotation_policy', '27c01c292e75160fda29b040b661e6d0ab168b0261c9e733f6c00e182334ead8')
on conflict (version) do nothing;

-- ===== migration 0006_usage_ledger.sql =====

-- The usage ledger: exact books per user and UTC month. Events are append-only; a reset is an
-- adjustment entry; totals and breakdowns change in the same statement as the event that
-- moves them, so concurrent writers never lose an update.

create table usage_events (
    id bigint generated always as identity primary key,
    user_id text not null references users (user_id),
    -- OpenRouter's generation id: the idempotency key of an event
    generation_id text not null unique check (length(generation_id) between 1 and 200),
    period date not null,
    model text not null,
    agent_name text,
    endpoint text,
    prompt_tokens integer not null check (prompt_tokens >= 0),
    completion_tokens integer not null check (completion_tokens >= 0),
    cost_usd numeric not null check (cost_usd >= 0 and cost_usd <= 100000),
    duration_ms integer check (duration_ms is null or duration_ms >= 0),
    occurred_at timestamptz not null,
    recorded_at timestamptz not null default now(),
    recorded_by text not null
);

create index usage_events_user_period on usage_events (user_id, period);

-- Resets and corrections. Never deleted; a reset is a negative amount.
create table usage_adjustments (
    id bigint generated always as identity primary key,
    user_id text not null references users (user_id),
    period date not null,
    amount_usd numeric not null,
    reason text not null check (length(reason) between 3 and 500),
    actor text not null,
    created_at timestamptz not null default now()
);

create index usage_adjustments_user_period on usage_adjustments (user_id, period);

-- The book: one row per user and month.
create table usage_totals (
    user_id text not null references users (user_id),
    period date not null,
    spent_usd numeric not null default 0,
    adjusted_usd numeric not null default 0,
    events bigint not null default 0,
    updated_at timestamptz not null default now(),
    primary key (user_id, period)
);

create index usage_totals_period on usage_totals (period, user_id);

-- Breakdowns by model and agent, kept with the book for reports that stay fast at scale.
create table usage_breakdown (
    user_id text not null references users (user_id),
    period date not null,
    model text not null,
    agent_name text not null default '',
    cost_usd numeric not null default 0,
    events bigint not null default 0,
    prompt_tokens bigint not null default 0,
    completion_tokens bigint not null default 0,
    primary key (user_id, period, model, agent_name)
);

create index usage_breakdown_period on usage_breakdown (period);

-- Each threshold is crossed at most once per user and month: the constraint is the guarantee.
create table usage_threshold_crossings (
    user_id text not null references users (user_id),
    period date not null,
    threshold integer not null check (threshold in (50, 80, 100)),
    crossed_at timestamptz not null default now(),
    spent_usd numeric not null,
    budget_usd numeric not null,
    primary key (user_id, period, threshold)
);

-- Alerts wait here until the delivery job has handed them to the webhook.
create table alert_outbox (
    id bigint generated always as identity primary key,
    kind text not null,
    payload jsonb not null,
    created_at timestamptz not null default now(),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    delivered_at timestamptz,
    last_error text
);

create index alert_outbox_due on alert_outbox (next_attempt_at) where delivered_at is null;

-- The monthly job's runs: one row per period, so that it applies once however often it is
-- invoked; the lease lets exactly one invocation work, and the checkpoint says how far it got.
create table usage_period_runs (
    period date primary key,
    status text not null check (status in ('running', 'done')),
    checkpoint_owner text,
    keys_restored integer not null default 0,
    lease_until timestamptz,
    started_at timestamptz not null default now(),
    completed_at timestamptz
);

-- Drift between OpenRouter's counters and the ledger, per user and month, as last measured by
-- the drift job; only drift beyond the tolerance is kept.
create table usage_drift (
    user_id text not null references users (user_id),
    period date not null,
    openrouter_usd numeric not null,
    ledger_usd numeric not null,
    drift_usd numeric not null,
    measured_at timestamptz not null default now(),
    primary key (user_id, period)
);

-- The effective spend of a total row: events less resets.
create function usage_effective(t usage_totals) returns numeric
language sql immutable
as $$ select greatest(t.spent_usd + t.adjusted_usd, 0) $$;

-- A reset: an adjustment that brings this month's effective spend back to zero. Nothing is
-- deleted; the adjustment is in the ledger's history. Returns the amount applied (0 when
-- there was nothing to reset).
create function reset_usage(p_user_id text, p_period date, p_reason text, p_actor text)
returns numeric
language plpgsql
as $$
declare
    v_total usage_totals;
    v_amount numeric;
begin
    insert into usage_totals (user_id, period) values (p_user_id, p_period)
        on conflict do nothing;
    select * into v_total from usage_totals
     where user_id = p_user_id and period = p_period for update;
    v_amount := -usage_effective(v_total);
    if v_amount = 0 then
        return 0;
    end if;
    insert into usage_adjustments (user_id, period, amount_usd, reason, actor)
    values (p_user_id, p_period, v_amount, p_reason, p_actor);
    update usage_totals set adjusted_usd = adjusted_usd + v_amount, updated_at = now()
     where user_id = p_user_id and period = p_period;
    return v_amount;
end;
$$;

-- Records a batch of events (one or a thousand) in set-based statements: each event row, the
-- books, the breakdowns and any threshold crossing (with its alert) change together. A
-- generation id seen before, in an earlier call or earlier in this batch, changes nothing.
-- Events of unknown users are reported, not stored.
--
-- Concurrency: the users' book rows are locked first, in (user, period) order, so concurrent
-- batches wait for each other instead of deadlocking, and totals are exact.
create function record_usage_events(p_events jsonb, p_recorded_by text)
returns table (idx integer, status text, user_id text, period date,
               spent_usd numeric, budget_usd numeric, crossed integer[])
language plpgsql
as $$
#variable_conflict use_column
begin
    insert into usage_totals (user_id, period)
    select distinct e.value ->> 'user_id',
           date_trunc('month', (e.value ->> 'occurred_at')::timestamptz at time zone 'UTC')::date
      from jsonb_array_elements(p_events) e
      join users u on u.user_id = e.value ->> 'user_id'
     order by 1, 2
    on conflict do nothing;

    perform 1
       from usage_totals t
       join (select distinct e.value ->> 'user_id' as user_id,
                    date_trunc('month', (e.value ->> 'occurred_at')::timestamptz
                               at time zone 'UTC')::date as period
               from jsonb_array_elements(p_events) e) k
         on k.user_id = t.user_id and k.period = t.period
      order by t.user_id, t.period
        for update of t;

    return query
    with input as (
        select (e.ordinality - 1)::integer as idx,
               e.value ->> 'user_id' as user_id,
               e.value ->> 'generation_id' as generation_id,
               date_trunc('month', (e.value ->> 'occurred_at')::timestamptz
                          at time zone 'UTC')::date as period,
               e.value,
               exists (select 1 from users u where u.user_id = e.value ->> 'user_id') as known,
               row_number() over (partition by e.value ->> 'generation_id'
                                  order by e.ordinality) as nth
          from jsonb_array_elements(p_events) with ordinality e
    ),
    inserted as (
        insert into usage_events (user_id, generation_id, period, model, agent_name, endpoint,
                                  prompt_tokens, completion_tokens, cost_usd, duration_ms,
                                  occurred_at, recorded_by)
        select i.user_id, i.generation_id, i.period, i.value ->> 'model',
               i.value ->> 'agent_name', i.value ->> 'endpoint',
               coalesce((i.value ->> 'prompt_tokens')::integer, 0),
               coalesce((i.value ->> 'completion_tokens')::integer, 0),
               (i.value ->> 'cost_usd')::numeric, (i.value ->> 'duration_ms')::integer,
               (i.value ->> 'occurred_at')::timestamptz, p_recorded_by
          from input i
         where i.known and i.nth = 1
         order by i.idx
        on conflict (generation_id) do nothing
        returning usage_events.generation_id, usage_events.user_id, usage_events.period,
                  usage_events.model, usage_events.agent_name, usage_events.cost_usd,
                  usage_events.prompt_tokens, usage_events.completion_tokens
    ),
    totals as (
        update usage_totals t
           set spent_usd = t.spent_usd + a.cost, events = t.events + a.n, updated_at = now()
          from (select user_id, period, sum(cost_usd) as cost, count(*) as n
                  from inserted group by 1, 2) a
         where t.user_id = a.user_id and t.period = a.period
        returning t.user_id, t.period, greatest(t.spent_usd + t.adjusted_usd, 0) as effective
    ),
    -- PostgreSQL runs every data-modifying CTE to completion, read or not.
    breakdown as (
        insert into usage_breakdown as b (user_id, period, model, agent_name, cost_usd, events,
                                          prompt_tokens, completion_tokens)
        select user_id, period, model, coalesce(agent_name, ''), sum(cost_usd), count(*),
               sum(prompt_tokens), sum(completion_tokens)
          from inserted group by 1, 2, 3, 4
        on conflict (user_id, period, model, agent_name) do update
            set cost_usd = b.cost_usd + excluded.cost_usd, events = b.events + excluded.events,
                prompt_tokens = b.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = b.completion_tokens + excluded.completion_tokens
        returning 1
    ),
    budgets as (
        select t.user_id, t.period, t.effective, s.monthly_budget_usd as budget
          from totals t
          join users u on u.user_id = t.user_id
          join subscription_tiers s on s.tier = u.tier
    ),
    crossings as (
        insert into usage_threshold_crossings (user_id, period, threshold, spent_usd, budget_usd)
        select b.user_id, b.period, th, b.effective, b.budget
          from budgets b cross join unnest(array[50, 80, 100]) th
         where b.budget > 0 and b.effective * 100 >= b.budget * th
        on conflict do nothing
        returning usage_threshold_crossings.user_id, usage_threshold_crossings.period,
                  usage_threshold_crossings.threshold, usage_threshold_crossings.spent_usd,
                  usage_threshold_crossings.budget_usd
    ),
    alerts as (
        insert into alert_outbox (kind, payload)
        select 'usage.threshold_crossed',
               jsonb_build_object('user_id', c.user_id, 'period', c.period,
                                  'threshold', c.threshold, 'spent_usd', c.spent_usd::text,
                                  'budget_usd', c.budget_usd::text)
          from crossings c
        returning 1
    ),
    after as (
        select k.user_id, k.period,
               coalesce(t.effective, greatest(u.spent_usd + u.adjusted_usd, 0)) as effective,
               s.monthly_budget_usd as budget,
               coalesce((select array_agg(c.threshold order by c.threshold) from crossings c
                          where c.user_id = k.user_id and c.period = k.period),
                        '{}') as crossed
          from (select distinct user_id, period from input where known) k
          left join totals t on t.user_id = k.user_id and t.period = k.period
          left join usage_totals u on u.user_id = k.user_id and u.period = k.period
          join users us on us.user_id = k.user_id
          join subscription_tiers s on s.tier = us.tier
    )
    select i.idx,
           case when not i.known then 'unknown_user'
                when i.nth = 1 and exists (select 1 from inserted x
                                           where x.generation_id = i.generation_id)
                    then 'stored'
                else 'duplicate' end,
           i.user_id, i.period, a.effective, a.budget,
           case when i.nth = 1 and exists (select 1 from inserted x
                                           where x.generation_id = i.generation_id)
                then a.crossed else '{}'::integer[] end
      from input i
      left join after a on a.user_id = i.user_id and a.period = i.period
     order by i.idx;
end;
$$;

alter table usage_events enable row level security;
alter table usage_adjustments enable row level security;
alter table usage_totals enable row level security;
alter table usage_breakdown enable row level security;
alter table usage_threshold_crossings enable row level security;
alter table alert_outbox enable row level security;
alter table usage_period_runs enable row level security;
alter table usage_drift enable row level security;

revoke all on usage_events, usage_adjustments, usage_totals, usage_breakdown,
    usage_threshold_crossings, alert_outbox, usage_period_runs, usage_drift from anon,
    authenticated;
grant all on usage_events, usage_adjustments, usage_totals, usage_breakdown,
    usage_threshold_crossings, alert_outbox, usage_period_runs, usage_drift to service_role;
revoke all on function record_usage_events(jsonb, text) from public, anon, authenticated;
revoke all on function reset_usage(text, date, text, text) from public, anon, authenticated;
grant execute on function reset_usage(text, date, text, text) to service_role;
grant execute on function record_usage_events(jsonb, text) to service_role;

-- Signed-in users read their own books.
grant select on usage_totals, usage_breakdown, usage_events, usage_adjustments,
    usage_threshold_crossings to authenticated;
create policy usage_totals_own on usage_totals for select to authenticated
    using (user_id = auth.uid()::text);
create policy usage_breakdown_own on usage_breakdown for select to authenticated
    using (user_id = auth.uid()::text);
create policy usage_events_own on usage_events for select to authenticated
    using (user_id = auth.uid()::text);
create policy usage_adjustments_own on usage_adjustments for select to authenticated
    using (user_id = auth.uid()::text);
create policy usage_threshold_crossings_own on usage_threshold_crossings for select
    to authenticated using (user_id = auth.uid()::text);

insert into schema_migrations (version, name, checksum) values ('0006', 'usage_ledger', 'b032618f77dd3f2408a00dcd9cacde13236572ae3a66512ffd89b7b3c715d815')
on conflict (version) do nothing;

-- ===== migration 0007_store_functions.sql =====

-- The store contract: the operations of the request hot path (usage logging and reading,
-- service-token authentication, rate limits, the health probe) as SQL functions that take one
-- JSON object and return JSON. Both transports call exactly these: the direct one as
-- `select store_x($1::jsonb)`, the Supabase one as POST /rest/v1/rpc/store_x (PostgREST hands a
-- function with a single unnamed jsonb parameter the request body as it is). One call is one
-- transaction and one round trip either way, and money travels as JSON numbers, which keep every
-- digit of a numeric.

create function store_record_usage_events(jsonb) returns jsonb
language sql
as $$
    select coalesce(jsonb_agg(to_jsonb(r) order by r.idx), '[]'::jsonb)
    from record_usage_events($1 -> 'events', $1 ->> 'recorded_by') r
$$;

-- One user's book of one period: totals, breakdown by model and agent, thresholds crossed.
create function store_usage_period(p_user_id text, p_period date) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'period', p_period,
        'spent_usd', coalesce(tot.spent_usd, 0),
        'adjusted_usd', coalesce(tot.adjusted_usd, 0),
        'events', coalesce(tot.events, 0),
        'breakdown', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'model', b.model, 'agent_name', b.agent_name, 'cost_usd', b.cost_usd,
                       'events', b.events, 'prompt_tokens', b.prompt_tokens,
                       'completion_tokens', b.completion_tokens)
                   order by b.cost_usd desc, b.model, b.agent_name)
            from usage_breakdown b where b.user_id = p_user_id and b.period = p_period
        ), '[]'::jsonb),
        'crossed', coalesce((
            select jsonb_agg(c.threshold order by c.threshold)
            from usage_threshold_crossings c where c.user_id = p_user_id and c.period = p_period
        ), '[]'::jsonb)
    )
    from (select 1) one
    left join usage_totals tot on tot.user_id = p_user_id and tot.period = p_period
$$;

-- One period's book of one user: null for an unknown user.
create function store_usage_month(jsonb) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'tier', u.tier,
        'budget_usd', t.monthly_budget_usd,
        'months', jsonb_build_array(store_usage_period(u.user_id, ($1 ->> 'period')::date))
    )
    from users u join subscription_tiers t on t.tier = u.tier
    where u.user_id = $1 ->> 'user_id'
$$;

-- Up to `limit` periods with a book, newest first, strictly before `before` when given.
create function store_usage_history(jsonb) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'tier', u.tier,
        'budget_usd', t.monthly_budget_usd,
        'months', coalesce((
            select jsonb_agg(store_usage_period(u.user_id, p.period) order by p.period desc)
            from (
                select period from usage_totals
                where user_id = u.user_id
                  and (($1 ->> 'before') is null or period < ($1 ->> 'before')::date)
                order by period desc
                limit ($1 ->> 'limit')::integer
            ) p
        ), '[]'::jsonb)
    )
    from users u join subscription_tiers t on t.tier = u.tier
    where u.user_id = $1 ->> 'user_id'
$$;

-- The token's row (without its hash) if it is valid, else null; `token_hash` is hex.
create function store_authenticate_service_token(jsonb) returns jsonb
language sql
as $$
    select to_jsonb(s) - 'token_hash'
    from authenticate_service_token(decode($1 ->> 'token_hash', 'hex')) s
$$;

create function store_consume_rate_limit(jsonb) returns jsonb
language sql
as $$
    select to_jsonb(r)
    from consume_rate_limit(
        $1 ->> 'bucket', ($1 ->> 'limit')::integer, ($1 ->> 'window_seconds')::integer) r
$$;

-- Definer: the migrations table belongs to whoever migrates, not to the service role.
create function store_probe(jsonb) returns jsonb
language plpgsql stable security definer
set search_path = public, pg_temp
as $$
declare
    v_version text;
begin
    if to_regclass('public.schema_migrations') is not null then
        execute 'select max(version) from schema_migrations' into v_version;
    end if;
    return jsonb_build_object(
        'server_version', current_setting('server_version'),
        'migration_version', v_version);
end
$$;

revoke all on function store_record_usage_events(jsonb), store_usage_month(jsonb),
    store_usage_history(jsonb), store_usage_period(text, date),
    store_authenticate_service_token(jsonb), store_consume_rate_limit(jsonb), store_probe(jsonb)
    from public, anon, authenticated;
grant execute on function store_record_usage_events(jsonb), store_usage_month(jsonb),
    store_usage_history(jsonb), store_usage_period(text, date),
    store_authenticate_service_token(jsonb), store_consume_rate_limit(jsonb), store_probe(jsonb)
    to service_role;

insert into schema_migrations (version, name, checksum) values ('0007', 'store_functions', '7593ebbc3650a916b016c8c97597be9e2ba0e870d79bbedd0eb88491576e0b32')
on conflict (version) do nothing;

-- ===== migration 0008_work_queue.sql =====

-- A work queue for bulk operations that outlive one function invocation (a rotation of every
-- key, say): a job is a named, once-only batch of items; invocations claim items with
-- FOR UPDATE SKIP LOCKED under a lease, work until their time budget is spent, and leave the
-- rest to the next invocation. The database guarantees what must not race:
--   - one job per (kind, name), so a month's scheduled rotation is created once however many
--     cron ticks ask for it;
--   - one item per (job, item), so a key is enqueued once;
--   - an item is held by one worker at a time (the lease), and completed only by the worker
--     holding it, once;
--   - an item that fails goes back with a growing delay, and is parked with its error after
--     max_attempts, so it never blocks the rest.
-- A worker that dies loses nothing: its leases run out and its items are claimed again.

create table work_jobs (
    id uuid primary key default gen_random_uuid(),
    kind text not null check (kind ~ '^[a-z_]{1,40}$'),
    name text not null check (length(name) between 1 and 200),
    status text not null default 'running' check (status in ('running', 'done', 'cancelled')),
    params jsonb not null default '{}'::jsonb,
    max_attempts integer not null default 5 check (max_attempts between 1 and 100),
    created_by text not null,
    created_at timestamptz not null default now(),
    finished_at timestamptz,
    unique (kind, name)
);

create table work_items (
    job_id uuid not null references work_jobs (id) on delete cascade,
    item text not null check (length(item) between 1 and 200),
    status text not null default 'pending' check (status in ('pending', 'done', 'parked')),
    attempts integer not null default 0,
    available_at timestamptz not null default now(),
    leased_by text,
    lease_until timestamptz,
    last_error text,
    finished_at timestamptz,
    primary key (job_id, item)
);

-- What claim_work_items scans: the pending items of a job, soonest available first.
create index work_items_claimable on work_items (job_id, available_at) where status = 'pending';

-- Up to p_limit items of the job that are due and not leased (or whose lease ran out), leased
-- to p_worker for p_lease_seconds. Concurrent callers skip each other's rows.
create function claim_work_items(
    p_job_id uuid, p_worker text, p_limit integer, p_lease_seconds integer
) returns setof work_items
language sql
as $$
    with claimable as (
        select job_id, item from work_items
        where job_id = p_job_id and status = 'pending' and available_at <= now()
          and (lease_until is null or lease_until < now())
        order by available_at, item
        limit p_limit
        for update skip locked
    )
    update work_items w
    set leased_by = p_worker,
        lease_until = now() + make_interval(secs => p_lease_seconds),
        attempts = w.attempts + 1
    from claimable c
    where w.job_id = c.job_id and w.item = c.item
    returning w.*
$$;

-- Done, by the worker holding the lease; false if it no longer holds it (the lease ran out and
-- another worker took the item), so that the item is completed once.
create function complete_work_item(p_job_id uuid, p_item text, p_worker text) returns boolean
language sql
as $$
    with done as (
        update work_items
        set status = 'done', finished_at = now(), lease_until = null, last_error = null
        where job_id = p_job_id and item = p_item and status = 'pending'
          and leased_by = p_worker and lease_until >= now()
        returning 1
    )
    select exists (select 1 from done)
$$;

-- Failed: back to the queue after p_retry_seconds, or parked once max_attempts is reached.
-- Returns the item's new status ('pending' or 'parked'), or null if the worker lost the lease.
create function fail_work_item(
    p_job_id uuid, p_item text, p_worker text, p_error text, p_retry_seconds numeric
) returns text
language sql
as $$
    update work_items w
    set status = case when w.attempts >= j.max_attempts then 'parked' else 'pending' end,
        available_at = now() + make_interval(secs => p_retry_seconds),
        lease_until = null,
        last_error = left(p_error, 500),
        finished_at = case when w.attempts >= j.max_attempts then now() end
    from work_jobs j
    where j.id = w.job_id and w.job_id = p_job_id and w.item = p_item
      and w.status = 'pending' and w.leased_by = p_worker and w.lease_until >= now()
    returning w.status
$$;

-- A job's progress in one row: what the status route and the CLI show.
create view work_job_progress as
select j.id, j.kind, j.name, j.status, j.created_at, j.finished_at, j.created_by,
       count(i.item) as total,
       count(i.item) filter (where i.status = 'done') as done,
       count(i.item) filter (where i.status = 'parked') as parked,
       count(i.item) filter (where i.status = 'pending' and i.attempts > 0
                             and (i.lease_until is null or i.lease_until < now())) as retrying,
       count(i.item) filter (where i.status = 'pending' and i.lease_until >= now()) as in_flight,
       min(i.finished_at) filter (where i.status = 'done') as first_done_at,
       max(i.finished_at) filter (where i.status = 'done') as last_done_at
from work_jobs j left join work_items i on i.job_id = j.id
group by j.id;

alter table work_jobs enable row level security;
alter table work_items enable row level security;
revoke all on work_jobs, work_items, work_job_progress from anon, authenticated;
grant all on work_jobs, work_items to service_role;
grant select on work_job_progress to service_role;
revoke all on function claim_work_items(uuid, text, integer, integer),
    complete_work_item(uuid, text, text), fail_work_item(uuid, text, text, text, numeric)
    from public, anon, authenticated;
grant execute on function claim_work_items(uuid, text, integer, integer),
    complete_work_item(uuid, text, text), fail_work_item(uuid, text, text, text, numeric)
    to service_role;

insert into schema_migrations (version, name, checksum) values ('0008', 'work_queue', 'bfcff0be8c3981bc53e946c6f4a4ef9c1acb65972af75527c5e9de83d9d32f55')
on conflict (version) do nothing;

-- ===== migration 0009_monthly_job_and_indexes_for_scale.sql =====

-- The monthly job runs on the work queue now (a job named by its period, see 0008); its own
-- run table, with one lease for the whole month's work, is no longer written or read.
drop table usage_period_runs;

-- The monthly job's bulk statement finds current keys not yet in the new period.
create index api_keys_current_by_period on api_keys (limit_period) where state = 'current';

-- GET /api/admin/keys pages newest first by keyset (created_at, id): an index walk, not a sort
-- of every key, at 100,000 users.
create index api_keys_newest_first on api_keys (created_at desc, id desc);

insert into schema_migrations (version, name, checksum) values ('0009', 'monthly_job_and_indexes_for_scale', '755889fa29788f53023ed2c90794ea6d13c670c44b81bd4847b54b83dc5c115c')
on conflict (version) do nothing;

-- ===== migration 0010_usage_report_indexes.sql =====

-- The system-wide month report at 100,000 users: its top users and the users over 80 and 100
-- percent of their budget are read from this index (the month's books by effective spend,
-- highest first) instead of sorting every user's book.
create index usage_totals_by_effective_spend
    on usage_totals (period, (greatest(spent_usd + adjusted_usd, 0)) desc, user_id);

insert into schema_migrations (version, name, checksum) values ('0010', 'usage_report_indexes', 'e256bc9b1da4304c8b39b64fcab56e180e0e518e64b58fb1a4cf06fe9ff3734c')
on conflict (version) do nothing;

-- ===== migration 0011_audit_chain_order.sql =====

-- The audit chain under concurrent writers. A row's seq came from its identity default, taken
-- before the trigger's lock: two transactions could take seq 10 and 11, the one with 11 chain
-- first (to row 9) and the one with 10 then chain to row 11, and verify_audit_chain, walking
-- by seq, reported a broken chain that nobody had touched (the fault campaign found it). The
-- seq is now taken after the lock, so seq order is chain order (the identity default still
-- draws a value first, so seq values skip: the chain never relied on them being contiguous).
create or replace function audit_log_chain() returns trigger
language plpgsql
as $$
declare
    previous bytea;
begin
    -- Serialise writers so that each row links to the one before it.
    perform pg_advisory_xact_lock(7461203951);
    new.seq := nextval(pg_get_serial_sequence('audit_log', 'seq'));
    select row_hash into previous from audit_log order by seq desc limit 1;
    new.prev_hash := coalesce(previous, '\x'::bytea);
    new.row_hash := sha256(new.prev_hash || convert_to(audit_row_payload(new), 'UTF8'));
    return new;
end;
$$;

insert into schema_migrations (version, name, checksum) values ('0011', 'audit_chain_order', 'e571abbc66e96b89d718dcf29829f0fe02dbd15b5cd97d5ff8c336923eb96b14')
on conflict (version) do nothing;

-- ===== migration 0012_budget_continuity_in_motion.sql =====

-- Budgets that hold while keys spend: what each key may still be billed for, what it was seen
-- spending, when it is settled, and one lease per owner under which every change of that
-- owner's keys at OpenRouter happens.
--
-- OpenRouter bills a request when it completes. A key whose limit was lowered (or that was
-- disabled) may still be billed, for a while, for requests admitted under the old limit: that
-- old limit is the key's ceiling until ceiling_until. Budget handed to another key never
-- includes what a key may still be billed for. Protocol (shared/keys/limits.py): a lowering is
-- sent to OpenRouter first and recorded after, with the old limit as ceiling; a raise is
-- recorded first and sent after (openrouter_sync_pending until then). So the database's limit
-- is never below OpenRouter's, and what the database counts as committed is never too little.

alter table api_keys
    add column ceiling_usd numeric,
    add column ceiling_until timestamptz,
    add column openrouter_sync_pending boolean not null default false,
    add column observed_usage_usd numeric,
    add column observed_period date,
    add column observed_at timestamptz,
    add column final_usage_period date,
    add column final_usage_source text
        check (final_usage_source in ('openrouter', 'observed', 'ledger', 'none')),
    add column disabled_at timestamptz,
    -- Deleted at OpenRouter: only after its settlement, when its final usage was read.
    add column deleted_at timestamptz;

comment on column api_keys.ceiling_usd is
    'The highest limit the key may still be billed against (Infinity: it had none), until '
    'ceiling_until: requests admitted before a lowering are billed when they complete.';
comment on column api_keys.final_usage_source is
    'Where final_usage_usd comes from: OpenRouter read after settlement; for a key gone at '
    'OpenRouter, its last observed usage or the ledger, whichever is more; none if neither.';

-- Keys revoked before this migration were deleted at OpenRouter at once, their final usage
-- read just before, in the month they were revoked.
update api_keys
   set final_usage_period = (date_trunc('month', revoked_at at time zone 'UTC'))::date,
       final_usage_source = 'openrouter'
 where final_usage_usd is not null;
update api_keys set deleted_at = coalesce(revoked_at, created_at) where state = 'revoked';

-- What the job looks for: grace periods that ended, revoked keys waiting to be settled.
create index api_keys_in_grace on api_keys (grace_until) where state = 'previous';
create index api_keys_settling on api_keys (owner)
    where state = 'revoked' and deleted_at is null;

-- ---------------------------------------------------------------------------------------------
-- One lease per owner: the single point of exclusion for changes of an owner's keys at
-- OpenRouter (creates, rotations, limit changes, settlements). A budget change that arrives
-- while someone holds the owner sets dirty, in the same statement that finds the lease taken;
-- the holder sees it when releasing and applies it before letting go. tend_at is when the
-- owner's keys next need attention: a grace period or a settlement ending.
-- ---------------------------------------------------------------------------------------------
create table owner_leases (
    owner text primary key check (owner ~ '^(user|system):.+$'),
    holder uuid,
    lease_until timestamptz,
    dirty boolean not null default false,
    tend_at timestamptz,
    updated_at timestamptz not null default now()
);

create index owner_leases_due on owner_leases (tend_at) where tend_at is not null;
create index owner_leases_dirty on owner_leases (owner) where dirty;

alter table owner_leases enable row level security;
revoke all on owner_leases from anon, authenticated;
grant select, insert, update on owner_leases to service_role;

-- ---------------------------------------------------------------------------------------------
-- An emergency rotation ends completed, or failed with each key's reason.
-- ---------------------------------------------------------------------------------------------
alter table emergency_rotations drop constraint emergency_rotations_status_check;
alter table emergency_rotations add constraint emergency_rotations_status_check
    check (status in ('running', 'completed', 'failed'));

insert into schema_migrations (version, name, checksum) values ('0012', 'budget_continuity_in_motion', '0e5e242a665469d384aa1a4c78a335e832fd16dcb34925b8c6709612157f37f3')
on conflict (version) do nothing;

-- ===== migration 0013_access_hardening.sql =====

-- Access control hardening: the subscription system's scope, token lifetimes every reader can
-- load back, and audit rows numbered without gaps.

-- users:write: create or update users and their tiers, nothing else.
alter table service_tokens drop constraint service_tokens_scopes_check;
alter table service_tokens add constraint service_tokens_scopes_check check (
    cardinality(scopes) > 0
    and scopes <@ array['keys:read', 'keys:write', 'keys:reveal', 'usage:write', 'usage:read',
                        'users:write', 'admin']::text[]
);

-- An expiry no client can read back (PostgreSQL stores years up to 294276, Python's datetime
-- stops at 9999) would break every later listing: refuse it here too, whatever the caller.
update service_tokens set expires_at = '9999-01-01T00:00:00Z'
 where expires_at >= '9999-01-01T00:00:00Z';
alter table service_tokens add constraint service_tokens_expires_readable
    check (expires_at is null or expires_at < '9999-01-01T00:00:00Z');

-- Audit rows numbered one after the other. The identity default drew a number before the
-- trigger drew the one it used (under the chain's lock, migration 0011), so seq advanced by
-- two per row. Now the trigger alone numbers rows: the last row's seq plus one, read under the
-- same lock as the last row's hash, so numbers follow chain order and a rolled-back row leaves
-- no hole. Rows written before this migration keep their (even) numbers; verify_audit_chain
-- walks rows by seq and never relied on them being contiguous.
alter table audit_log alter column seq drop identity if exists;

create or replace function audit_log_chain() returns trigger
language plpgsql
as $$
declare
    previous audit_log;
begin
    -- Serialise writers so that each row links to the one before it.
    perform pg_advisory_xact_lock(7461203951);
    select * into previous from audit_log order by seq desc limit 1;
    new.seq := coalesce(previous.seq, 0) + 1;
    new.prev_hash := coalesce(previous.row_hash, '\x'::bytea);
    new.row_hash := sha256(new.prev_hash || convert_to(audit_row_payload(new), 'UTF8'));
    return new;
end;
$$;

insert into schema_migrations (version, name, checksum) values ('0013', 'access_hardening', '921280380a61b9f87a7383051c8711990f9e8928ed4b60efcdd7d9a506927706')
on conflict (version) do nothing;

-- ===== migration 0014_reset_budget_effect.sql =====

-- What a reset gives back to the budget, beside what it adjusts in the books. A reset brings
-- the month's books back to zero (the ledger's figure); it may give the budget back at most
-- what OpenRouter counted as spent: the whole budget again, never more, even when a service
-- reported more than it spent. The owner's next tend, under its lease, reads what was spent
-- and sets the effect; until then the reset gives nothing back.
alter table usage_adjustments add column budget_effect_usd numeric;
update usage_adjustments set budget_effect_usd = amount_usd;
comment on column usage_adjustments.budget_effect_usd is
    'The adjustment''s effect on the budget: a reset gives back at most what OpenRouter had '
    'counted as spent. Null until the owner''s keys were tended after it.';

insert into schema_migrations (version, name, checksum) values ('0014', 'reset_budget_effect', '504bdb5819bf7b845026a693b3237dad69a99fc83bbca090cd3602e98f7dd49b')
on conflict (version) do nothing;

-- ===== migration 0015_supabase_default_privileges.sql =====

-- Supabase grants anon, authenticated and service_role everything on every new table, function
-- and sequence in public (its default privileges), and PostgreSQL grants EXECUTE on every new
-- function to PUBLIC. Our migrations revoked some of that, not all: helper functions stayed
-- callable by anyone, identity sequences readable and writable by the API roles, the audit log
-- writable in every way by service_role, the migrations table open to it. Here every object we
-- created is taken back from all of them, by name (public may hold the project's own objects,
-- which are none of our business), and given only what the access rules allow, as reviewed in
-- tests/db/test_supabase_privileges.py. Any later migration does the same for what it creates.

revoke all on subscription_tiers, users, service_tokens, rate_limit_counters, schema_migrations,
    api_keys, key_operations, audit_log, emergency_rotations, emergency_rotation_items,
    usage_events, usage_adjustments, usage_totals, usage_breakdown, usage_threshold_crossings,
    alert_outbox, usage_drift, work_jobs, work_items, work_job_progress,
    owner_leases
    from public, anon, authenticated, service_role;
revoke all on sequence usage_events_id_seq, usage_adjustments_id_seq, alert_outbox_id_seq
    from public, anon, authenticated, service_role;
revoke all on function
    authenticate_service_token(bytea), consume_rate_limit(text, integer, integer),
    prune_rate_limit_counters(), record_usage_events(jsonb, text),
    reset_usage(text, date, text, text), store_authenticate_service_token(jsonb),
    store_consume_rate_limit(jsonb), store_probe(jsonb), store_record_usage_events(jsonb),
    store_usage_history(jsonb), store_usage_month(jsonb), store_usage_period(text, date),
    verify_audit_chain(), claim_work_items(uuid, text, integer, integer),
    complete_work_item(uuid, text, text), fail_work_item(uuid, text, text, text, numeric),
    audit_row_payload(audit_log), usage_effective(usage_totals), audit_log_append_only(),
    audit_log_chain()
    from public, anon, authenticated, service_role;

-- The service (service_role through Supabase's REST gateway): what it reads and writes.
grant select, insert, update, delete, truncate, references, trigger on
    subscription_tiers, users, service_tokens, rate_limit_counters, api_keys, key_operations,
    emergency_rotations, emergency_rotation_items, usage_events, usage_adjustments,
    usage_totals, usage_breakdown, usage_threshold_crossings, alert_outbox, usage_drift,
    work_jobs, work_items
    to service_role;
grant select, insert on audit_log to service_role;  -- append-only, whoever asks
grant select on work_job_progress to service_role;
grant select, insert, update on owner_leases to service_role;
grant execute on function
    authenticate_service_token(bytea), consume_rate_limit(text, integer, integer),
    prune_rate_limit_counters(), record_usage_events(jsonb, text),
    reset_usage(text, date, text, text), store_authenticate_service_token(jsonb),
    store_consume_rate_limit(jsonb), store_probe(jsonb), store_record_usage_events(jsonb),
    store_usage_history(jsonb), store_usage_month(jsonb), store_usage_period(text, date),
    verify_audit_chain(), claim_work_items(uuid, text, integer, integer),
    complete_work_item(uuid, text, text), fail_work_item(uuid, text, text, text, numeric),
    -- helpers the functions above call as their caller
    audit_row_payload(audit_log), usage_effective(usage_totals)
    to service_role;

-- Signed-in users (authenticated): their own rows, read only (row-level security policies).
grant select on subscription_tiers, users, usage_totals, usage_breakdown, usage_events,
    usage_adjustments, usage_threshold_crossings to authenticated;
grant select (id, owner, user_id, state, openrouter_hash, label, limit_usd, limit_period,
              disabled, created_at, activated_at, superseded_at, grace_until, revoked_at)
    on api_keys to authenticated;

insert into schema_migrations (version, name, checksum) values ('0015', 'supabase_default_privileges', '567f0b5d0dfc1b6b78c833627fcaabf01ed33877b5ea68dbc41581935cf584af')
on conflict (version) do nothing;

-- ===== migration 0016_usage_pace.sql =====

-- A user's month, with the pace a forecast can trust: what their events cost over the seven
-- days before `as_of` (default now), across the month's start, so that on the 1st the pace is
-- last week's and a first hour's spend is one day's in seven, not a month's. Reads at most
-- two periods of one user's events (the index on user and period).
create or replace function store_usage_month(jsonb) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'tier', u.tier,
        'budget_usd', t.monthly_budget_usd,
        'months', jsonb_build_array(store_usage_period(u.user_id, ($1 ->> 'period')::date)),
        'last_7_days_usd', (
            select coalesce(sum(e.cost_usd), 0)
            from usage_events e, (select coalesce(($1 ->> 'as_of')::timestamptz, now()) as at) w
            where e.user_id = u.user_id
              and e.period >= date_trunc('month', (w.at - interval '7 days') at time zone 'UTC')::date
              and e.occurred_at > w.at - interval '7 days'
              and e.occurred_at <= w.at
        )
    )
    from users u join subscription_tiers t on t.tier = u.tier
    where u.user_id = $1 ->> 'user_id'
$$;

insert into schema_migrations (version, name, checksum) values ('0016', 'usage_pace', '0e18efa58a4604c08d79fc0f4cad3631891b78644735564e7959d71870f4c297')
on conflict (version) do nothing;

-- ===== migration 0017_one_work_queue.sql =====

-- One work queue for all bulk work, worked by a fleet of invocations that shares OpenRouter.
--
-- 1. Items come in phases: an item of a later phase is claimed only once every item of the
--    job's earlier phases has been tried (done, parked, or waiting for its retry), so an
--    emergency blocks every key in scope before it replaces any, and a reconcile has read
--    every page before it concludes. An item may carry a payload, and keeps its handler's
--    result (what a job's report is made of).
-- 2. Jobs have a priority: a worker takes the most urgent job with work first (an emergency
--    before the month's rotation).
-- 3. Emergency rotations run on this queue: their items are work items; the per-key outcome
--    (blocked, its measured time to revoke, replaced, failed) stays in
--    emergency_rotation_items, which loses its own claims, leases and attempts.
-- 4. The fleet's share of OpenRouter: how many calls at once OpenRouter takes (learned from its
--    429s, additive increase and multiplicative decrease) is one figure for every invocation,
--    divided among the workers alive, instead of each taking the whole allowance.

alter table work_items
    add column phase smallint not null default 0 check (phase between 0 and 9),
    add column payload jsonb not null default '{}'::jsonb,
    add column result jsonb;
alter table work_jobs
    add column priority smallint not null default 0 check (priority between 0 and 9);

drop index work_items_claimable;
create index work_items_claimable on work_items (job_id, phase, available_at)
    where status = 'pending';
create index work_jobs_running on work_jobs (priority desc, created_at) where status = 'running';

create or replace function claim_work_items(
    p_job_id uuid, p_worker text, p_limit integer, p_lease_seconds integer
) returns setof work_items
language sql
as $$
    with gate as (
        -- the lowest phase with an item not tried yet, or being tried now: later phases wait
        select min(phase) as open_phase from work_items
        where job_id = p_job_id and status = 'pending'
          and (attempts = 0 or lease_until >= now())
    ),
    claimable as (
        select w.job_id, w.item from work_items w, gate
        where w.job_id = p_job_id and w.status = 'pending' and w.available_at <= now()
          and (w.lease_until is null or w.lease_until < now())
          and (gate.open_phase is null or w.phase <= gate.open_phase)
        order by w.phase, w.available_at, w.item
        limit p_limit
        for update of w skip locked
    )
    update work_items w
    set leased_by = p_worker,
        lease_until = now() + make_interval(secs => p_lease_seconds),
        attempts = w.attempts + 1
    from claimable c
    where w.job_id = c.job_id and w.item = c.item
    returning w.*
$$;

drop function complete_work_item(uuid, text, text);
-- Done, by the worker holding the lease, with what its handler found; false if it no longer
-- holds it (another worker took the item when the lease ran out), so it is completed once.
create function complete_work_item(p_job_id uuid, p_item text, p_worker text, p_result jsonb)
returns boolean
language sql
as $$
    with done as (
        update work_items
        set status = 'done', finished_at = now(), lease_until = null, last_error = null,
            result = p_result
        where job_id = p_job_id and item = p_item and status = 'pending'
          and leased_by = p_worker and lease_until >= now()
        returning 1
    )
    select exists (select 1 from done)
$$;

-- The running jobs with an item due now, most urgent first: what a worker looks for.
create function work_jobs_due(p_limit integer) returns setof work_jobs
language sql stable
as $$
    select j.* from work_jobs j
    where j.status = 'running' and exists (
        select 1 from work_items i
        where i.job_id = j.id and i.status = 'pending' and i.available_at <= now()
          and (i.lease_until is null or i.lease_until < now()))
    order by j.priority desc, j.created_at
    limit p_limit
$$;

-- Emergency rotations on the queue. A rotation still running when this migration runs is
-- carried over: its open keys become items of its job, tried afresh.
alter table emergency_rotations add column job_id uuid references work_jobs (id);
insert into work_jobs (kind, name, status, max_attempts, priority, created_by, created_at)
select 'emergency_rotation', r.id::text, 'running', 12, 9, r.requested_by, r.created_at
from emergency_rotations r where r.status = 'running';
update emergency_rotations r set job_id = j.id
from work_jobs j where j.kind = 'emergency_rotation' and j.name = r.id::text;
insert into work_items (job_id, item, phase)
select r.job_id, 'revoke:' || i.key_id, 0
from emergency_rotation_items i join emergency_rotations r on r.id = i.rotation_id
where r.status = 'running' and i.status = 'pending';
insert into work_items (job_id, item, phase)
select distinct r.job_id, 'replace:' || i.owner, 1
from emergency_rotation_items i join emergency_rotations r on r.id = i.rotation_id
where r.status = 'running' and i.status in ('pending', 'disabled');
alter table emergency_rotation_items drop column attempts, drop column lease_until;
create index emergency_rotation_items_owner on emergency_rotation_items (rotation_id, owner);

create table openrouter_fleet (
    id boolean primary key default true check (id),
    allowance integer not null check (allowance >= 1),
    successes integer not null default 0,
    resume_at timestamptz not null default now(),
    throttles bigint not null default 0,
    updated_at timestamptz not null default now()
);

create table openrouter_fleet_workers (
    worker text primary key check (length(worker) between 1 and 100),
    lease_until timestamptz not null
);

-- A worker's share of the fleet's allowance, after reporting what it saw since it last asked:
-- p_successes calls that OpenRouter took, and whether it answered 429 (then the allowance
-- drops by a quarter, and every worker waits out its Retry-After: a gentler cut than halving,
-- since a fleet's 429s mostly come from a worker joining before the others took their
-- smaller share, not from OpenRouter lowering what it takes). A run of successes as long as the
-- allowance earns one more call at once, up to p_max (OPENROUTER_MAX_CONCURRENCY). The share
-- is the allowance divided among the workers alive (at least one call each); p_leave takes the
-- worker out. resume_at names the pause still to wait out, so that a worker waits each once. One row, updated in one statement: concurrent workers queue on it briefly.
create function openrouter_fleet_share(
    p_worker text, p_max integer, p_lease_seconds integer, p_successes integer,
    p_throttled boolean, p_retry_after_s numeric, p_leave boolean
) returns table (share integer, allowance integer, workers integer, resume_in_s numeric,
                 resume_at timestamptz)
language plpgsql
as $$
declare
    fleet openrouter_fleet;
    alive integer;
begin
    insert into openrouter_fleet (allowance) values (p_max) on conflict (id) do nothing;
    update openrouter_fleet f set
        -- One cut per pause: the workers that saw the same burst of 429s report it each, and
        -- a 429 while the fleet already waits out a Retry-After is that burst.
        allowance = least(p_max, case
            when p_throttled and f.resume_at > now() then f.allowance
            when p_throttled then greatest(1, f.allowance * 3 / 4)
            when f.successes + p_successes >= f.allowance then f.allowance + 1
            else f.allowance end),
        successes = case
            when p_throttled then 0
            when f.successes + p_successes >= f.allowance then 0
            else f.successes + p_successes end,
        resume_at = case when p_throttled
            then greatest(f.resume_at, now() + make_interval(secs => p_retry_after_s))
            else f.resume_at end,
        throttles = f.throttles + p_throttled::integer,
        updated_at = now()
    returning * into fleet;
    if p_leave then
        delete from openrouter_fleet_workers where worker = p_worker;
    else
        insert into openrouter_fleet_workers (worker, lease_until)
        values (p_worker, now() + make_interval(secs => p_lease_seconds))
        on conflict (worker) do update set lease_until = excluded.lease_until;
    end if;
    delete from openrouter_fleet_workers where lease_until < now();
    select count(*) into alive from openrouter_fleet_workers;
    return query select
        greatest(1, fleet.allowance / greatest(alive, 1)),
        fleet.allowance,
        alive,
        greatest(0, extract(epoch from fleet.resume_at - now()))::numeric,
        fleet.resume_at;
end
$$;

alter table openrouter_fleet enable row level security;
alter table openrouter_fleet_workers enable row level security;
revoke all on openrouter_fleet, openrouter_fleet_workers from public, anon, authenticated;
grant all on openrouter_fleet, openrouter_fleet_workers to service_role;
revoke all on function complete_work_item(uuid, text, text, jsonb), work_jobs_due(integer),
    openrouter_fleet_share(text, integer, integer, integer, boolean, numeric, boolean)
    from public, anon, authenticated;
grant execute on function complete_work_item(uuid, text, text, jsonb), work_jobs_due(integer),
    openrouter_fleet_share(text, integer, integer, integer, boolean, numeric, boolean)
    to service_role;

insert into schema_migrations (version, name, checksum) values ('0017', 'one_work_queue', 'bc094596c13477be20f6faa733dfe13d946458b371459c57b446c775a41e9d59')
on conflict (version) do nothing;

-- ===== migration 0018_thresholds_on_budget_change.sql =====

-- A budget that shrinks under what a user already spent crosses thresholds too: a downgrade or
-- a lower tier amount must alert at 80 % and 100 % as spending would have. Called in the
-- transaction that changes the tier or its amount; each threshold is still crossed at most
-- once per user and month (the primary key of usage_threshold_crossings).
create function cross_usage_thresholds(p_period date, p_user_id text, p_tier text)
returns integer
language sql
as $$
    with budgets as (
        select t.user_id, t.period, greatest(t.spent_usd + t.adjusted_usd, 0) as effective,
               s.monthly_budget_usd as budget
          from usage_totals t
          join users u on u.user_id = t.user_id
          join subscription_tiers s on s.tier = u.tier
         where t.period = p_period
           and (p_user_id is null or t.user_id = p_user_id)
           and (p_tier is null or u.tier = p_tier)
    ),
    crossings as (
        insert into usage_threshold_crossings (user_id, period, threshold, spent_usd, budget_usd)
        select b.user_id, b.period, th, b.effective, b.budget
          from budgets b cross join unnest(array[50, 80, 100]) th
         where b.budget > 0 and b.effective * 100 >= b.budget * th
        on conflict do nothing
        returning usage_threshold_crossings.*
    ),
    alerts as (
        insert into alert_outbox (kind, payload)
        select 'usage.threshold_crossed',
               jsonb_build_object('user_id', c.user_id, 'period', c.period,
                                  'threshold', c.threshold, 'spent_usd', c.spent_usd::text,
                                  'budget_usd', c.budget_usd::text)
          from crossings c
        returning 1
    )
    select count(*)::integer from alerts
$$;

revoke all on function cross_usage_thresholds(date, text, text) from public, anon, authenticated;
grant execute on function cross_usage_thresholds(date, text, text) to service_role;

insert into schema_migrations (version, name, checksum) values ('0018', 'thresholds_on_budget_change', 'cd65b7e0dd8908ea9838c5b8c2065eacd10736a1ab29f9141a7396747dd0e14f')
on conflict (version) do nothing;

-- ===== migration 0019_work_item_heartbeat.sql =====

-- Short leases on work items, renewed while their worker lives; items whose worker died.
--
-- A worker now holds an item for a short lease (QueueSettings.lease_s, 15 s) and renews the
-- leases of every item it holds (claimed and not started, or running) every few seconds, in one
-- statement (shared/jobs/queue.py). So a worker that dies (kill -9, a platform timeout) gives
-- its items back within seconds instead of after its whole budget plus a margin (75 s), and a
-- live worker keeps an item however long it runs. Completion and failure still require the
-- lease (0017's complete_work_item, 0008's fail_work_item): a worker whose lease was taken over
-- is refused.
--
-- 1. An item whose lease ran out while its worker had not ended it (the worker died on it) was
--    never tried to the end: it now keeps the later phases closed, as an untried item does,
--    until a worker tries it again. A lapsed lease counted as tried before, so one claim took
--    the dead worker's item and the next phase's items together and ran them side by side.
--    (complete, fail and release clear lease_until: a lease still set and past is a dead one.)
-- 2. Such an item, if the dead worker was on its last attempt, is parked (worker_lost) instead
--    of run again: an item that kills every worker taking it must not do so forever, nor keep,
--    by 1., the later phases closed forever.

create or replace function claim_work_items(
    p_job_id uuid, p_worker text, p_limit integer, p_lease_seconds integer
) returns setof work_items
language sql
as $$
    with lost as (
        select w.job_id, w.item from work_items w join work_jobs j on j.id = w.job_id
        where w.job_id = p_job_id and w.status = 'pending' and w.lease_until < now()
          and w.attempts >= j.max_attempts
        for update of w skip locked
    )
    update work_items w
    set status = 'parked', finished_at = now(), lease_until = null,
        last_error = 'worker_lost: its worker stopped during its last attempt'
    from lost
    where w.job_id = lost.job_id and w.item = lost.item;

    with gate as (
        -- the lowest phase with an item not tried yet, being tried now, or whose try was cut
        -- off (its worker died: its lease ran out, still set): later phases wait
        select min(phase) as open_phase from work_items
        where job_id = p_job_id and status = 'pending'
          and (attempts = 0 or lease_until is not null)
    ),
    claimable as (
        select w.job_id, w.item from work_items w, gate
        where w.job_id = p_job_id and w.status = 'pending' and w.available_at <= now()
          and (w.lease_until is null or w.lease_until < now())
          and (gate.open_phase is null or w.phase <= gate.open_phase)
        order by w.phase, w.available_at, w.item
        limit p_limit
        for update of w skip locked
    )
    update work_items w
    set leased_by = p_worker,
        lease_until = now() + make_interval(secs => p_lease_seconds),
        attempts = w.attempts + 1
    from claimable c
    where w.job_id = c.job_id and w.item = c.item
    returning w.*;
$$;

insert into schema_migrations (version, name, checksum) values ('0019', 'work_item_heartbeat', 'a47c342adce0e37cf6b5c59d84bbf2dd3492fe976df662ef8d446f604db93050')
on conflict (version) do nothing;

-- ===== migration 0020_books_from_openrouter.sql =====

-- Spend as OpenRouter counts it: the books hold what OpenRouter counted, not only what services
-- reported.
--
-- A user's month now has, beside the reported events (spent_usd) and the resets (adjusted_usd):
-- counted_usd, what OpenRouter counted on the user's keys this month (every key: the current
-- one, those in their grace period, those rotated out and deleted), written by the sync job
-- (shared/usage/sync.py) from the keys' monthly counters; and corrected_usd, corrections of
-- reported costs found wrong (0 until verification corrects one). The books' gross is what the
-- events say, corrected, or what OpenRouter counted if that is more: the part no reported event
-- explains is unreported_usd, a figure the database derives, so a report arriving after the
-- sync counted its cost shrinks it instead of counting the cost twice, and nothing reported is
-- ever deleted or overwritten. net_usd is what counts against the budget (the gross less the
-- resets, never below zero): every reader of the books, thresholds and reports uses it.

alter table usage_totals
    add column counted_usd numeric not null default 0 check (counted_usd >= 0),
    add column corrected_usd numeric not null default 0,
    add column unreported_usd numeric generated always as
        (greatest(counted_usd - spent_usd - corrected_usd, 0)) stored,
    add column net_usd numeric generated always as
        (greatest(greatest(spent_usd + corrected_usd, counted_usd) + adjusted_usd, 0)) stored;

create or replace function usage_effective(t usage_totals) returns numeric
language sql immutable
as $$ select t.net_usd $$;

drop index usage_totals_by_effective_spend;
create index usage_totals_by_net_spend on usage_totals (period, net_usd desc, user_id);

-- What OpenRouter counted on each of our keys, per UTC month: the sync's evidence, per key.
create table openrouter_key_usage (
    key_id uuid not null references api_keys (id),
    period date not null,
    usage_usd numeric not null check (usage_usd >= 0),
    synced_at timestamptz not null default now(),
    primary key (key_id, period)
);
alter table openrouter_key_usage enable row level security;
revoke all on openrouter_key_usage from public, anon, authenticated;
grant all on openrouter_key_usage to service_role;

-- One page of OpenRouter's listing: each of our keys' counter for the month (p_keys: a JSON
-- array of {"hash", "usage_usd"}), then the month's count of every user those keys belong to,
-- recomputed from every key of theirs: its counter as last read, or for a key deleted since, the
-- larger of that and its final usage. Crosses the thresholds the new count puts behind the
-- spend, with their alerts. Returns the users whose count changed. p_users adds users to
-- recompute although none of their keys is on the page (a key deleted before it was listed).
create function sync_counted_usage(p_period date, p_keys jsonb, p_users text[] default '{}')
returns integer
language plpgsql
as $$
declare
    v_users text[];
    changed integer;
begin
    insert into openrouter_key_usage (key_id, period, usage_usd, synced_at)
    select k.id, p_period, greatest((e.value ->> 'usage_usd')::numeric, 0), now()
      from jsonb_array_elements(p_keys) e
      join api_keys k on k.openrouter_hash = e.value ->> 'hash'
     where k.user_id is not null
    on conflict (key_id, period) do update
        set usage_usd = excluded.usage_usd, synced_at = excluded.synced_at;

    select coalesce(array_agg(distinct u), '{}') into v_users
      from (select k.user_id as u from jsonb_array_elements(p_keys) e
              join api_keys k on k.openrouter_hash = e.value ->> 'hash'
             where k.user_id is not null
            union select unnest(p_users)) s
     where exists (select 1 from users where user_id = s.u);

    insert into usage_totals (user_id, period)
    select u, p_period from unnest(v_users) u
    order by u
    on conflict do nothing;

    with counted as (
        select k.user_id, sum(greatest(
                   coalesce(o.usage_usd, 0),
                   case when k.final_usage_period = p_period
                        then coalesce(k.final_usage_usd, 0) else 0 end)) as usd
          from api_keys k
          left join openrouter_key_usage o on o.key_id = k.id and o.period = p_period
         where k.user_id = any (v_users)
         group by k.user_id
    ),
    updated as (
        update usage_totals t set counted_usd = c.usd, updated_at = now()
          from counted c
         where t.user_id = c.user_id and t.period = p_period and t.counted_usd <> c.usd
        returning 1
    )
    select count(*) into changed from updated;

    perform cross_usage_thresholds(p_period, u, null) from unnest(v_users) u;
    return changed;
end
$$;
revoke all on function sync_counted_usage(date, jsonb, text[]) from public, anon, authenticated;
grant execute on function sync_counted_usage(date, jsonb, text[]) to service_role;

-- Every reader of the books counts net_usd.
create or replace function record_usage_events(p_events jsonb, p_recorded_by text)
returns table (idx integer, status text, user_id text, period date,
               spent_usd numeric, budget_usd numeric, crossed integer[])
language plpgsql
as $$
#variable_conflict use_column
begin
    insert into usage_totals (user_id, period)
    select distinct e.value ->> 'user_id',
           date_trunc('month', (e.value ->> 'occurred_at')::timestamptz at time zone 'UTC')::date
      from jsonb_array_elements(p_events) e
      join users u on u.user_id = e.value ->> 'user_id'
     order by 1, 2
    on conflict do nothing;

    perform 1
       from usage_totals t
       join (select distinct e.value ->> 'user_id' as user_id,
                    date_trunc('month', (e.value ->> 'occurred_at')::timestamptz
                               at time zone 'UTC')::date as period
               from jsonb_array_elements(p_events) e) k
         on k.user_id = t.user_id and k.period = t.period
      order by t.user_id, t.period
        for update of t;

    return query
    with input as (
        select (e.ordinality - 1)::integer as idx,
               e.value ->> 'user_id' as user_id,
               e.value ->> 'generation_id' as generation_id,
               date_trunc('month', (e.value ->> 'occurred_at')::timestamptz
                          at time zone 'UTC')::date as period,
               e.value,
               exists (select 1 from users u where u.user_id = e.value ->> 'user_id') as known,
               row_number() over (partition by e.value ->> 'generation_id'
                                  order by e.ordinality) as nth
          from jsonb_array_elements(p_events) with ordinality e
    ),
    inserted as (
        insert into usage_events (user_id, generation_id, period, model, agent_name, endpoint,
                                  prompt_tokens, completion_tokens, cost_usd, duration_ms,
                                  occurred_at, recorded_by)
        select i.user_id, i.generation_id, i.period, i.value ->> 'model',
               i.value ->> 'agent_name', i.value ->> 'endpoint',
               coalesce((i.value ->> 'prompt_tokens')::integer, 0),
               coalesce((i.value ->> 'completion_tokens')::integer, 0),
               (i.value ->> 'cost_usd')::numeric, (i.value ->> 'duration_ms')::integer,
               (i.value ->> 'occurred_at')::timestamptz, p_recorded_by
          from input i
         where i.known and i.nth = 1
         order by i.idx
        on conflict (generation_id) do nothing
        returning usage_events.generation_id, usage_events.user_id, usage_events.period,
                  usage_events.model, usage_events.agent_name, usage_events.cost_usd,
                  usage_events.prompt_tokens, usage_events.completion_tokens
    ),
    totals as (
        update usage_totals t
           set spent_usd = t.spent_usd + a.cost, events = t.events + a.n, updated_at = now()
          from (select user_id, period, sum(cost_usd) as cost, count(*) as n
                  from inserted group by 1, 2) a
         where t.user_id = a.user_id and t.period = a.period
        returning t.user_id, t.period, t.net_usd as effective
    ),
    -- PostgreSQL runs every data-modifying CTE to completion, read or not.
    breakdown as (
        insert into usage_breakdown as b (user_id, period, model, agent_name, cost_usd, events,
                                          prompt_tokens, completion_tokens)
        select user_id, period, model, coalesce(agent_name, ''), sum(cost_usd), count(*),
               sum(prompt_tokens), sum(completion_tokens)
          from inserted group by 1, 2, 3, 4
        on conflict (user_id, period, model, agent_name) do update
            set cost_usd = b.cost_usd + excluded.cost_usd, events = b.events + excluded.events,
                prompt_tokens = b.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = b.completion_tokens + excluded.completion_tokens
        returning 1
    ),
    budgets as (
        select t.user_id, t.period, t.effective, s.monthly_budget_usd as budget
          from totals t
          join users u on u.user_id = t.user_id
          join subscription_tiers s on s.tier = u.tier
    ),
    crossings as (
        insert into usage_threshold_crossings (user_id, period, threshold, spent_usd, budget_usd)
        select b.user_id, b.period, th, b.effective, b.budget
          from budgets b cross join unnest(array[50, 80, 100]) th
         where b.budget > 0 and b.effective * 100 >= b.budget * th
        on conflict do nothing
        returning usage_threshold_crossings.user_id, usage_threshold_crossings.period,
                  usage_threshold_crossings.threshold, usage_threshold_crossings.spent_usd,
                  usage_threshold_crossings.budget_usd
    ),
    alerts as (
        insert into alert_outbox (kind, payload)
        select 'usage.threshold_crossed',
               jsonb_build_object('user_id', c.user_id, 'period', c.period,
                                  'threshold', c.threshold, 'spent_usd', trim_scale(c.spent_usd)::text,
                                  'budget_usd', trim_scale(c.budget_usd)::text)
          from crossings c
        returning 1
    ),
    after as (
        select k.user_id, k.period,
               coalesce(t.effective, u.net_usd) as effective,
               s.monthly_budget_usd as budget,
               coalesce((select array_agg(c.threshold order by c.threshold) from crossings c
                          where c.user_id = k.user_id and c.period = k.period),
                        '{}') as crossed
          from (select distinct user_id, period from input where known) k
          left join totals t on t.user_id = k.user_id and t.period = k.period
          left join usage_totals u on u.user_id = k.user_id and u.period = k.period
          join users us on us.user_id = k.user_id
          join subscription_tiers s on s.tier = us.tier
    )
    select i.idx,
           case when not i.known then 'unknown_user'
                when i.nth = 1 and exists (select 1 from inserted x
                                           where x.generation_id = i.generation_id)
                    then 'stored'
                else 'duplicate' end,
           i.user_id, i.period, a.effective, a.budget,
           case when i.nth = 1 and exists (select 1 from inserted x
                                           where x.generation_id = i.generation_id)
                then a.crossed else '{}'::integer[] end
      from input i
      left join after a on a.user_id = i.user_id and a.period = i.period
     order by i.idx;
end;
$$;

create or replace function cross_usage_thresholds(p_period date, p_user_id text, p_tier text)
returns integer
language sql
as $$
    with budgets as (
        select t.user_id, t.period, t.net_usd as effective, s.monthly_budget_usd as budget
          from usage_totals t
          join users u on u.user_id = t.user_id
          join subscription_tiers s on s.tier = u.tier
         where t.period = p_period
           and (p_user_id is null or t.user_id = p_user_id)
           and (p_tier is null or u.tier = p_tier)
    ),
    crossings as (
        insert into usage_threshold_crossings (user_id, period, threshold, spent_usd, budget_usd)
        select b.user_id, b.period, th, b.effective, b.budget
          from budgets b cross join unnest(array[50, 80, 100]) th
         where b.budget > 0 and b.effective * 100 >= b.budget * th
        on conflict do nothing
        returning usage_threshold_crossings.*
    ),
    alerts as (
        insert into alert_outbox (kind, payload)
        select 'usage.threshold_crossed',
               jsonb_build_object('user_id', c.user_id, 'period', c.period,
                                  'threshold', c.threshold, 'spent_usd', trim_scale(c.spent_usd)::text,
                                  'budget_usd', trim_scale(c.budget_usd)::text)
          from crossings c
        returning 1
    )
    select count(*)::integer from alerts
$$;

-- A user's book of a period, with what was reported, corrected, counted and left unreported.
create or replace function store_usage_period(p_user_id text, p_period date) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'period', p_period,
        'spent_usd', coalesce(tot.spent_usd, 0),
        'adjusted_usd', coalesce(tot.adjusted_usd, 0),
        'counted_usd', coalesce(tot.counted_usd, 0),
        'corrected_usd', coalesce(tot.corrected_usd, 0),
        'unreported_usd', coalesce(tot.unreported_usd, 0),
        'events', coalesce(tot.events, 0),
        'breakdown', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'model', b.model, 'agent_name', b.agent_name, 'cost_usd', b.cost_usd,
                       'events', b.events, 'prompt_tokens', b.prompt_tokens,
                       'completion_tokens', b.completion_tokens)
                   order by b.cost_usd desc, b.model, b.agent_name)
            from usage_breakdown b where b.user_id = p_user_id and b.period = p_period
        ), '[]'::jsonb),
        'crossed', coalesce((
            select jsonb_agg(c.threshold order by c.threshold)
            from usage_threshold_crossings c where c.user_id = p_user_id and c.period = p_period
        ), '[]'::jsonb)
    )
    from (select 1) one
    left join usage_totals tot on tot.user_id = p_user_id and tot.period = p_period
$$;

insert into schema_migrations (version, name, checksum) values ('0020', 'books_from_openrouter', 'e0b9e227fe6c43027085a4f7ae5d8fcdcead0e7d4017aebac5e9e7607380b78f')
on conflict (version) do nothing;

-- ===== migration 0021_verified_costs.sql =====

-- Reported costs verified against OpenRouter's own record of each generation (GET /generation).
--
-- Every reported event is checked once, asynchronously, by the verification job
-- (shared/usage/verification.py): its state goes from pending to verified (OpenRouter's cost is
-- the reported one), mismatch (it is not: the difference is a correction), foreign (the
-- generation was made on another user's key: none of it is this user's spend, so the whole
-- reported cost is corrected away) or unverifiable (OpenRouter never found the generation within
-- the give-up time: the reported cost stands, and the state says it was never confirmed).
-- OpenRouter's cost is kept beside the reported one, which is never overwritten. A correction is
-- kept as evidence in usage_corrections and added to usage_totals.corrected_usd of the event's
-- user and month, which every reader of the books counts (net_usd, 0020).

alter table usage_events
    add column verify_state text not null default 'pending'
        check (verify_state in ('pending', 'verified', 'mismatch', 'foreign', 'unverifiable')),
    add column openrouter_cost_usd numeric,
    add column verify_attempts integer not null default 0 check (verify_attempts >= 0),
    add column verify_next_at timestamptz not null default now(),
    add column verified_at timestamptz;

-- The job's pick: the pending events due first, from a small partial index.
create index usage_events_verify_due on usage_events (verify_next_at, id)
    where verify_state = 'pending';

-- The month report's count of events flagged foreign or given up: a few, from a small index.
create index usage_events_unconfirmed on usage_events (period, verify_state)
    where verify_state in ('foreign', 'unverifiable');

-- The evidence of every correction: one per event at most (the constraint is the guarantee that
-- verifying an event twice never corrects it twice).
create table usage_corrections (
    id bigint generated always as identity primary key,
    event_id bigint not null unique references usage_events (id),
    user_id text not null references users (user_id),
    period date not null,
    generation_id text not null,
    reported_usd numeric not null,
    openrouter_usd numeric not null,
    correction_usd numeric not null,
    reason text not null check (reason in ('mismatch', 'foreign')),
    generation_user text,  -- whose key OpenRouter says made it (external_user), if known
    created_at timestamptz not null default now()
);

create index usage_corrections_period on usage_corrections (period, user_id);

-- One verification outcome, with its correction, in one transaction. p_found: OpenRouter had
-- the generation (then p_openrouter_cost is its cost and p_generation_user its external user);
-- not found (404: not ready yet, or unknown) tries again later, backing off from p_retry_s
-- (doubling, at most 15 minutes, never past the give-up time), and gives up once p_give_up_s
-- have passed since the event was recorded. A correction of |amount| >= p_alert_usd queues a
-- usage.cost_mismatch alert. Returns the event's new state, 'not_ready', or 'unchanged' for an
-- event no longer pending (verified before, by this run or another): nothing changes then.
create function record_usage_verification(
    p_event_id bigint, p_found boolean, p_openrouter_cost numeric, p_generation_user text,
    p_now timestamptz, p_retry_s numeric, p_give_up_s numeric, p_alert_usd numeric)
returns text
language plpgsql
as $$
declare
    v_event usage_events;
    v_state text;
    v_correction numeric;
    v_deadline timestamptz;
begin
    select * into v_event from usage_events where id = p_event_id for update;
    if not found or v_event.verify_state <> 'pending' then
        return 'unchanged';
    end if;

    if not p_found then
        v_deadline := v_event.recorded_at + make_interval(secs => p_give_up_s);
        if p_now >= v_deadline then
            update usage_events
               set verify_state = 'unverifiable', verify_attempts = verify_attempts + 1,
                   verified_at = p_now
             where id = p_event_id;
            return 'unverifiable';
        end if;
        update usage_events
           set verify_attempts = verify_attempts + 1,
               verify_next_at = least(
                   p_now + make_interval(secs => least(
                       p_retry_s * power(2, least(v_event.verify_attempts, 20)), 900)),
                   v_deadline)
         where id = p_event_id;
        return 'not_ready';
    end if;

    -- Every key we make names its user (external.user): a generation naming none was made on
    -- a system key or a key not ours, so it is no more this user's than another user's.
    if p_generation_user is null or p_generation_user <> v_event.user_id then
        v_state := 'foreign';
        v_correction := -v_event.cost_usd;  -- not this user's spend
    elsif p_openrouter_cost <> v_event.cost_usd then
        v_state := 'mismatch';
        v_correction := p_openrouter_cost - v_event.cost_usd;
    else
        v_state := 'verified';
        v_correction := 0;
    end if;

    update usage_events
       set verify_state = v_state, openrouter_cost_usd = p_openrouter_cost,
           verify_attempts = verify_attempts + 1, verified_at = p_now
     where id = p_event_id;
    if v_state = 'verified' then
        return v_state;
    end if;

    insert into usage_corrections (event_id, user_id, period, generation_id, reported_usd,
                                   openrouter_usd, correction_usd, reason, generation_user,
                                   created_at)
    values (v_event.id, v_event.user_id, v_event.period, v_event.generation_id,
            v_event.cost_usd, p_openrouter_cost, v_correction,
            case when v_state = 'foreign' then 'foreign' else 'mismatch' end,
            p_generation_user, p_now)
    on conflict (event_id) do nothing;
    if not found then
        return 'unchanged';
    end if;

    if v_correction <> 0 then
        insert into usage_totals (user_id, period) values (v_event.user_id, v_event.period)
            on conflict do nothing;
        update usage_totals
           set corrected_usd = corrected_usd + v_correction, updated_at = now()
         where user_id = v_event.user_id and period = v_event.period;
        perform cross_usage_thresholds(v_event.period, v_event.user_id, null);
        if abs(v_correction) >= p_alert_usd then
            insert into alert_outbox (kind, payload)
            values ('usage.cost_mismatch', jsonb_build_object(
                'user_id', v_event.user_id, 'period', v_event.period,
                'generation_id', v_event.generation_id, 'outcome', v_state,
                'reported_usd', trim_scale(v_event.cost_usd)::text,
                'openrouter_usd', trim_scale(p_openrouter_cost)::text,
                'correction_usd', trim_scale(v_correction)::text,
                'generation_user', p_generation_user));
        end if;
    end if;
    return v_state;
end
$$;

alter table usage_corrections enable row level security;
revoke all on usage_corrections from public, anon, authenticated, service_role;
revoke all on sequence usage_corrections_id_seq from public, anon, authenticated, service_role;
grant all on usage_corrections to service_role;
revoke all on function record_usage_verification(bigint, boolean, numeric, text, timestamptz,
    numeric, numeric, numeric) from public, anon, authenticated;
grant execute on function record_usage_verification(bigint, boolean, numeric, text, timestamptz,
    numeric, numeric, numeric) to service_role;

insert into schema_migrations (version, name, checksum) values ('0021', 'verified_costs', '73166ff116cd731e179e5b0d5ccd43aa7c0335f7e5297633243e760ed1f72502')
on conflict (version) do nothing;

-- ===== migration 0022_tier_policies.sql =====

-- Tier policies enforced at OpenRouter (issue 19): beside its monthly budget a tier may carry a
-- daily cap (USD), the models and the providers its keys may use. OpenRouter enforces them
-- itself through a guardrail: one per tier that has a policy, its id kept here, and every key
-- of the tier's users assigned to it (a key has at most one guardrail). A policy changed later
-- is one update of the guardrail: the keys assigned to it follow without a call each.

alter table subscription_tiers
    add column daily_cap_usd numeric check (daily_cap_usd is null or daily_cap_usd >= 0),
    add column allowed_models text[]
        check (allowed_models is null or cardinality(allowed_models) between 1 and 200),
    add column allowed_providers text[]
        check (allowed_providers is null or cardinality(allowed_providers) between 1 and 100),
    add column guardrail_id text;

comment on column subscription_tiers.guardrail_id is
    'The OpenRouter guardrail that enforces the tier''s policy; null: the tier has none.';

-- Which guardrail each key was assigned to at OpenRouter, as we last made it: what the tier's
-- job and the key's activation compare with the tier's, so that a key is assigned once.
create table key_guardrails (
    key_id uuid primary key references api_keys (id) on delete cascade,
    guardrail_id text not null,
    assigned_at timestamptz not null default now()
);

alter table key_guardrails enable row level security;
revoke all on key_guardrails from public, anon, authenticated, service_role;
grant all on key_guardrails to service_role;

insert into schema_migrations (version, name, checksum) values ('0022', 'tier_policies', '4b85251cf169b10699b8826c6f05578ef82b0900f82565691529d37b283b1236')
on conflict (version) do nothing;

-- ===== migration 0023_budget_increases.sql =====

-- Temporary budget increases (issue 19): an admin (or the users:write scope) grants a user an
-- extra amount for this month or until a date, with a reason. Each grant is a row here, never an
-- edit; it counts in the user's budget of every month it overlaps while it lasts, and stops
-- counting when it ends (ends_at). One function says what a user's budget is in a month,
-- user_budget_usd, and every reader of the budget in the database uses it: the thresholds
-- crossed when usage is logged or a budget changes, and the user's month. The keys' limits read
-- it through the same function (shared/keys/repository.py), so a grant reaches the key at once,
-- survives a rotation (the new key's limit is what the budget leaves) and lapses with the grant
-- (the advance job applies the budget again to users whose grant just ended).

create table budget_increases (
    id bigint generated always as identity primary key,
    user_id text not null references users (user_id),
    amount_usd numeric not null check (amount_usd > 0 and amount_usd <= 10000000),
    starts_period date not null check (extract(day from starts_period) = 1),
    ends_at timestamptz not null,
    reason text not null check (length(reason) between 3 and 500),
    granted_by text not null,
    granted_at timestamptz not null default now(),
    -- the advance job set the user's keys to the budget without it, once it ended
    lapse_applied_at timestamptz,
    check (ends_at > granted_at)
);

create index budget_increases_user on budget_increases (user_id, starts_period);
create index budget_increases_lapsing on budget_increases (ends_at) where lapse_applied_at is null;

-- The user's budget in a month: the tier's (null: unlimited) plus every grant that overlaps the
-- month and has not ended by the month's end, or by now for the month under way.
create function user_budget_usd(p_user_id text, p_tier_budget numeric, p_period date)
returns numeric
language sql stable
as $$
    select case when p_tier_budget is null then null else p_tier_budget + coalesce((
        select sum(i.amount_usd) from budget_increases i
         where i.user_id = p_user_id
           and i.starts_period <= p_period
           and i.ends_at > least(now(), (p_period + interval '1 month')::timestamptz)
    ), 0) end
$$;

-- The grants that count in a user's month, for the user's usage answer.
create function store_budget_increases(p_user_id text, p_period date) returns jsonb
language sql stable
as $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', i.id, 'amount_usd', trim_scale(i.amount_usd)::text, 'ends_at', i.ends_at,
               'reason', i.reason, 'granted_by', i.granted_by, 'granted_at', i.granted_at)
               order by i.ends_at), '[]'::jsonb)
      from budget_increases i
     where i.user_id = p_user_id
       and i.starts_period <= p_period
       and i.ends_at > least(now(), (p_period + interval '1 month')::timestamptz)
$$;

create or replace function record_usage_events(p_events jsonb, p_recorded_by text)
returns table (idx integer, status text, user_id text, period date,
               spent_usd numeric, budget_usd numeric, crossed integer[])
language plpgsql
as $$
#variable_conflict use_column
begin
    insert into usage_totals (user_id, period)
    select distinct e.value ->> 'user_id',
           date_trunc('month', (e.value ->> 'occurred_at')::timestamptz at time zone 'UTC')::date
      from jsonb_array_elements(p_events) e
      join users u on u.user_id = e.value ->> 'user_id'
     order by 1, 2
    on conflict do nothing;

    perform 1
       from usage_totals t
       join (select distinct e.value ->> 'user_id' as user_id,
                    date_trunc('month', (e.value ->> 'occurred_at')::timestamptz
                               at time zone 'UTC')::date as period
               from jsonb_array_elements(p_events) e) k
         on k.user_id = t.user_id and k.period = t.period
      order by t.user_id, t.period
        for update of t;

    return query
    with input as (
        select (e.ordinality - 1)::integer as idx,
               e.value ->> 'user_id' as user_id,
               e.value ->> 'generation_id' as generation_id,
               date_trunc('month', (e.value ->> 'occurred_at')::timestamptz
                          at time zone 'UTC')::date as period,
               e.value,
               exists (select 1 from users u where u.user_id = e.value ->> 'user_id') as known,
               row_number() over (partition by e.value ->> 'generation_id'
                                  order by e.ordinality) as nth
          from jsonb_array_elements(p_events) with ordinality e
    ),
    inserted as (
        insert into usage_events (user_id, generation_id, period, model, agent_name, endpoint,
                                  prompt_tokens, completion_tokens, cost_usd, duration_ms,
                                  occurred_at, recorded_by)
        select i.user_id, i.generation_id, i.period, i.value ->> 'model',
               i.value ->> 'agent_name', i.value ->> 'endpoint',
               coalesce((i.value ->> 'prompt_tokens')::integer, 0),
               coalesce((i.value ->> 'completion_tokens')::integer, 0),
               (i.value ->> 'cost_usd')::numeric, (i.value ->> 'duration_ms')::integer,
               (i.value ->> 'occurred_at')::timestamptz, p_recorded_by
          from input i
         where i.known and i.nth = 1
         order by i.idx
        on conflict (generation_id) do nothing
        returning usage_events.generation_id, usage_events.user_id, usage_events.period,
                  usage_events.model, usage_events.agent_name, usage_events.cost_usd,
                  usage_events.prompt_tokens, usage_events.completion_tokens
    ),
    totals as (
        update usage_totals t
           set spent_usd = t.spent_usd + a.cost, events = t.events + a.n, updated_at = now()
          from (select user_id, period, sum(cost_usd) as cost, count(*) as n
                  from inserted group by 1, 2) a
         where t.user_id = a.user_id and t.period = a.period
        returning t.user_id, t.period, t.net_usd as effective
    ),
    -- PostgreSQL runs every data-modifying CTE to completion, read or not.
    breakdown as (
        insert into usage_breakdown as b (user_id, period, model, agent_name, cost_usd, events,
                                          prompt_tokens, completion_tokens)
        select user_id, period, model, coalesce(agent_name, ''), sum(cost_usd), count(*),
               sum(prompt_tokens), sum(completion_tokens)
          from inserted group by 1, 2, 3, 4
        on conflict (user_id, period, model, agent_name) do update
            set cost_usd = b.cost_usd + excluded.cost_usd, events = b.events + excluded.events,
                prompt_tokens = b.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = b.completion_tokens + excluded.completion_tokens
        returning 1
    ),
    budgets as (
        select t.user_id, t.period, t.effective,
               user_budget_usd(t.user_id, s.monthly_budget_usd, t.period) as budget
          from totals t
          join users u on u.user_id = t.user_id
          join subscription_tiers s on s.tier = u.tier
    ),
    crossings as (
        insert into usage_threshold_crossings (user_id, period, threshold, spent_usd, budget_usd)
        select b.user_id, b.period, th, b.effective, b.budget
          from budgets b cross join unnest(array[50, 80, 100]) th
         where b.budget > 0 and b.effective * 100 >= b.budget * th
        on conflict do nothing
        returning usage_threshold_crossings.user_id, usage_threshold_crossings.period,
                  usage_threshold_crossings.threshold, usage_threshold_crossings.spent_usd,
                  usage_threshold_crossings.budget_usd
    ),
    alerts as (
        insert into alert_outbox (kind, payload)
        select 'usage.threshold_crossed',
               jsonb_build_object('user_id', c.user_id, 'period', c.period,
                                  'threshold', c.threshold, 'spent_usd', trim_scale(c.spent_usd)::text,
                                  'budget_usd', trim_scale(c.budget_usd)::text)
          from crossings c
        returning 1
    ),
    after as (
        select k.user_id, k.period,
               coalesce(t.effective, u.net_usd) as effective,
               user_budget_usd(k.user_id, s.monthly_budget_usd, k.period) as budget,
               coalesce((select array_agg(c.threshold order by c.threshold) from crossings c
                          where c.user_id = k.user_id and c.period = k.period),
                        '{}') as crossed
          from (select distinct user_id, period from input where known) k
          left join totals t on t.user_id = k.user_id and t.period = k.period
          left join usage_totals u on u.user_id = k.user_id and u.period = k.period
          join users us on us.user_id = k.user_id
          join subscription_tiers s on s.tier = us.tier
    )
    select i.idx,
           case when not i.known then 'unknown_user'
                when i.nth = 1 and exists (select 1 from inserted x
                                           where x.generation_id = i.generation_id)
                    then 'stored'
                else 'duplicate' end,
           i.user_id, i.period, a.effective, a.budget,
           case when i.nth = 1 and exists (select 1 from inserted x
                                           where x.generation_id = i.generation_id)
                then a.crossed else '{}'::integer[] end
      from input i
      left join after a on a.user_id = i.user_id and a.period = i.period
     order by i.idx;
end;
$$;

create or replace function cross_usage_thresholds(p_period date, p_user_id text, p_tier text)
returns integer
language sql
as $$
    with budgets as (
        select t.user_id, t.period, t.net_usd as effective,
               user_budget_usd(t.user_id, s.monthly_budget_usd, t.period) as budget
          from usage_totals t
          join users u on u.user_id = t.user_id
          join subscription_tiers s on s.tier = u.tier
         where t.period = p_period
           and (p_user_id is null or t.user_id = p_user_id)
           and (p_tier is null or u.tier = p_tier)
    ),
    crossings as (
        insert into usage_threshold_crossings (user_id, period, threshold, spent_usd, budget_usd)
        select b.user_id, b.period, th, b.effective, b.budget
          from budgets b cross join unnest(array[50, 80, 100]) th
         where b.budget > 0 and b.effective * 100 >= b.budget * th
        on conflict do nothing
        returning usage_threshold_crossings.*
    ),
    alerts as (
        insert into alert_outbox (kind, payload)
        select 'usage.threshold_crossed',
               jsonb_build_object('user_id', c.user_id, 'period', c.period,
                                  'threshold', c.threshold, 'spent_usd', trim_scale(c.spent_usd)::text,
                                  'budget_usd', trim_scale(c.budget_usd)::text)
          from crossings c
        returning 1
    )
    select count(*)::integer from alerts
$$;

create or replace function store_usage_month(jsonb) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'tier', u.tier,
        'budget_usd', user_budget_usd(u.user_id, t.monthly_budget_usd, ($1 ->> 'period')::date),
        'increases', store_budget_increases(u.user_id, ($1 ->> 'period')::date),
        'months', jsonb_build_array(store_usage_period(u.user_id, ($1 ->> 'period')::date)),
        'last_7_days_usd', (
            select coalesce(sum(e.cost_usd), 0)
            from usage_events e, (select coalesce(($1 ->> 'as_of')::timestamptz, now()) as at) w
            where e.user_id = u.user_id
              and e.period >= date_trunc('month', (w.at - interval '7 days') at time zone 'UTC')::date
              and e.occurred_at > w.at - interval '7 days'
              and e.occurred_at <= w.at
        )
    )
    from users u join subscription_tiers t on t.tier = u.tier
    where u.user_id = $1 ->> 'user_id'
$$;


alter table budget_increases enable row level security;
revoke all on budget_increases from public, anon, authenticated, service_role;
revoke all on sequence budget_increases_id_seq from public, anon, authenticated, service_role;
grant all on budget_increases to service_role;
revoke all on function user_budget_usd(text, numeric, date) from public, anon, authenticated;
grant execute on function user_budget_usd(text, numeric, date) to service_role;
revoke all on function store_budget_increases(text, date) from public, anon, authenticated;
grant execute on function store_budget_increases(text, date) to service_role;

insert into schema_migrations (version, name, checksum) values ('0023', 'budget_increases', '6ece91c546281e3dd7d6670e8f3699031e98aebac8c23bb6692bde34475bc82c')
on conflict (version) do nothing;

-- ===== migration 0024_daily_spend_index.sql =====

-- The users held by their tier's daily cap (GET /api/admin/usage/daily-capped): what each user
-- reported since today's UTC midnight. The ledger's indexes are by user and month; this one is
-- by the moment an event occurred and carries the user and the cost, so a day's spend is one
-- range of it (an index-only scan of the day's events), whatever the size of the month.
create index usage_events_by_occurred_at on usage_events (occurred_at) include (user_id, cost_usd);

insert into schema_migrations (version, name, checksum) values ('0024', 'daily_spend_index', '8dedfe0eb70541fe775c7ae74f20ca32bc44407f83ab5cac9a8795d28f18c441')
on conflict (version) do nothing;

-- ===== migration 0025_budget_increase_idempotency.sql =====

-- A grant answered 503 (its key's limit could not be applied then) is recorded all the same, and
-- its caller is told to retry: with the same Idempotency-Key the retry returns the first grant
-- instead of granting twice (as key creates and rotations do).

alter table budget_increases add column idempotency_key text
    check (idempotency_key is null or length(idempotency_key) between 1 and 255);

create unique index budget_increases_idempotency on budget_increases (granted_by, idempotency_key)
    where idempotency_key is not null;

insert into schema_migrations (version, name, checksum) values ('0025', 'budget_increase_idempotency', '93aa9a83ecba0beb280cb4851b12c2c8968c1be2a2d5c33b08bc9a79b3a1d353')
on conflict (version) do nothing;

commit;
