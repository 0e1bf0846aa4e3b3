-- The usage ledger: exact books per user and UTC month. Events are append-only; a reset is an
-- adjustment entry; totals and breakdowns change in the same statement as the event that
-- moves them, so concurrent writers never lose an update.

create table usage_events (
    id bigint generated always as identity primary key,
    user_id text not null references users (user_id),
    -- OpenRouter's generation id: the idempotency key of an event
    generation_id text not null unique check (length(generation_id) between 1 and 200),
    period date not null,
    model text not null,
    agent_name text,
    endpoint text,
    prompt_tokens integer not null check (prompt_tokens >= 0),
    completion_tokens integer not null check (completion_tokens >= 0),
    cost_usd numeric not null check (cost_usd >= 0 and cost_usd <= 100000),
    duration_ms integer check (duration_ms is null or duration_ms >= 0),
    occurred_at timestamptz not null,
    recorded_at timestamptz not null default now(),
    recorded_by text not null
);

create index usage_events_user_period on usage_events (user_id, period);

-- Resets and corrections. Never deleted; a reset is a negative amount.
create table usage_adjustments (
    id bigint generated always as identity primary key,
    user_id text not null references users (user_id),
    period date not null,
    amount_usd numeric not null,
    reason text not null check (length(reason) between 3 and 500),
    actor text not null,
    created_at timestamptz not null default now()
);

create index usage_adjustments_user_period on usage_adjustments (user_id, period);

-- The book: one row per user and month.
create table usage_totals (
    user_id text not null references users (user_id),
    period date not null,
    spent_usd numeric not null default 0,
    adjusted_usd numeric not null default 0,
    events bigint not null default 0,
    updated_at timestamptz not null default now(),
    primary key (user_id, period)
);

create index usage_totals_period on usage_totals (period, user_id);

-- Breakdowns by model and agent, kept with the book for reports that stay fast at scale.
create table usage_breakdown (
    user_id text not null references users (user_id),
    period date not null,
    model text not null,
    agent_name text not null default '',
    cost_usd numeric not null default 0,
    events bigint not null default 0,
    prompt_tokens bigint not null default 0,
    completion_tokens bigint not null default 0,
    primary key (user_id, period, model, agent_name)
);

create index usage_breakdown_period on usage_breakdown (period);

-- Each threshold is crossed at most once per user and month: the constraint is the guarantee.
create table usage_threshold_crossings (
    user_id text not null references users (user_id),
    period date not null,
    threshold integer not null check (threshold in (50, 80, 100)),
    crossed_at timestamptz not null default now(),
    spent_usd numeric not null,
    budget_usd numeric not null,
    primary key (user_id, period, threshold)
);

-- Alerts wait here until the delivery job has handed them to the webhook.
create table alert_outbox (
    id bigint generated always as identity primary key,
    kind text not null,
    payload jsonb not null,
    created_at timestamptz not null default now(),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    delivered_at timestamptz,
    last_error text
);

create index alert_outbox_due on alert_outbox (next_attempt_at) where delivered_at is null;

-- The monthly job's runs: one row per period, so that it applies once however often it is
-- invoked; the lease lets exactly one invocation work, and the checkpoint says how far it got.
create table usage_period_runs (
    period date primary key,
    status text not null check (status in ('running', 'done')),
    checkpoint_owner text,
    keys_restored integer not null default 0,
    lease_until timestamptz,
    started_at timestamptz not null default now(),
    completed_at timestamptz
);

-- Drift between OpenRouter's counters and the ledger, per user and month, as last measured by
-- the drift job; only drift beyond the tolerance is kept.
create table usage_drift (
    user_id text not null references users (user_id),
    period date not null,
    openrouter_usd numeric not null,
    ledger_usd numeric not null,
    drift_usd numeric not null,
    measured_at timestamptz not null default now(),
    primary key (user_id, period)
);

-- The effective spend of a total row: events less resets.
create function usage_effective(t usage_totals) returns numeric
language sql immutable
as $$ select greatest(t.spent_usd + t.adjusted_usd, 0) $$;

-- A reset: an adjustment that brings this month's effective spend back to zero. Nothing is
-- deleted; the adjustment is in the ledger's history. Returns the amount applied (0 when
-- there was nothing to reset).
create function reset_usage(p_user_id text, p_period date, p_reason text, p_actor text)
returns numeric
language plpgsql
as $$
declare
    v_total usage_totals;
    v_amount numeric;
