-- Reported costs verified against OpenRouter's own record of each generation (GET /generation).
--
-- Every reported event is checked once, asynchronously, by the verification job
-- (shared/usage/verification.py): its state goes from pending to verified (OpenRouter's cost is
-- the reported one), mismatch (it is not: the difference is a correction), foreign (the
-- generation was made on another user's key: none of it is this user's spend, so the whole
-- reported cost is corrected away) or unverifiable (OpenRouter never found the generation within
-- the give-up time: the reported cost stands, and the state says it was never confirmed).
-- OpenRouter's cost is kept beside the reported one, which is never overwritten. A correction is
-- kept as evidence in usage_corrections and added to usage_totals.corrected_usd of the event's
-- user and month, which every reader of the books counts (net_usd, 0020).

alter table usage_events
    add column verify_state text not null default 'pending'
        check (verify_state in ('pending', 'verified', 'mismatch', 'foreign', 'unverifiable')),
    add column openrouter_cost_usd numeric,
    add column verify_attempts integer not null default 0 check (verify_attempts >= 0),
    add column verify_next_at timestamptz not null default now(),
    add column verified_at timestamptz;

-- The job's pick: the pending events due first, from a small partial index.
create index usage_events_verify_due on usage_events (verify_next_at, id)
    where verify_state = 'pending';

-- The month report's count of events flagged foreign or given up: a few, from a small index.
create index usage_events_unconfirmed on usage_events (period, verify_state)
    where verify_state in ('foreign', 'unverifiable');

-- The evidence of every correction: one per event at most (the constraint is the guarantee that
-- verifying an event twice never corrects it twice).
create table usage_corrections (
    id bigint generated always as identity primary key,
    event_id bigint not null unique references usage_events (id),
    user_id text not null references users (user_id),
    period date not null,
    generation_id text not null,
    reported_usd numeric not null,
    openrouter_usd numeric not null,
    correction_usd numeric not null,
    reason text not null check (reason in ('mismatch', 'foreign')),
    generation_user text,  -- whose key OpenRouter says made it (external_user), if known
    created_at timestamptz not null default now()
);

create index usage_corrections_period on usage_corrections (period, user_id);

-- One verification outcome, with its correction, in one transaction. p_found: OpenRouter had
-- the generation (then p_openrouter_cost is its cost and p_generation_user its external user);
-- not found (404: not ready yet, or unknown) tries again later, backing off from p_retry_s
-- (doubling, at most 15 minutes, never past the give-up time), and gives up once p_give_up_s
-- have passed since the event was recorded. A correction of |amount| >= p_alert_usd queues a
-- usage.cost_mismatch alert. Returns the event's new state, 'not_ready', or 'unchanged' for an
-- event no longer pending (verified before, by this run or another): nothing changes then.
create function record_usage_verification(
    p_event_id bigint, p_found boolean, p_openrouter_cost numeric, p_generation_user text,
    p_now timestamptz, p_retry_s numeric, p_give_up_s numeric, p_alert_usd numeric)
returns text
language plpgsql
as $$
declare
    v_event usage_events;
    v_state text;
    v_correction numeric;
    v_deadline timestamptz;
begin
    select * into v_event from usage_events where id = p_event_id for update;
    if not found or v_event.verify_state <> 'pending' then
        return 'unchanged';
    end if;

    if not p_found then
        v_deadline := v_event.recorded_at + make_interval(secs => p_give_up_s);
        if p_now >= v_deadline then
            update usage_events
               set verify_state = 'unverifiable', verify_attempts = verify_attempts + 1,
                   verified_at = p_now
             where id = p_event_id;
            return 'unverifiable';
        end if;
        update usage_events
           set verify_attempts = verify_attempts + 1,
               verify_next_at = least(
                   p_now + make_interval(secs => least(
                       p_retry_s * power(2, least(v_event.verify_attempts, 20)), 900)),
                   v_deadline)
         where id = p_event_id;
        return 'not_ready';
    end if;

    -- Every key we make names its user (external.user): a generation naming none was made on
    -- a system key or a key not ours, so it is no more this user's than another user's.
    if p_generation_user is null or p_generation_user <> v_event.user_id then
        v_state := 'foreign';
        v_correction := -v_event.cost_usd;  -- not this user's spend
    elsif p_openrouter_cost <> v_event.cost_usd then
        v_state := 'mismatch';
        v_correction := p_openrouter_cost - v_event.cost_usd;
    else
        v_state := 'verified';
        v_correction := 0;
    end if;

    update usage_events
       set verify_state = v_state, openrouter_cost_usd = p_openrouter_cost,
           verify_attempts = verify_attempts + 1, verified_at = p_now
     where id = p_event_id;
    if v_state = 'verified' then
        return v_state;
    end if;

    insert into usage_corrections (event_id, user_id, period, generation_id, reported_usd,
                                   openrouter_usd, correction_usd, reason, generation_user,
                                   created_at)
    values (v_event.id, v_event.user_id, v_event.period, v_event.generation_id,
            v_event.cost_usd, p_openrouter_cost, v_correction,
            case when v_state = 'foreign' then 'foreign' else 'mismatch' end,
            p_generation_user, p_now)
    on conflict (event_id) do nothing;
    if not found then
        return 'unchanged';
    end if;

    if v_correction <> 0 then
        insert into usage_totals (user_id, period) values (v_event.user_id, v_event.period)
            on conflict do nothing;
        update usage_totals
           set corrected_usd = corrected_usd + v_correction, updated_at = now()
         where user_id = v_event.user_id and period = v_event.period;
        perform cross_usage_thresholds(v_event.period, v_event.user_id, null);
        if abs(v_correction) >= p_alert_usd then
            insert into alert_outbox (kind, payload)
            values ('usage.cost_mismatch', jsonb_build_object(
                'user_id', v_event.user_id, 'period', v_event.period,
                'generation_id', v_event.generation_id, 'outcome', v_state,
                'reported_usd', trim_scale(v_event.cost_usd)::text,
                'openrouter_usd', trim_scale(p_openrouter_cost)::text,
                'correction_usd', trim_scale(v_correction)::text,
                'generation_user', p_generation_user));
        end if;
    end if;
    return v_state;
end
$$;

alter table usage_corrections enable row level security;
revoke all on usage_corrections from public, anon, authenticated, service_role;
revoke all on sequence usage_corrections_id_seq from public, anon, authenticated, service_role;
grant all on usage_corrections to service_role;
revoke all on function record_usage_verification(bigint, boolean, numeric, text, timestamptz,
    numeric, numeric, numeric) from public, anon, authenticated;
grant execute on function record_usage_verification(bigint, boolean, numeric, text, timestamptz,
    numeric, numeric, numeric) to service_role;
