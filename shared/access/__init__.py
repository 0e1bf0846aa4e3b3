"""Access control: who the caller is (users, services, cron) and what each route allows."""