begin
    insert into usage_totals (user_id, period) values (p_user_id, p_period)
        on conflict do nothing;
    select * into v_total from usage_totals
     where user_id = p_user_id and period = p_period for update;
    v_amount := -usage_effective(v_total);
    if v_amount = 0 then
        return 0;
    end if;
    insert into usage_adjustments (user_id, period, amount_usd, reason, actor)
    values (p_user_id, p_period, v_amount, p_reason, p_actor);
    update usage_totals set adjusted_usd = adjusted_usd + v_amount, updated_at = now()
     where user_id = p_user_id and period = p_period;
    return v_amount;
end;
$$;

-- Records a batch of events (one or a thousand) in set-based statements: each event row, the
-- books, the breakdowns and any threshold crossing (with its alert) change together. A
-- generation id seen before, in an earlier call or earlier in this batch, changes nothing.
-- Events of unknown users are reported, not stored.
--
-- Concurrency: the users' book rows are locked first, in (user, period) order, so concurrent
-- batches wait for each other instead of deadlocking, and totals are exact.
create function record_usage_events(p_events jsonb, p_recorded_by text)
returns table (idx integer, status text, user_id text, period date,
               spent_usd numeric, budget_usd numeric, crossed integer[])
language plpgsql
as $$
#variable_conflict use_column
begin
    insert into usage_totals (user_id, period)
    select distinct e.value ->> 'user_id',
           date_trunc('month', (e.value ->> 'occurred_at')::timestamptz at time zone 'UTC')::date
      from jsonb_array_elements(p_events) e
      join users u on u.user_id = e.value ->> 'user_id'
     order by 1, 2
    on conflict do nothing;

    perform 1
       from usage_totals t
       join (select distinct e.value ->> 'user_id' as user_id,
                    date_trunc('month', (e.value ->> 'occurred_at')::timestamptz
                               at time zone 'UTC')::date as period
               from jsonb_array_elements(p_events) e) k
         on k.user_id = t.user_id and k.period = t.period
      order by t.user_id, t.period
        for update of t;

    return query
    with input as (
        select (e.ordinality - 1)::integer as idx,
               e.value ->> 'user_id' as user_id,
               e.value ->> 'generation_id' as generation_id,
               date_trunc('month', (e.value ->> 'occurred_at')::timestamptz
                          at time zone 'UTC')::date as period,
               e.value,
               exists (select 1 from users u where u.user_id = e.value ->> 'user_id') as known,
               row_number() over (partition by e.value ->> 'generation_id'
                                  order by e.ordinality) as nth
          from jsonb_array_elements(p_events) with ordinality e
    ),
    inserted as (
        insert into usage_events (user_id, generation_id, period, model, agent_name, endpoint,
                                  prompt_tokens, completion_tokens, cost_usd, duration_ms,
                                  occurred_at, recorded_by)
        select i.user_id, i.generation_id, i.period, i.value ->> 'model',
               i.value ->> 'agent_name', i.value ->> 'endpoint',
               coalesce((i.value ->> 'prompt_tokens')::integer, 0),
               coalesce((i.value ->> 'completion_tokens')::integer, 0),
               (i.value ->> 'cost_usd')::numeric, (i.value ->> 'duration_ms')::integer,
               (i.value ->> 'occurred_at')::timestamptz, p_recorded_by
          from input i
         where i.known and i.nth = 1
         order by i.idx
        on conflict (generation_id) do nothing
        returning usage_events.generation_id, usage_events.user_id, usage_events.period,
                  usage_events.model, usage_events.agent_name, usage_events.cost_usd,
                  usage_events.prompt_tokens, usage_events.completion_tokens
    ),
    totals as (
        update usage_totals t
           set spent_usd = t.spent_usd + a.cost, events = t.events + a.n, updated_at = now()
          from (select user_id, period, sum(cost_usd) as cost, count(*) as n
                  from inserted group by 1, 2) a
         where t.user_id = a.user_id and t.period = a.period
        returning t.user_id, t.period, greatest(t.spent_usd + t.adjusted_usd, 0) as effective
    ),
    -- PostgreSQL runs every data-modifying CTE to completion, read or not.
    breakdown as (
        insert into usage_breakdown as b (user_id, period, model, agent_name, cost_usd, events,
                                          prompt_tokens, completion_tokens)
        select user_id, period, model, coalesce(agent_name, ''), sum(cost_usd), count(*),
               sum(prompt_tokens), sum(completion_tokens)
          from inserted group by 1, 2, 3, 4
        on conflict (user_id, period, model, agent_name) do update
            set cost_usd = b.cost_usd + excluded.cost_usd, events = b.events + excluded.events,
                prompt_tokens = b.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = b.completion_tokens + excluded.completion_tokens
        returning 1
    ),
    budgets as (
        select t.user_id, t.period, t.effective, s.monthly_budget_usd as budget
          from totals t
          join users u on u.user_id = t.user_id
          join subscription_tiers s on s.tier = u.tier
    ),
    crossings as (
        insert into usage_threshold_crossings (user_id, period, threshold, spent_usd, budget_usd)
        select b.user_id, b.period, th, b.effective, b.budget
          from budgets b cross join unnest(array[50, 80, 100]) th
         where b.budget > 0 and b.effective * 100 >= b.budget * th
        on conflict do nothing
        returning usage_threshold_crossings.user_id, usage_threshold_crossings.period,
                  usage_threshold_crossings.threshold, usage_threshold_crossings.spent_usd,
                  usage_threshold_crossings.budget_usd
    ),
    alerts as (
        insert into alert_outbox (kind, payload)
        select 'usage.threshold_crossed',
               jsonb_build_object('user_id', c.user_id, 'period', c.period,
                                  'threshold', c.threshold, 'spent_usd', c.spent_usd::text,
                                  'budget_usd', c.budget_usd::text)
          from crossings c
        returning 1
    ),
    after as (
        select k.user_id, k.period,
               coalesce(t.effective, greatest(u.spent_usd + u.adjusted_usd, 0)) as effective,
               s.monthly_budget_usd as budget,
               coalesce((select array_agg(c.threshold order by c.threshold) from crossings c
                          where c.user_id = k.user_id and c.period = k.period),
                        '{}') as crossed
          from (select distinct user_id, period from input where known) k
          left join totals t on t.user_id = k.user_id and t.period = k.period
          left join usage_totals u on u.user_id = k.user_id and u.period = k.period
          join users us on us.user_id = k.user_id
          join subscription_tiers s on s.tier = us.tier
    )
    select i.idx,
           case when not i.known then 'unknown_user'
                when i.nth = 1 and exists (select 1 from inserted x
                                           where x.generation_id = i.generation_id)
                    then 'stored'
                else 'duplicate' end,
           i.user_id, i.period, a.effective, a.budget,
           case when i.nth = 1 and exists (select 1 from inserted x
                                           where x.generation_id = i.generation_id)
                then a.crossed else '{}'::integer[] end
      from input i
      left join after a on a.user_id = i.user_id and a.period = i.period
     order by i.idx;
