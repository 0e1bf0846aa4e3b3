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
