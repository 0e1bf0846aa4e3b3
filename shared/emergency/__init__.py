"""Emergency rotation: revoke first, then replace, for a user, a tier, chosen keys or all."""
