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

commit;
