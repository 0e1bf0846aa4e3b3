-- The monthly job runs on the work queue now (a job named by its period, see 0008); its own
-- run table, with one lease for the whole month's work, is no longer written or read.
drop table usage_period_runs;

-- The monthly job's bulk statement finds current keys not yet in the new period.
create index api_keys_current_by_period on api_keys (limit_period) where state = 'current';
