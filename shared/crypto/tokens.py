"""Service tokens: a recognisable prefix, random body and checksum; stored only as an HMAC.

    ora_st_<37 base62 characters><6 base62 characters of CRC32(body)>

The prefix lets secret scanners (and our own log redaction) find a leaked token; the checksum
lets us refuse a mistyped or made-up token without a database round trip.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib

# The public prefix that secret scanners look for; not itself a secret.
SERVICE_TOKEN_PREFIX = "ora_st_"  # nosec B105
_ALPHABET = string.digits + string.ascii_letters
_BODY_LENGTH = 37
_CHECKSUM_LENGTH = 6
SERVICE_TOKEN_LENGTH = len(SERVICE_TOKEN_PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(_ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def generate_service_token() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    return SERVICE_TOKEN_PREFIX + body + _checksum(body)


def looks_like_service_token(token: str) -> bool:
    return token.startswith(SERVICE_TOKEN_PREFIX)


def has_valid_checksum(token: str) -> bool:
    if len(token) != SERVICE_TOKEN_LENGTH or not looks_like_service_token(token):
        return False
    body = token[len(SERVICE_TOKEN_PREFIX) : -_CHECKSUM_LENGTH]
    return all(c in _ALPHABET for c in body) and hmac.compare_digest(
        token[-_CHECKSUM_LENGTH:], _checksum(body)
    )


def token_hint(token: str) -> str:
    """Enough of the token for a person to tell two apart in a list; never enough to use."""
    return token[: len(SERVICE_TOKEN_PREFIX) + 4] + "..." + token[-4:]


def derive_token_hmac_key(master_key: bytes) -> bytes:
    """A key for token hashes only, derived from the master key (one secret to manage)."""
    # Imported here, like every use of cryptography: a cold start loads it only when needed.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"openrouter-agent/service-token-hmac/v1",
    ).derive(master_key)


def hash_service_token(token: str, hmac_key: bytes) -> bytes:
    return hmac.new(hmac_key, token.encode(), hashlib.sha256).digest()
