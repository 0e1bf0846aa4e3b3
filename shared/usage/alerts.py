"""Delivery of threshold alerts from the outbox to the webhook: signed, retried, once each.

Alerts are written to the outbox in the same transaction as the crossing that causes them, so
none is lost and none is invented; this job hands them over. A delivery that fails is retried
with exponential backoff; the receiver deduplicates by the alert id it is given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.db.database import Connection
from shared.observability import logger
from shared.runtime import Runtime

if TYPE_CHECKING:
    import httpx

SIGNATURE_HEADER = "X-OpenRouter-Agent-Signature"
_MAX_BACKOFF_S = 3600


@dataclass(frozen=True, slots=True)
class PendingAlert:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int


class OutboxRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def claim_due(self, *, limit: int) -> list[PendingAlert]:
        """Due alerts, locked for this transaction (SKIP LOCKED: parallel jobs split them)."""
        cursor = await self._conn.execute(
            "select id, kind, payload, attempts from alert_outbox"
            " where delivered_at is null and next_attempt_at <= now()"
            " order by id limit %s for update skip locked",
            (limit,),
        )
        return [PendingAlert(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]

    async def delivered(self, alert_id: int) -> None:
        await self._conn.execute(
            "update alert_outbox set delivered_at = now(), attempts = attempts + 1,"
            " last_error = null where id = %s",
            (alert_id,),
        )

    async def failed(self, alert_id: int, *, error: str, retry_in_s: int) -> None:
        await self._conn.execute(
            "update alert_outbox set attempts = attempts + 1, last_error = %s,"
            " next_attempt_at = now() + make_interval(secs => %s) where id = %s",
            (error[:500], retry_in_s, alert_id),
        )


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver_alerts(
    runtime: Runtime, *, batch: int = 100, transport: httpx.AsyncBaseTransport | None = None
) -> int:
    """Hand due alerts to the webhook; the number delivered."""
    settings = runtime.settings
    if settings.alert_webhook_url is None:
        return 0
    import httpx  # only the alert job sends webhooks; other functions never load it

    delivered = 0
    async with (
        httpx.AsyncClient(timeout=5.0, transport=transport) as client,
        runtime.database().connection() as conn,
        conn.transaction(),
    ):
        outbox = OutboxRepository(conn)
        for alert in await outbox.claim_due(limit=batch):
            body = json.dumps(
                {"id": alert.id, "kind": alert.kind, **alert.payload}, sort_keys=True
            ).encode()
            headers = {"Content-Type": "application/json"}
            if settings.alert_webhook_secret is not None:
                headers[SIGNATURE_HEADER] = sign(
                    body, settings.alert_webhook_secret.get_secret_value()
                )
            try:
                response = await client.post(
                    settings.alert_webhook_url, content=body, headers=headers
                )
                response.raise_for_status()
            except httpx.HTTPError as exc:
                retry_in = min(2 ** (alert.attempts + 1) * 30, _MAX_BACKOFF_S)
                await outbox.failed(alert.id, error=type(exc).__name__, retry_in_s=retry_in)
                logger.warning(
                    "alert not delivered",
                    extra={
                        "alert_id": alert.id,
                        "error": type(exc).__name__,
                        "retry_in_s": retry_in,
                    },
                )
                continue
            await outbox.delivered(alert.id)
            delivered += 1
    return delivered
