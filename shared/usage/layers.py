"""What blocks a key: every budget layer OpenRouter enforces on it, as OpenRouter reports them.

OpenRouter's GET /key, asked with a key itself (not the management key), lists each budget that
applies to that key (`budgets[]`: the guardrails', the workspace's, the key's own limit) with
what was spent in its UTC window and when that window ends. The service opens the key's sealed
secret here only to ask that: the secret is never returned, logged or audited as a reveal (no
caller receives it). The call is one attempt on the process's OpenRouter connection pool and
limiter, bounded by OPENROUTER_TIMEOUT_S; whatever goes wrong becomes a short code beside a null
list (BudgetLayers.error), never an error of the answer that carries it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

import httpx

from shared.crypto.envelope import DecryptionFailed
from shared.db.database import Connection, DatabaseUnavailable
from shared.errors import NotFound
from shared.keys.domain import Owner
from shared.keys.repository import KeyRecord, KeyRepository
from shared.keys.schemas import BudgetLayer, BudgetLayersError, BudgetLayerSource
from shared.keys.store import KeyStore
from shared.observability import logger
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.errors import (
    OpenRouterError,
    OpenRouterInvalidResponse,
    OpenRouterOutcomeUnknown,
    OpenRouterRateLimited,
    OpenRouterServerError,
    OpenRouterUnavailable,
)
from shared.openrouter.models import CurrentKey, KeyBudget
from shared.runtime import Runtime
from shared.usage.tier_policies import TierPolicyRepository

_KEY_REFUSED: Final = frozenset({401, 403, 404})


@dataclass(frozen=True, slots=True)
class BudgetLayers:
    """The layers of one key (None when they could not be read, `error` then says why) and
    the one that refuses requests now."""

    layers: list[BudgetLayer] | None
    blocked_by: BudgetLayer | None = None
    error: BudgetLayersError | None = None

    @classmethod
    def failed(cls, error: BudgetLayersError) -> BudgetLayers:
        return cls(layers=None, error=error)

    @classmethod
    def of(cls, layers: list[BudgetLayer]) -> BudgetLayers:
        """blocked_by: the first layer, in OpenRouter's order of enforcement, with nothing left."""
        blocked = next((layer for layer in layers if layer.remaining_usd <= 0), None)
        return cls(layers=layers, blocked_by=blocked)


NOT_REQUESTED: Final = BudgetLayers.failed("not_requested")


class _Unreadable(Exception):
    def __init__(self, code: BudgetLayersError) -> None:
        super().__init__(code)
        self.code: BudgetLayersError = code


def source_of(budget: KeyBudget, tier_guardrail_id: str | None) -> BudgetLayerSource:
    """What a layer is, in the service's terms: the key's own limit, the user's tier's policy
    (the tier's guardrail), another guardrail, or a workspace budget."""
    if budget.scope == "key_limit":
        return "key_limit"
    if budget.guardrail_id is not None:
        return "tier_policy" if budget.guardrail_id == tier_guardrail_id else "guardrail"
    if budget.scope == "workspace" or budget.budget_id is not None:
        return "workspace"
    return "guardrail"


def layer_of(budget: KeyBudget, tier_guardrail_id: str | None) -> BudgetLayer:
    return BudgetLayer(
        source=source_of(budget, tier_guardrail_id),
        interval=budget.reset_interval,
        limit_usd=budget.limit_usd,
        spent_usd=budget.spend_usd,
        remaining_usd=max(budget.remaining_usd, Decimal(0)),
        resets_at=budget.resets_at,
        scope=budget.scope,
        guardrail_id=budget.guardrail_id,
    )


def layers_of(current: CurrentKey, tier_guardrail_id: str | None) -> BudgetLayers:
    return BudgetLayers.of([layer_of(b, tier_guardrail_id) for b in current.budgets])


async def current_key_as(client: OpenRouterClient, secret: str) -> CurrentKey:
    """GET /key authenticated by `secret` (a user's key), tried once (an extra of an answer,
    not worth its wait). Raises _Unreadable with the reason."""
    try:
        return await client.get_current_key(api_key=secret, retries=0)
    except OpenRouterInvalidResponse as exc:
        raise _Unreadable("openrouter_invalid_response") from exc
    except OpenRouterRateLimited as exc:
        raise _Unreadable("openrouter_rate_limited") from exc
    except OpenRouterUnavailable as exc:
        timed_out = isinstance(exc.__cause__, httpx.TimeoutException)
        raise _Unreadable("openrouter_timeout" if timed_out else "openrouter_unavailable") from exc
    except (OpenRouterServerError, OpenRouterOutcomeUnknown) as exc:
        raise _Unreadable("openrouter_unavailable") from exc
    except OpenRouterError as refused:
        logger.info(
            "openrouter would not read the key's budgets",
            extra={"status": refused.status_code, "openrouter_message": refused.message[:200]},
        )
        if refused.status_code in _KEY_REFUSED:
            raise _Unreadable("key_refused") from refused
        raise _Unreadable("openrouter_error") from refused


class BudgetLayerReader:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._store = KeyStore(runtime)

    async def of_owner(self, owner: Owner) -> BudgetLayers:
        """The layers of the owner's current key ([] without one)."""
        try:
            async with self._runtime.database().connection() as conn:
                key = await KeyRepository(conn).current_key(owner.key)
                guardrail_id = await self._tier_guardrail(conn, key)
        except DatabaseUnavailable:
            return BudgetLayers.failed("database_unavailable")
        if key is None:
            return BudgetLayers(layers=[])
        return await self._read(key, guardrail_id, secret=None)

    async def of_key(self, key: KeyRecord, *, secret: str | None = None) -> BudgetLayers:
        """The layers of this key; `secret` when the caller already opened it."""
        try:
            async with self._runtime.database().connection() as conn:
                guardrail_id = await self._tier_guardrail(conn, key)
        except DatabaseUnavailable:
            return BudgetLayers.failed("database_unavailable")
        return await self._read(key, guardrail_id, secret=secret)

    @staticmethod
    async def _tier_guardrail(conn: Connection, key: KeyRecord | None) -> str | None:
        if key is None or key.user_id is None:
            return None  # a system key has no tier
        return await TierPolicyRepository(conn).guardrail_of_owner(key.owner)

    async def _read(
        self, key: KeyRecord, tier_guardrail_id: str | None, *, secret: str | None
    ) -> BudgetLayers:
        if key.disabled:
            return BudgetLayers.failed("key_disabled")  # OpenRouter answers 401 for it
        try:
            if secret is None:
                secret = self._store.open_secret(key)  # not a reveal: nobody receives it
            timeout_s = self._runtime.settings.openrouter_timeout_s
            async with asyncio.timeout(timeout_s):  # the limiter's queue included
                current = await current_key_as(self._runtime.openrouter(), secret)
        except _Unreadable as unreadable:
            return BudgetLayers.failed(unreadable.code)
        except TimeoutError:
            return BudgetLayers.failed("openrouter_timeout")
        except DecryptionFailed:
            return BudgetLayers.failed("key_material_unreadable")
        except NotFound:
            return BudgetLayers.failed("key_has_no_secret")
        except Exception as exc:  # an extra of the answer: never its failure
            logger.warning(
                "reading the key's budget layers failed",
                extra={"key_id": str(key.id), "error": type(exc).__name__},
            )
            return BudgetLayers.failed("internal_error")
        return layers_of(current, tier_guardrail_id)
