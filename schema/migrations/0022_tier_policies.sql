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
