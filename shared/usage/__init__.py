"""The usage ledger: exact books per user and UTC month, budgets, thresholds, resets."""
