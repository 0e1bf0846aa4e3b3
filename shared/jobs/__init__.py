"""Scheduled jobs: run by Vercel crons over HTTP (CRON_SECRET) or by EventBridge directly."""
