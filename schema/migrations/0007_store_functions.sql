-- The store contract: the operations of the request hot path (usage logging and reading,
-- service-token authentication, rate limits, the health probe) as SQL functions that take one
-- JSON object and return JSON. Both transports call exactly these: the direct one as
-- `select store_x($1::jsonb)`, the Supabase one as POST /rest/v1/rpc/store_x (PostgREST hands a
-- function with a single unnamed jsonb parameter the request body as it is). One call is one
-- transaction and one round trip either way, and money travels as JSON numbers, which keep every
-- digit of a numeric.

create function store_record_usage_events(jsonb) returns jsonb
language sql
as $$
    select coalesce(jsonb_agg(to_jsonb(r) order by r.idx), '[]'::jsonb)
    from record_usage_events($1 -> 'events', $1 ->> 'recorded_by') r
$$;

-- One user's book of one period: totals, breakdown by model and agent, thresholds crossed.
create function store_usage_period(p_user_id text, p_period date) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'period', p_period,
        'spent_usd', coalesce(tot.spent_usd, 0),
        'adjusted_usd', coalesce(tot.adjusted_usd, 0),
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

-- One period's book of one user: null for an unknown user.
create function store_usage_month(jsonb) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'tier', u.tier,
        'budget_usd', t.monthly_budget_usd,
        'months', jsonb_build_array(store_usage_period(u.user_id, ($1 ->> 'period')::date))
    )
    from users u join subscription_tiers t on t.tier = u.tier
    where u.user_id = $1 ->> 'user_id'
$$;

-- Up to `limit` periods with a book, newest first, strictly before `before` when given.
create function store_usage_history(jsonb) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'tier', u.tier,
        'budget_usd', t.monthly_budget_usd,
        'months', coalesce((
            select jsonb_agg(store_usage_period(u.user_id, p.period) order by p.period desc)
            from (
                select period from usage_totals
                where user_id = u.user_id
                  and (($1 ->> 'before') is null or period < ($1 ->> 'before')::date)
                order by period desc
                limit ($1 ->> 'limit')::integer
            ) p
        ), '[]'::jsonb)
    )
    from users u join subscription_tiers t on t.tier = u.tier
    where u.user_id = $1 ->> 'user_id'
$$;

-- The token's row (without its hash) if it is valid, else null; `token_hash` is hex.
create function store_authenticate_service_token(jsonb) returns jsonb
language sql
as $$
    select to_jsonb(s) - 'token_hash'
    from authenticate_service_token(decode($1 ->> 'token_hash', 'hex')) s
$$;

create function store_consume_rate_limit(jsonb) returns jsonb
language sql
as $$
    select to_jsonb(r)
    from consume_rate_limit(
        $1 ->> 'bucket', ($1 ->> 'limit')::integer, ($1 ->> 'window_seconds')::integer) r
$$;

-- Definer: the migrations table belongs to whoever migrates, not to the service role.
create function store_probe(jsonb) returns jsonb
language plpgsql stable security definer
set search_path = public, pg_temp
as $$
declare
    v_version text;
begin
    if to_regclass('public.schema_migrations') is not null then
        execute 'select max(version) from schema_migrations' into v_version;
    end if;
    return jsonb_build_object(
        'server_version', current_setting('server_version'),
        'migration_version', v_version);
end
$$;

revoke all on function store_record_usage_events(jsonb), store_usage_month(jsonb),
    store_usage_history(jsonb), store_usage_period(text, date),
    store_authenticate_service_token(jsonb), store_consume_rate_limit(jsonb), store_probe(jsonb)
    from public, anon, authenticated;
grant execute on function store_record_usage_events(jsonb), store_usage_month(jsonb),
    store_usage_history(jsonb), store_usage_period(text, date),
    store_authenticate_service_token(jsonb), store_consume_rate_limit(jsonb), store_probe(jsonb)
    to service_role;
