"""The tamper-evident audit trail: append-only, hash-chained in the database."""
