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
