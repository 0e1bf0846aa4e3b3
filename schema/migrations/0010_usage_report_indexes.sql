-- The system-wide month report at 100,000 users: its top users and the users over 80 and 100
-- percent of their budget are read from this index (the month's books by effective spend,
-- highest first) instead of sorting every user's book.
create index usage_totals_by_effective_spend
    on usage_totals (period, (greatest(spent_usd + adjusted_usd, 0)) desc, user_id);
