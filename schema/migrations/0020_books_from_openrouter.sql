-- Spend as OpenRouter counts it: the books hold what OpenRouter counted, not only what services
-- reported.
--
-- A user's month now has, beside the reported events (spent_usd) and the resets (adjusted_usd):
-- counted_usd, what OpenRouter counted on the user's keys this month (every key: the current
-- one, those in their grace period, those rotated out and deleted), written by the sync job
-- (shared/usage/sync.py) from the keys' monthly counters; and corrected_usd, corrections of
-- reported costs found wrong (0 until verification corrects one). The books' gross is what the
-- events say, corrected, or what OpenRouter counted if that is more: the part no reported event
-- explains is unreported_usd, a figure the database derives, so a report arriving after the
-- sync counted its cost shrinks it instead of counting the cost twice, and nothing reported is
-- ever deleted or overwritten. net_usd is what counts against the budget (the gross less the
-- resets, never below zero): every reader of the books, thresholds and reports uses it.

alter table usage_totals
    add column counted_usd numeric not null default 0 check (counted_usd >= 0),
    add column corrected_usd numeric not null default 0,
    add column unreported_usd numeric generated always as
        (greatest(counted_usd - spent_usd - corrected_usd, 0)) stored,
    add column net_usd numeric generated always as
        (greatest(greatest(spent_usd + corrected_usd, counted_usd) + adjusted_usd, 0)) stored;

create or replace function usage_effective(t usage_totals) returns numeric
language sql immutable
as $$ select t.net_usd $$;

drop index usage_totals_by_effective_spend;
create index usage_totals_by_net_spend on usage_totals (period, net_usd desc, user_id);

-- What OpenRouter counted on each of our keys, per UTC month: the sync's evidence, per key.
create table openrouter_key_usage (
    key_id uuid not null references api_keys (id),
    period date not null,
    usage_usd numeric not null check (usage_usd >= 0),
    synced_at timestamptz not null default now(),
    primary key (key_id, period)
);
alter table openrouter_key_usage enable row level security;
revoke all on openrouter_key_usage from public, anon, authenticated;
grant all on openrouter_key_usage to service_role;

-- One page of OpenRouter's listing: each of our keys' counter for the month (p_keys: a JSON
-- array of {"hash", "usage_usd"}), then the month's count of every user those keys belong to,
-- recomputed from every key of theirs: its counter as last read, or for a key deleted since, the
-- larger of that and its final usage. Crosses the thresholds the new count puts behind the
-- spend, with their alerts. Returns the users whose count changed. p_users adds users to
-- recompute although none of their keys is on the page (a key deleted before it was listed).
create function sync_counted_usage(p_period date, p_keys jsonb, p_users text[] default '{}')
returns integer
language plpgsql
as $$
declare
    v_users text[];
    changed integer;
begin
    insert into openrouter_key_usage (key_id, period, usage_usd, synced_at)
    select k.id, p_period, greatest((e.value ->> 'usage_usd')::numeric, 0), now()
      from jsonb_array_elements(p_keys) e
      join api_keys k on k.openrouter_hash = e.value ->> 'hash'
     where k.user_id is not null
    on conflict (key_id, period) do update
        set usage_usd = excluded.usage_usd, synced_at = excluded.synced_at;

    select coalesce(array_agg(distinct u), '{}') into v_users
      from (select k.user_id as u from jsonb_array_elements(p_keys) e
              join api_keys k on k.openrouter_hash = e.value ->> 'hash'
             where k.user_id is not null
            union select unnest(p_users)) s
     where exists (select 1 from users where user_id = s.u);

    insert into usage_totals (user_id, period)
    select u, p_period from unnest(v_users) u
    order by u
    on conflict do nothing;

    with counted as (
        select k.user_id, sum(greatest(
                   coalesce(o.usage_usd, 0),
                   case when k.final_usage_period = p_period
                        then coalesce(k.final_usage_usd, 0) else 0 end)) as usd
          from api_keys k
          left join openrouter_key_usage o on o.key_id = k.id and o.period = p_period
         where k.user_id = any (v_users)
         group by k.user_id
    ),
    updated as (
        update usage_totals t set counted_usd = c.usd, updated_at = now()
          from counted c
         where t.user_id = c.user_id and t.period = p_period and t.counted_usd <> c.usd
        returning 1
    )
    select count(*) into changed from updated;

    perform cross_usage_thresholds(p_period, u, null) from unnest(v_users) u;
    return changed;