end;
$$;

alter table usage_events enable row level security;
alter table usage_adjustments enable row level security;
alter table usage_totals enable row level security;
alter table usage_breakdown enable row level security;
alter table usage_threshold_crossings enable row level security;
alter table alert_outbox enable row level security;
alter table usage_period_runs enable row level security;
alter table usage_drift enable row level security;

revoke all on usage_events, usage_adjustments, usage_totals, usage_breakdown,
    usage_threshold_crossings, alert_outbox, usage_period_runs, usage_drift from anon,
    authenticated;
grant all on usage_events, usage_adjustments, usage_totals, usage_breakdown,
    usage_threshold_crossings, alert_outbox, usage_period_runs, usage_drift to service_role;
revoke all on function record_usage_events(jsonb, text) from public, anon, authenticated;
revoke all on function reset_usage(text, date, text, text) from public, anon, authenticated;
grant execute on function reset_usage(text, date, text, text) to service_role;
grant execute on function record_usage_events(jsonb, text) to service_role;

-- Signed-in users read their own books.
grant select on usage_totals, usage_breakdown, usage_events, usage_adjustments,
    usage_threshold_crossings to authenticated;
create policy usage_totals_own on usage_totals for select to authenticated
    using (user_id = auth.uid()::text);
create policy usage_breakdown_own on usage_breakdown for select to authenticated
    using (user_id = auth.uid()::text);
create policy usage_events_own on usage_events for select to authenticated
    using (user_id = auth.uid()::text);
create policy usage_adjustments_own on usage_adjustments for select to authenticated
    using (user_id = auth.uid()::text);
create policy usage_threshold_crossings_own on usage_threshold_crossings for select
    to authenticated using (user_id = auth.uid()::text);
