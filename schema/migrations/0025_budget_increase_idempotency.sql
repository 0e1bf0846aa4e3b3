-- A grant answered 503 (its key's limit could not be applied then) is recorded all the same, and
-- its caller is told to retry: with the same Idempotency-Key the retry returns the first grant
-- instead of granting twice (as key creates and rotations do).

alter table budget_increases add column idempotency_key text
    check (idempotency_key is null or length(idempotency_key) between 1 and 255);

create unique index budget_increases_idempotency on budget_increases (granted_by, idempotency_key)
    where idempotency_key is not null;
