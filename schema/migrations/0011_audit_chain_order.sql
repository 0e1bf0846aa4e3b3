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
