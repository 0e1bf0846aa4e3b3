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
