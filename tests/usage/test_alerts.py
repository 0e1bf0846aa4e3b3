"""Threshold alerts reach the webhook once each, signed, and are retried when it fails."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import pytest
import respx
from pydantic import SecretStr

from shared.config import Settings
from shared.db.database import Database
from shared.openrouter.client import OpenRouterClient
from shared.runtime import Runtime
from shared.usage.alerts import SIGNATURE_HEADER, deliver_alerts
from shared.usage.service import UsageService
from shared.users.repository import UserRepository

WEBHOOK = "https://alerts.platform.test/hooks/openrouter-agent"
SECRET = "webhook-signing-secret-0123456789"


@pytest.fixture
async def alerting(settings: Settings, openrouter: OpenRouterClient) -> AsyncIterator[Runtime]:
    runtime = Runtime(
        settings.model_copy(
            update={"alert_webhook_url": WEBHOOK, "alert_webhook_secret": SecretStr(SECRET)}
        ),
        openrouter=openrouter,
    )
    yield runtime
    await runtime.database().close()


async def _cross_thresholds(runtime: Runtime, database: Database) -> None:
    async with database.connection() as conn:
        await UserRepository(conn).upsert("alerted", tier="free", rotation_policy=None, actor="t")
    await UsageService(runtime).log(
        [
            {"user_id": "alerted", "generation_id": f"a{i}", "model": "m", "cost_usd": "3"}
            for i in range(4)
        ],
        actor="platform",
    )


async def test_each_alert_is_delivered_once_and_signed(
    alerting: Runtime, database: Database
) -> None:
    await _cross_thresholds(alerting, database)
    with respx.mock(assert_all_called=False) as mock:
        webhook = mock.post(WEBHOOK).respond(204)
        first = await deliver_alerts(alerting)
        second = await deliver_alerts(alerting)
    received = [call.request for call in webhook.calls]

    assert (first, second) == (3, 0)
    bodies = [json.loads(r.content) for r in received]
    assert sorted(b["threshold"] for b in bodies) == [50, 80, 100]
    for request in received:
        expected = (
            "sha256=" + hmac.new(SECRET.encode(), request.content, hashlib.sha256).hexdigest()
        )
        assert request.headers[SIGNATURE_HEADER] == expected


async def test_a_failing_webhook_is_retried_later(alerting: Runtime, database: Database) -> None:
    await _cross_thresholds(alerting, database)
    with respx.mock(assert_all_called=False) as mock:
        mock.post(WEBHOOK).respond(503)
        assert await deliver_alerts(alerting) == 0
        mock.post(WEBHOOK).respond(204)
        assert await deliver_alerts(alerting) == 0  # not due yet: backoff
    async with database.connection() as conn:
        await conn.execute("update alert_outbox set next_attempt_at = now()")
        with respx.mock(assert_all_called=False) as mock:
            mock.post(WEBHOOK).respond(204)
            assert await deliver_alerts(alerting) == 3
        cursor = await conn.execute(
            "select attempts, delivered_at is not null as done from alert_outbox"
        )
        assert {(r["attempts"], r["done"]) for r in await cursor.fetchall()} == {(2, True)}
