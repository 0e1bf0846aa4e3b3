"""Direct Postgres transport: connection pool, embedded server, migrations."""
