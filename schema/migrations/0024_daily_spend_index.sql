-- The users held by their tier's daily cap (GET /api/admin/usage/daily-capped): what each user
-- reported since today's UTC midnight. The ledger's indexes are by user and month; this one is
-- by the moment an event occurred and carries the user and the cost, so a day's spend is one
-- range of it (an index-only scan of the day's events), whatever the size of the month.
create index usage_events_by_occurred_at on usage_events (occurred_at) include (user_id, cost_usd);
