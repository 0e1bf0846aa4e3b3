"""The jobs themselves, shared by the HTTP cron routes and the Lambda schedule handlers."""

from __future__ import annotations

from shared.access.service import AccessService
from shared.observability import logger
from shared.runtime import Runtime


async def prune_rate_limits(runtime: Runtime) -> int:
    """Delete rate-limit windows that have ended; they count nothing any more."""
    pruned = await AccessService(runtime).prune_rate_limits()
    logger.info("rate-limit windows pruned", extra={"pruned": pruned})
    return pruned


async def advance_key_operations(runtime: Runtime) -> int:
    """Resume crashed key operations and finish rotations whose grace period has ended."""
    from shared.keys.service import KeyLifecycleService

    advanced = await KeyLifecycleService(runtime).advance_due_operations()
    logger.info("key operations advanced", extra={"advanced": advanced})
    return advanced
