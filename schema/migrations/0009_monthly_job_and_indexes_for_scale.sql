-- The monthly job runs on the work queue now (a job named by its period, see 0008); its own
-- run table, with one lease for the whole month's work, is no longer written or read.
drop table usage_period_runs;

-- The monthly job's bulk statement finds current keys not yet in the new period.
create index api_keys_current_by_period on api_keys (limit_period) where state = 'current';

-- GET /api/admin/keys pages newest first by keyset (created_at, id): an index walk, not a sort
-- of every key, at 100,000 users.
create index api_keys_newest_first on api_keys (created_at desc, id desc);
