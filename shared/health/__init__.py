"""Health group: liveness, database and OpenRouter management-key checks."""
