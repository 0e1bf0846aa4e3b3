"""Response bodies of the health group. Money is a decimal string: exact, never a float."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from shared.money import Usd


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
    service: str
    version: str
    group: str
    started_at: datetime
    uptime_s: float


class DatabaseHealth(BaseModel):
    status: Literal["ok"] = "ok"
    transport: Literal["postgres", "supabase"]
    latency_ms: float
    server_version: str
    migration_version: str | None
    expected_migration_version: str | None


class CreditsSummary(BaseModel):
    total_credits: Usd
    total_usage: Usd
    balance: Usd


class KeysHealth(BaseModel):
    status: Literal["ok"] = "ok"
    provider: Literal["openrouter", "emulator"]
    is_management_key: bool
    latency_ms: float
    credits: CreditsSummary | None
    credits_error: str | None = None
