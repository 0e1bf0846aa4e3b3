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
