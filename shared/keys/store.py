"""Data access shared by the key service and the operation saga: transactions, reads, secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from uuid import UUID

from shared.audit.repository import AuditRepository
from shared.crypto.envelope import secret_context
from shared.errors import NotFound
from shared.keys.domain import Owner
from shared.keys.repository import KeyRecord, KeyRepository, OperationRecord
from shared.runtime import Runtime
from shared.users.repository import UserRepository


class KeyStore:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[tuple[KeyRepository, AuditRepository]]:
        """One transaction: the change and its audit row commit together or not at all."""
        async with self._runtime.database().connection() as conn, conn.transaction():
            yield KeyRepository(conn), AuditRepository(conn)

    @asynccontextmanager
    async def transaction_with_users(
        self,
    ) -> AsyncIterator[tuple[KeyRepository, AuditRepository, UserRepository]]:
        """One transaction that also writes the key's owner (a create for a new user)."""
        async with self._runtime.database().connection() as conn, conn.transaction():
            yield KeyRepository(conn), AuditRepository(conn), UserRepository(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[KeyRepository]:
        async with self._runtime.database().connection() as conn:
            yield KeyRepository(conn)

    def name_for(self, key_id: UUID) -> str:
        """The key's name at OpenRouter: our prefix and its id, so it can always be found."""
        return f"{self._runtime.settings.openrouter_key_name_prefix}-{key_id}"

    async def budget_of(self, keys: KeyRepository, owner: Owner) -> Decimal | None:
        if owner.user_id is not None:
            return await keys.monthly_budget_of_user(owner.user_id)
        return self._runtime.settings.system_key_monthly_budget_usd

    def open_secret(self, key: KeyRecord) -> str:
        if key.sealed is None:
            raise NotFound("this key has no secret", code="key_has_no_secret")
        return self._runtime.sealer().open(key.sealed, secret_context(key.owner, key.id))

    async def get_key(self, key_id: UUID) -> KeyRecord:
        async with self.read() as keys:
            key = await keys.get_key(key_id)
        if key is None:
            raise NotFound("no key has this id", code="key_not_found")
        return key

    async def get_operation(self, operation_id: UUID) -> OperationRecord:
        async with self.read() as keys:
            operation = await keys.get_operation(operation_id)
        if operation is None:
            raise NotFound("no key operation has this id", code="operation_not_found")
        return operation
