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

-- Records one event: the event row, the total, the breakdown and any threshold crossing, in
-- one transaction (the caller's). A generation id seen before changes nothing.
create function record_usage_event(
    p_user_id text,
    p_generation_id text,
    p_model text,
    p_agent_name text,
    p_endpoint text,
    p_prompt_tokens integer,
    p_completion_tokens integer,
    p_cost_usd numeric,
    p_duration_ms integer,
    p_occurred_at timestamptz,
    p_recorded_by text
)
returns table (status text, period date, spent_usd numeric, budget_usd numeric,
               crossed integer[])
language plpgsql
as $$
#variable_conflict use_column
declare
    v_period date := date_trunc('month', p_occurred_at at time zone 'UTC')::date;
    v_event_id bigint;
    v_total usage_totals;
    v_budget numeric;
    v_crossed integer[] := '{}';
    v_threshold integer;
    v_inserted boolean;
begin
    -- Lock the user's book first: every writer waits on user rows, in the order the caller
    -- sorted its events, and never on an event row while holding a user row (no deadlock).
    insert into usage_totals (user_id, period) values (p_user_id, v_period)
        on conflict do nothing;
    select * into v_total from usage_totals
     where user_id = p_user_id and period = v_period for update;

    insert into usage_events (user_id, generation_id, period, model, agent_name, endpoint,
                              prompt_tokens, completion_tokens, cost_usd, duration_ms,
                              occurred_at, recorded_by)
    values (p_user_id, p_generation_id, v_period, p_model, p_agent_name, p_endpoint,
            p_prompt_tokens, p_completion_tokens, p_cost_usd, p_duration_ms,
            p_occurred_at, p_recorded_by)
    on conflict (generation_id) do nothing
    returning id into v_event_id;

    select t.monthly_budget_usd into v_budget
      from users u join subscription_tiers t on t.tier = u.tier where u.user_id = p_user_id;

    if v_event_id is null then
        return query select 'duplicate'::text, v_period, usage_effective(v_total), v_budget,
            v_crossed;
        return;
    end if;

    update usage_totals set spent_usd = spent_usd + p_cost_usd, events = events + 1,
                            updated_at = now()
     where user_id = p_user_id and period = v_period
    returning * into v_total;

    insert into usage_breakdown as b (user_id, period, model, agent_name, cost_usd, events,
                                      prompt_tokens, completion_tokens)
    values (p_user_id, v_period, p_model, coalesce(p_agent_name, ''), p_cost_usd, 1,
            p_prompt_tokens, p_completion_tokens)
    on conflict (user_id, period, model, agent_name) do update
        set cost_usd = b.cost_usd + excluded.cost_usd, events = b.events + 1,
            prompt_tokens = b.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = b.completion_tokens + excluded.completion_tokens;

    if v_budget is not null and v_budget > 0 then
        foreach v_threshold in array array[50, 80, 100] loop
            if usage_effective(v_total) * 100 >= v_budget * v_threshold then
                insert into usage_threshold_crossings (user_id, period, threshold, spent_usd,
                                                       budget_usd)
                values (p_user_id, v_period, v_threshold, usage_effective(v_total), v_budget)
                on conflict do nothing
                returning true into v_inserted;
                if v_inserted then
                    v_crossed := v_crossed || v_threshold;
                    insert into alert_outbox (kind, payload)
                    values ('usage.threshold_crossed', jsonb_build_object(
                        'user_id', p_user_id, 'period', v_period, 'threshold', v_threshold,
                        'spent_usd', usage_effective(v_total)::text,
                        'budget_usd', v_budget::text));
                end if;
                v_inserted := null;
            end if;
        end loop;
    end if;

    return query select 'stored'::text, v_period, usage_effective(v_total), v_budget, v_crossed;
end;
$$;

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

-- A batch in one round trip. No subtransaction per event: a thousand of them in one
-- transaction overflow PostgreSQL's subtransaction cache and slow every concurrent snapshot.
-- Events are validated before they get here; if the database still refuses one, the whole
-- batch rolls back and the caller replays it event by event to say which.
create function record_usage_events(p_events jsonb, p_recorded_by text)
returns table (idx integer, status text, reason text, user_id text, period date,
               spent_usd numeric, budget_usd numeric, crossed integer[])
language sql
as $$
    select (e.ordinality - 1)::integer, r.status, null::text, e.value ->> 'user_id',
           r.period, r.spent_usd, r.budget_usd, r.crossed
      from jsonb_array_elements(p_events) with ordinality e
      cross join lateral record_usage_event(
          e.value ->> 'user_id', e.value ->> 'generation_id', e.value ->> 'model',
          e.value ->> 'agent_name', e.value ->> 'endpoint',
          (e.value ->> 'prompt_tokens')::integer, (e.value ->> 'completion_tokens')::integer,
          (e.value ->> 'cost_usd')::numeric, (e.value ->> 'duration_ms')::integer,
          (e.value ->> 'occurred_at')::timestamptz, p_recorded_by) r
     order by e.ordinality;
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
revoke all on function record_usage_event(text, text, text, text, text, integer, integer,
    numeric, integer, timestamptz, text) from public, anon, authenticated;
grant execute on function record_usage_event(text, text, text, text, text, integer, integer,
    numeric, integer, timestamptz, text) to service_role;
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