end
$$;
revoke all on function sync_counted_usage(date, jsonb, text[]) from public, anon, authenticated;
grant execute on function sync_counted_usage(date, jsonb, text[]) to service_role;

-- Every reader of the books counts net_usd.
create or replace function record_usage_events(p_events jsonb, p_recorded_by text)
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
        returning t.user_id, t.period, t.net_usd as effective
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
                                  'threshold', c.threshold, 'spent_usd', trim_scale(c.spent_usd)::text,
                                  'budget_usd', trim_scale(c.budget_usd)::text)
          from crossings c
        returning 1
    ),
    after as (
        select k.user_id, k.period,
               coalesce(t.effective, u.net_usd) as effective,
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

create or replace function cross_usage_thresholds(p_period date, p_user_id text, p_tier text)
returns integer
language sql
as $$
    with budgets as (
        select t.user_id, t.period, t.net_usd as effective, s.monthly_budget_usd as budget
          from usage_totals t
          join users u on u.user_id = t.user_id
          join subscription_tiers s on s.tier = u.tier
         where t.period = p_period
           and (p_user_id is null or t.user_id = p_user_id)
           and (p_tier is null or u.tier = p_tier)
    ),
    crossings as (
        insert into usage_threshold_crossings (user_id, period, threshold, spent_usd, budget_usd)
        select b.user_id, b.period, th, b.effective, b.budget
          from budgets b cross join unnest(array[50, 80, 100]) th
         where b.budget > 0 and b.effective * 100 >= b.budget * th
        on conflict do nothing
        returning usage_threshold_crossings.*
    ),
    alerts as (
        insert into alert_outbox (kind, payload)
        select 'usage.threshold_crossed',
               jsonb_build_object('user_id', c.user_id, 'period', c.period,
                                  'threshold', c.threshold, 'spent_usd', trim_scale(c.spent_usd)::text,
                                  'budget_usd', trim_scale(c.budget_usd)::text)
          from crossings c
        returning 1
    )
    select count(*)::integer from alerts
$$;

-- A user's book of a period, with what was reported, corrected, counted and left unreported.
create or replace function store_usage_period(p_user_id text, p_period date) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'period', p_period,
        'spent_usd', coalesce(tot.spent_usd, 0),
        'adjusted_usd', coalesce(tot.adjusted_usd, 0),
        'counted_usd', coalesce(tot.counted_usd, 0),
        'corrected_usd', coalesce(tot.corrected_usd, 0),
        'unreported_usd', coalesce(tot.unreported_usd, 0),
        'events', coalesce(tot.events, 0),
        'breakdown', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'model', b.model, 'agent_name', b.agent_name, 'cost_usd', b.cost_usd,
                       'events', b.events, 'prompt_tokens', b.prompt_tokens,
                       'completion_tokens', b.completion_tokens)
                   order by b.cost_usd desc, b.model, b.agent_name)
            from usage_breakdown b where b.user_id = p_user_id and b.period = p_period
        ), '[]'::jsonb),
        'crossed', coalesce((
            select jsonb_agg(c.threshold order by c.threshold)
            from usage_threshold_crossings c where c.user_id = p_user_id and c.period = p_period
        ), '[]'::jsonb)
    )
    from (select 1) one
    left join usage_totals tot on tot.user_id = p_user_id and tot.period = p_period
$$;
