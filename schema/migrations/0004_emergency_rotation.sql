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
