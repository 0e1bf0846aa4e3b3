-- One work queue for all bulk work, worked by a fleet of invocations that shares OpenRouter.
--
-- 1. Items come in phases: an item of a later phase is claimed only once every item of the
--    job's earlier phases has been tried (done, parked, or waiting for its retry), so an
--    emergency blocks every key in scope before it replaces any, and a reconcile has read
--    every page before it concludes. An item may carry a payload, and keeps its handler's
--    result (what a job's report is made of).
-- 2. Jobs have a priority: a worker takes the most urgent job with work first (an emergency
--    before the month's rotation).
-- 3. Emergency rotations run on this queue: their items are work items; the per-key outcome
--    (blocked, its measured time to revoke, replaced, failed) stays in
--    emergency_rotation_items, which loses its own claims, leases and attempts.
-- 4. The fleet's share of OpenRouter: how many calls at once OpenRouter takes (learned from its
--    429s, additive increase and multiplicative decrease) is one figure for every invocation,
--    divided among the workers alive, instead of each taking the whole allowance.

alter table work_items
    add column phase smallint not null default 0 check (phase between 0 and 9),
    add column payload jsonb not null default '{}'::jsonb,
    add column result jsonb;
alter table work_jobs
    add column priority smallint not null default 0 check (priority between 0 and 9);

drop index work_items_claimable;
create index work_items_claimable on work_items (job_id, phase, available_at)
    where status = 'pending';
create index work_jobs_running on work_jobs (priority desc, created_at) where status = 'running';

create or replace function claim_work_items(
    p_job_id uuid, p_worker text, p_limit integer, p_lease_seconds integer
) returns setof work_items
language sql
as $$
    with gate as (
        -- the lowest phase with an item not tried yet, or being tried now: later phases wait
        select min(phase) as open_phase from work_items
        where job_id = p_job_id and status = 'pending'
          and (attempts = 0 or lease_until >= now())
    ),
    claimable as (
        select w.job_id, w.item from work_items w, gate
        where w.job_id = p_job_id and w.status = 'pending' and w.available_at <= now()
          and (w.lease_until is null or w.lease_until < now())
          and (gate.open_phase is null or w.phase <= gate.open_phase)
        order by w.phase, w.available_at, w.item
        limit p_limit
        for update of w skip locked
    )
    update work_items w
    set leased_by = p_worker,
        lease_until = now() + make_interval(secs => p_lease_seconds),
        attempts = w.attempts + 1
    from claimable c
    where w.job_id = c.job_id and w.item = c.item
    returning w.*
$$;

drop function complete_work_item(uuid, text, text);
-- Done, by the worker holding the lease, with what its handler found; false if it no longer
-- holds it (another worker took the item when the lease ran out), so it is completed once.
create function complete_work_item(p_job_id uuid, p_item text, p_worker text, p_result jsonb)
returns boolean
language sql
as $$
    with done as (
        update work_items
        set status = 'done', finished_at = now(), lease_until = null, last_error = null,
            result = p_result
        where job_id = p_job_id and item = p_item and status = 'pending'
          and leased_by = p_worker and lease_until >= now()
        returning 1
    )
    select exists (select 1 from done)
$$;

-- The running jobs with an item due now, most urgent first: what a worker looks for.
create function work_jobs_due(p_limit integer) returns setof work_jobs
language sql stable
as $$
    select j.* from work_jobs j
    where j.status = 'running' and exists (
        select 1 from work_items i
        where i.job_id = j.id and i.status = 'pending' and i.available_at <= now()
          and (i.lease_until is null or i.lease_until < now()))
    order by j.priority desc, j.created_at
    limit p_limit
$$;

-- Emergency rotations on the queue. A rotation still running when this migration runs is
-- carried over: its open keys become items of its job, tried afresh.
alter table emergency_rotations add column job_id uuid references work_jobs (id);
insert into work_jobs (kind, name, status, max_attempts, priority, created_by, created_at)
select 'emergency_rotation', r.id::text, 'running', 12, 9, r.requested_by, r.created_at
from emergency_rotations r where r.status = 'running';
update emergency_rotations r set job_id = j.id
from work_jobs j where j.kind = 'emergency_rotation' and j.name = r.id::text;
insert into work_items (job_id, item, phase)
select r.job_id, 'revoke:' || i.key_id, 0
from emergency_rotation_items i join emergency_rotations r on r.id = i.rotation_id
where r.status = 'running' and i.status = 'pending';
insert into work_items (job_id, item, phase)
select distinct r.job_id, 'replace:' || i.owner, 1
from emergency_rotation_items i join emergency_rotations r on r.id = i.rotation_id
where r.status = 'running' and i.status in ('pending', 'disabled');
alter table emergency_rotation_items drop column attempts, drop column lease_until;
create index emergency_rotation_items_owner on emergency_rotation_items (rotation_id, owner);

create table openrouter_fleet (
    id boolean primary key default true check (id),
    allowance integer not null check (allowance >= 1),
    successes integer not null default 0,
    resume_at timestamptz not null default now(),
    throttles bigint not null default 0,
    updated_at timestamptz not null default now()
);

create table openrouter_fleet_workers (
    worker text primary key check (length(worker) between 1 and 100),
    lease_until timestamptz not null
);

-- A worker's share of the fleet's allowance, after reporting what it saw since it last asked:
-- p_successes calls that OpenRouter took, and whether it answered 429 (then the allowance
-- drops by a quarter, and every worker waits out its Retry-After: a gentler cut than halving,
-- since a fleet's 429s mostly come from a worker joining before the others took their
-- smaller share, not from OpenRouter lowering what it takes). A run of successes as long as the
-- allowance earns one more call at once, up to p_max (OPENROUTER_MAX_CONCURRENCY). The share
-- is the allowance divided among the workers alive (at least one call each); p_leave takes the
-- worker out. resume_at names the pause still to wait out, so that a worker waits each once. One row, updated in one statement: concurrent workers queue on it briefly.
create function openrouter_fleet_share(
    p_worker text, p_max integer, p_lease_seconds integer, p_successes integer,
    p_throttled boolean, p_retry_after_s numeric, p_leave boolean
) returns table (share integer, allowance integer, workers integer, resume_in_s numeric,
                 resume_at timestamptz)
language plpgsql
as $$
declare
    fleet openrouter_fleet;
    alive integer;
begin
    insert into openrouter_fleet (allowance) values (p_max) on conflict (id) do nothing;
    update openrouter_fleet f set
        -- One cut per pause: the workers that saw the same burst of 429s report it each, and
        -- a 429 while the fleet already waits out a Retry-After is that burst.
        allowance = least(p_max, case
            when p_throttled and f.resume_at > now() then f.allowance
            when p_throttled then greatest(1, f.allowance * 3 / 4)
            when f.successes + p_successes >= f.allowance then f.allowance + 1
            else f.allowance end),
        successes = case
            when p_throttled then 0
            when f.successes + p_successes >= f.allowance then 0
            else f.successes + p_successes end,
        resume_at = case when p_throttled
            then greatest(f.resume_at, now() + make_interval(secs => p_retry_after_s))
            else f.resume_at end,
        throttles = f.throttles + p_throttled::integer,
        updated_at = now()
    returning * into fleet;
    if p_leave then
        delete from openrouter_fleet_workers where worker = p_worker;
    else
        insert into openrouter_fleet_workers (worker, lease_until)
        values (p_worker, now() + make_interval(secs => p_lease_seconds))
        on conflict (worker) do update set lease_until = excluded.lease_until;
    end if;
    delete from openrouter_fleet_workers where lease_until < now();
    select count(*) into alive from openrouter_fleet_workers;
    return query select
        greatest(1, fleet.allowance / greatest(alive, 1)),
        fleet.allowance,
        alive,
        greatest(0, extract(epoch from fleet.resume_at - now()))::numeric,
        fleet.resume_at;
end
$$;

alter table openrouter_fleet enable row level security;
alter table openrouter_fleet_workers enable row level security;
revoke all on openrouter_fleet, openrouter_fleet_workers from public, anon, authenticated;
grant all on openrouter_fleet, openrouter_fleet_workers to service_role;
revoke all on function complete_work_item(uuid, text, text, jsonb), work_jobs_due(integer),
    openrouter_fleet_share(text, integer, integer, integer, boolean, numeric, boolean)
    from public, anon, authenticated;
grant execute on function complete_work_item(uuid, text, text, jsonb), work_jobs_due(integer),
    openrouter_fleet_share(text, integer, integer, integer, boolean, numeric, boolean)
    to service_role;
