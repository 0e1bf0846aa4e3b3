-- A user's month, with the pace a forecast can trust: what their events cost over the seven
-- days before `as_of` (default now), across the month's start, so that on the 1st the pace is
-- last week's and a first hour's spend is one day's in seven, not a month's. Reads at most
-- two periods of one user's events (the index on user and period).
create or replace function store_usage_month(jsonb) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'tier', u.tier,
        'budget_usd', t.monthly_budget_usd,
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
