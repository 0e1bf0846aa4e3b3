"""The encryption master key: ENCRYPTION_MASTER_KEY, or one generated once for development."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from shared.config import Settings

MASTER_KEY_BYTES = 32
MASTER_KEY_FILE_NAME = "master.key"


class MasterKeyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class MasterKey:
    material: bytes
    source: str  # "environment", "generated" or "file": announced at startup, never the value

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r}, material=<redacted>)"


def decode_master_key(encoded: str, origin: str) -> bytes:
    try:
        material = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError(f"{origin} is not valid base64") from exc
    if len(material) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"{origin} must decode to {MASTER_KEY_BYTES} bytes")
    return material


def load_or_generate_master_key(settings: Settings) -> MasterKey:
    """The configured key; in development and tests, a key kept in LOCAL_DATA_DIR/master.key."""
    if settings.encryption_master_key is not None:
        return MasterKey(
            decode_master_key(
                settings.encryption_master_key.get_secret_value(), "ENCRYPTION_MASTER_KEY"
            ),
            "environment",
        )
    if settings.is_production:
        raise MasterKeyError("ENCRYPTION_MASTER_KEY is required in production")
    path: Path = settings.local_data_dir / MASTER_KEY_FILE_NAME
    if path.exists():
        return MasterKey(decode_master_key(path.read_text(), str(path)), "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode()
    # O_EXCL: two processes starting at once must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return MasterKey(decode_master_key(path.read_text(), str(path)), "file")
    with os.fdopen(fd, "w") as handle:
        handle.write(encoded + "\n")
    return MasterKey(base64.b64decode(encoded), "generated")
