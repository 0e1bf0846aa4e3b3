-- Scheduled rotation policy per user. System keys are always rotated monthly.
--   monthly:   the schedule rotates the user's key once each UTC month
--   on_demand: rotated only when asked (or in an emergency)
--   never:     the same for the schedule; kept apart so that intent is recorded

alter table users add column rotation_policy text not null default 'on_demand'
    check (rotation_policy in ('never', 'monthly', 'on_demand'));
