-- Temporary budget increases (issue 19): an admin (or the users:write scope) grants a user an
-- extra amount for this month or until a date, with a reason. Each grant is a row here, never an
-- edit; it counts in the user's budget of every month it overlaps while it lasts, and stops
-- counting when it ends (ends_at). One function says what a user's budget is in a month,
-- user_budget_usd, and every reader of the budget in the database uses it: the thresholds
-- crossed when usage is logged or a budget changes, and the user's month. The keys' limits read
-- it through the same function (shared/keys/repository.py), so a grant reaches the key at once,
-- survives a rotation (the new key's limit is what the budget leaves) and lapses with the grant
-- (the advance job applies the budget again to users whose grant just ended).

create table budget_increases (
    id bigint generated always as identity primary key,
    user_id text not null references users (user_id),
    amount_usd numeric not null check (amount_usd > 0 and amount_usd <= 10000000),
    starts_period date not null check (extract(day from starts_period) = 1),
    ends_at timestamptz not null,
    reason text not null check (length(reason) between 3 and 500),
    granted_by text not null,
    granted_at timestamptz not null default now(),
    -- the advance job set the user's keys to the budget without it, once it ended
    lapse_applied_at timestamptz,
    check (ends_at > granted_at)
);

create index budget_increases_user on budget_increases (user_id, starts_period);
create index budget_increases_lapsing on budget_increases (ends_at) where lapse_applied_at is null;

-- The user's budget in a month: the tier's (null: unlimited) plus every grant that overlaps the
-- month and has not ended by the month's end, or by now for the month under way.
create function user_budget_usd(p_user_id text, p_tier_budget numeric, p_period date)
returns numeric
language sql stable
as $$
    select case when p_tier_budget is null then null else p_tier_budget + coalesce((
        select sum(i.amount_usd) from budget_increases i
         where i.user_id = p_user_id
           and i.starts_period <= p_period
           and i.ends_at > least(now(), (p_period + interval '1 month')::timestamptz)
    ), 0) end
$$;

-- The grants that count in a user's month, for the user's usage answer.
create function store_budget_increases(p_user_id text, p_period date) returns jsonb
language sql stable
as $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', i.id, 'amount_usd', trim_scale(i.amount_usd)::text, 'ends_at', i.ends_at,
               'reason', i.reason, 'granted_by', i.granted_by, 'granted_at', i.granted_at)
               order by i.ends_at), '[]'::jsonb)
      from budget_increases i
     where i.user_id = p_user_id
       and i.starts_period <= p_period
       and i.ends_at > least(now(), (p_period + interval '1 month')::timestamptz)
$$;

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
        select t.user_id, t.period, t.effective,
               user_budget_usd(t.user_id, s.monthly_budget_usd, t.period) as budget
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
               user_budget_usd(k.user_id, s.monthly_budget_usd, k.period) as budget,
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
        select t.user_id, t.period, t.net_usd as effective,
               user_budget_usd(t.user_id, s.monthly_budget_usd, t.period) as budget
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

create or replace function store_usage_month(jsonb) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'tier', u.tier,
        'budget_usd', user_budget_usd(u.user_id, t.monthly_budget_usd, ($1 ->> 'period')::date),
        'increases', store_budget_increases(u.user_id, ($1 ->> 'period')::date),
        'months', jsonb_build_array(store_usage_period(u.user_id, ($1 ->> 'period')::date)),
        'last_7_days_usd', (
            select coalesce(sum(e.cost_usd), 0)
            from usage_events e, (select coalesce(($1 ->> 'as_of')::timestamptz, now()) as at) w
            where e.user_id = u.user_id
              and e.period >= date_trunc('month', (w.at - interval '7 days') at time zone 'UTC')::date
              and e.occurred_at > w.at - interval '7 days'
              and e.occurred_at <= w.at
        )
    )
    from users u join subscription_tiers t on t.tier = u.tier
    where u.user_id = $1 ->> 'user_id'
$$;


alter table budget_increases enable row level security;
revoke all on budget_increases from public, anon, authenticated, service_role;
revoke all on sequence budget_increases_id_seq from public, anon, authenticated, service_role;
grant all on budget_increases to service_role;
revoke all on function user_budget_usd(text, numeric, date) from public, anon, authenticated;
grant execute on function user_budget_usd(text, numeric, date) to service_role;
revoke all on function store_budget_increases(text, date) from public, anon, authenticated;
grant execute on function store_budget_increases(text, date) to service_role;
