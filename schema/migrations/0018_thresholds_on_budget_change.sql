-- A budget that shrinks under what a user already spent crosses thresholds too: a downgrade or
-- a lower tier amount must alert at 80 % and 100 % as spending would have. Called in the
-- transaction that changes the tier or its amount; each threshold is still crossed at most
-- once per user and month (the primary key of usage_threshold_crossings).
create function cross_usage_thresholds(p_period date, p_user_id text, p_tier text)
returns integer
language sql
as $$
    with budgets as (
        select t.user_id, t.period, greatest(t.spent_usd + t.adjusted_usd, 0) as effective,
               s.monthly_budget_usd as budget
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
                                  'threshold', c.threshold, 'spent_usd', c.spent_usd::text,
                                  'budget_usd', c.budget_usd::text)
          from crossings c
        returning 1
    )
    select count(*)::integer from alerts
$$;

revoke all on function cross_usage_thresholds(date, text, text) from public, anon, authenticated;
grant execute on function cross_usage_thresholds(date, text, text) to service_role;
