"""Key material protection: the master key (local or KMS) and envelope encryption."""
