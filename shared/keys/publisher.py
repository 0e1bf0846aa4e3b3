"""Publishes system keys to AWS Secrets Manager, so their consumers read them from there."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID


class SecretsManagerPublisher:
    """Writes `{prefix}{system name}` on every activation; Secrets Manager keeps the previous
    value as AWSPREVIOUS, which matches our grace period."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def secret_id(self, system_name: str) -> str:
        return f"{self._prefix}{system_name}"

    async def publish(
        self, system_name: str, *, secret: str, key_id: UUID, openrouter_hash: str
    ) -> None:
        value = json.dumps(
            {"key": secret, "key_id": str(key_id), "openrouter_hash": openrouter_hash}
        )
        await asyncio.to_thread(self._put, self.secret_id(system_name), value, str(key_id))

    def _put(self, secret_id: str, value: str, version: str) -> None:
        # The key id as ClientRequestToken makes a repeated publish of the same key a no-op
        # instead of a new version pushing the real previous key out of AWSPREVIOUS.
        try:
            self._client.put_secret_value(
                SecretId=secret_id, SecretString=value, ClientRequestToken=version
            )
        except self._client.exceptions.ResourceNotFoundException:
            self._client.create_secret(
                Name=secret_id, SecretString=value, ClientRequestToken=version
            )
