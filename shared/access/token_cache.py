"""A short-lived, per-process memory of authenticated service tokens.

A busy service sends the same token many times a second; checking each one in the database
costs a round trip per request. Remembering a verified token for a few seconds removes it, at
a price stated plainly: a token revoked elsewhere keeps working on other warm instances for at
most `ttl_s` (this instance forgets it at once). An expiring token is never remembered past its
expiry. SERVICE_TOKEN_CACHE_S=0 turns it off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from shared.access.principals import Principal

_MAX_ENTRIES = 10_000


class ServiceTokenCache:
    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: bytes) -> Principal | None:
        if self._ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(token_hash)
            if entry is None:
                return None
            if entry[0] < self._clock():
                del self._entries[token_hash]
                return None
            return entry[1]

    def put(
        self, token_hash: bytes, principal: Principal, *, expires_at: datetime | None = None
    ) -> None:
        """Remember a verified token for the cache's time, or until it expires if sooner: a
        cache may shorten a credential's life, never lengthen it."""
        ttl_s = self._ttl_s
        if expires_at is not None:
            ttl_s = min(ttl_s, (expires_at - datetime.now(UTC)).total_seconds())
        if ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()  # rare; the next requests simply refill it
            self._entries[token_hash] = (self._clock() + ttl_s, principal)

    def forget(self, token_id: str) -> None:
        with self._lock:
            for token_hash, (_, principal) in list(self._entries.items()):
                if principal.id == token_id:
                    del self._entries[token_hash]
