"""Masks secrets in any text that leaves the process: log lines, error messages, tracebacks."""

from __future__ import annotations

import re

# OpenRouter secrets are sk-or-v1-<64 hex>; match any sk-or- token so older or future formats
# are covered too. Our service tokens (ora_st_...) wherever they stand, and bearer credentials
# of any kind (JWTs, cron secrets) are masked whole.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"sk-or-[A-Za-z0-9_\-]{4,}"), "sk-or-***"),
    (re.compile(r"ora_st_[A-Za-z0-9]{4,}"), "ora_st_***"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+"), r"\1 ***"),
)


def redact(text: str) -> str:
    """Return text with every secret-shaped substring replaced by a mask."""
    for pattern, mask in _PATTERNS:
        text = pattern.sub(mask, text)
    return text
