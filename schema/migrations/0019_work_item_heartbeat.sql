-- Short leases on work items, renewed while their worker lives; items whose worker died.
--
-- A worker now holds an item for a short lease (QueueSettings.lease_s, 15 s) and renews the
-- leases of every item it holds (claimed and not started, or running) every few seconds, in one
-- statement (shared/jobs/queue.py). So a worker that dies (kill -9, a platform timeout) gives
-- its items back within seconds instead of after its whole budget plus a margin (75 s), and a
-- live worker keeps an item however long it runs. Completion and failure still require the
-- lease (0017's complete_work_item, 0008's fail_work_item): a worker whose lease was taken over
-- is refused.
--
-- 1. An item whose lease ran out while its worker had not ended it (the worker died on it) was
--    never tried to the end: it now keeps the later phases closed, as an untried item does,
--    until a worker tries it again. A lapsed lease counted as tried before, so one claim took
--    the dead worker's item and the next phase's items together and ran them side by side.
--    (complete, fail and release clear lease_until: a lease still set and past is a dead one.)
-- 2. Such an item, if the dead worker was on its last attempt, is parked (worker_lost) instead
--    of run again: an item that kills every worker taking it must not do so forever, nor keep,
--    by 1., the later phases closed forever.

create or replace function claim_work_items(
    p_job_id uuid, p_worker text, p_limit integer, p_lease_seconds integer
) returns setof work_items
language sql
as $$
    with lost as (
        select w.job_id, w.item from work_items w join work_jobs j on j.id = w.job_id
        where w.job_id = p_job_id and w.status = 'pending' and w.lease_until < now()
          and w.attempts >= j.max_attempts
        for update of w skip locked
    )
    update work_items w
    set status = 'parked', finished_at = now(), lease_until = null,
        last_error = 'worker_lost: its worker stopped during its last attempt'
    from lost
    where w.job_id = lost.job_id and w.item = lost.item;

    with gate as (
        -- the lowest phase with an item not tried yet, being tried now, or whose try was cut
        -- off (its worker died: its lease ran out, still set): later phases wait
        select min(phase) as open_phase from work_items
        where job_id = p_job_id and status = 'pending'
          and (attempts = 0 or lease_until is not null)
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
    returning w.*;
$$;
