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
