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
