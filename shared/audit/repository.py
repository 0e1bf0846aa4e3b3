"""All SQL of the audit trail. Rows are appended inside the caller's transaction, so the audit
row and the change it describes commit or roll back together."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.db.database import Connection
from shared.money import usd_text


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int
    occurred_at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    reason: str | None
    request_id: str | None
    fingerprint: str | None
    details: dict[str, Any]
    actor_name: str | None = None  # a service token's name, for an actor that is one


@dataclass(frozen=True, slots=True)
class ChainVerification:
    rows_checked: int
    broken_seq: int | None
    problem: str | None


class AuditRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def append(
        self,
        *,
        actor: str,
        action: str,
        target: str | None,
        outcome: str = "ok",
        reason: str | None = None,
        request_id: str | None = None,
        fingerprint: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        await self._conn.execute(
            "insert into audit_log"
            " (actor, action, target, outcome, reason, request_id, fingerprint, details)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
            (
                actor,
                action,
                target,
                outcome,
                reason,
                request_id,
                fingerprint,
                json.dumps(details or {}, default=_json_value),
            ),
        )

    async def recent(self, *, limit: int, before_seq: int | None = None) -> list[AuditEvent]:
        cursor = await self._conn.execute(
            "select a.seq, a.occurred_at, a.actor, a.action, a.target, a.outcome, a.reason,"
            " a.request_id, a.fingerprint, a.details, t.name as actor_name from audit_log a"
            " left join service_tokens t on t.id = case when a.actor ~ '^service:[0-9a-f-]{36}$'"
            "  then substr(a.actor, 9)::uuid end"
            " where %s::bigint is null or a.seq < %s::bigint order by a.seq desc limit %s",
            (before_seq, before_seq, limit),
        )
        return [AuditEvent(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]

    async def verify(self) -> ChainVerification:
        cursor = await self._conn.execute(
            "select broken_seq, problem, rows_checked from verify_audit_chain()"
        )
        row = await cursor.fetchone()
        assert row is not None
        return ChainVerification(
            rows_checked=int(row["rows_checked"] or 0),  # type: ignore[call-overload]
            broken_seq=None if row["broken_seq"] is None else int(row["broken_seq"]),  # type: ignore[call-overload]
            problem=None if row["problem"] is None else str(row["problem"]),
        )


def _json_value(value: object) -> str:
    """Amounts in audit details are written as in every response ("6.3", never "6.300000")."""
    if isinstance(value, Decimal):
        return usd_text(value)
    raise TypeError(f"audit details cannot hold a {type(value).__name__}")
