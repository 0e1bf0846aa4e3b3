"""Reading and verifying the audit trail."""

from __future__ import annotations

from shared.audit.repository import AuditEvent, AuditRepository, ChainVerification
from shared.runtime import Runtime


async def verify_chain(runtime: Runtime) -> ChainVerification:
    async with runtime.database().connection() as conn:
        return await AuditRepository(conn).verify()


async def recent_events(
    runtime: Runtime, *, limit: int, before_seq: int | None
) -> list[AuditEvent]:
    async with runtime.database().connection() as conn:
        return await AuditRepository(conn).recent(limit=limit, before_seq=before_seq)
