-- What a reset gives back to the budget, beside what it adjusts in the books. A reset brings
-- the month's books back to zero (the ledger's figure); it may give the budget back at most
-- what OpenRouter counted as spent: the whole budget again, never more, even when a service
-- reported more than it spent. The owner's next tend, under its lease, reads what was spent
-- and sets the effect; until then the reset gives nothing back.
alter table usage_adjustments add column budget_effect_usd numeric;
update usage_adjustments set budget_effect_usd = amount_usd;
comment on column usage_adjustments.budget_effect_usd is
    'The adjustment''s effect on the budget: a reset gives back at most what OpenRouter had '
    'counted as spent. Null until the owner''s keys were tended after it.';
