"""Envelope encryption of key material.

Each secret is sealed with AES-256-GCM under a fresh 256-bit data key; the data key is wrapped
by a key provider (the local master key, or AWS KMS). Both layers bind the same context (owner,
key id, purpose) as associated data, so a sealed secret copied onto another key's row does not
open. Rotating the master key re-wraps data keys; the sealed secrets stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from shared.errors import InternalError

_NONCE_BYTES = 12
_WRAP_VERSION = b"\x01"


class DecryptionFailed(InternalError):
    """A sealed secret did not open: wrong row, wrong key, or tampered bytes."""

    code = "key_material_unreadable"


def _aad(context: Mapping[str, str]) -> bytes:
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()


class KeyProvider(Protocol):
    """Wraps and unwraps data keys; `name` says which provider (and which key) wrapped one."""

    @property
    def name(self) -> str: ...

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes: ...


class LocalKeyProvider:
    """AES-256-GCM key wrapping under a local master key (development, tests, self-hosting)."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(master_key)
        # Names the master key without revealing it, so rows say which key wrapped them.
        self._name = "local:" + hashlib.sha256(b"key-id" + master_key).hexdigest()[:12]

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"LocalKeyProvider({self._name})"

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _WRAP_VERSION + nonce + self._aead.encrypt(nonce, data_key, _aad(context))

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        if not wrapped.startswith(_WRAP_VERSION):
            raise DecryptionFailed("unknown wrapping format")
        nonce, sealed = wrapped[1 : 1 + _NONCE_BYTES], wrapped[1 + _NONCE_BYTES :]
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(nonce, sealed, _aad(context))
        except InvalidTag as exc:
            raise DecryptionFailed("the data key does not open under this context") from exc


class KmsKeyProvider:
    """AWS KMS key wrapping; the context becomes KMS's EncryptionContext (it is logged by
    CloudTrail, which is why it holds ids only)."""

    def __init__(self, key_id: str, client: Any) -> None:
        self._key_id = key_id
        self._client = client

    @property
    def name(self) -> str:
        return f"kms:{self._key_id}"

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> bytes:
        response = self._client.encrypt(
            KeyId=self._key_id, Plaintext=data_key, EncryptionContext=dict(context)
        )
        return bytes(response["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self._client.decrypt(
                KeyId=self._key_id, CiphertextBlob=wrapped, EncryptionContext=dict(context)
            )
        except ClientError as exc:
            raise DecryptionFailed("KMS refused to unwrap the data key") from exc
        return bytes(response["Plaintext"])


@dataclass(frozen=True, slots=True)
class SealedSecret:
    ciphertext: bytes
    nonce: bytes
    wrapped_data_key: bytes
    provider: str

    def __repr__(self) -> str:
        return f"SealedSecret(provider={self.provider!r}, {len(self.ciphertext)} bytes)"


def secret_context(owner: str, key_id: UUID) -> dict[str, str]:
    return {"purpose": "openrouter-key", "owner": owner, "key_id": str(key_id)}


def fingerprint(secret: str) -> str:
    """A stable, non-reversible name for a secret, for audit rows and support."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


class SecretSealer:
    def __init__(self, current: KeyProvider, previous: Sequence[KeyProvider] = ()) -> None:
        self.current = current
        self._by_name = {p.name: p for p in (*previous, current)}

    def seal(self, secret: str, context: Mapping[str, str]) -> SealedSecret:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, secret.encode(), _aad(context))
        return SealedSecret(
            ciphertext=ciphertext,
            nonce=nonce,
            wrapped_data_key=self.current.wrap(data_key, context),
            provider=self.current.name,
        )

    def open(self, sealed: SealedSecret, context: Mapping[str, str]) -> str:
        provider = self._by_name.get(sealed.provider)
        if provider is None:
            raise DecryptionFailed(f"no configured key provider is {sealed.provider!r}")
        data_key = provider.unwrap(sealed.wrapped_data_key, context)
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, _aad(context)).decode()
        except InvalidTag as exc:
            raise DecryptionFailed("the secret does not open under this context") from exc

    def rewrap(self, sealed: SealedSecret, context: Mapping[str, str]) -> SealedSecret:
        """The same sealed secret with its data key wrapped by the current provider."""
        if sealed.provider == self.current.name:
            return sealed
        provider = self._by_name.get(sealed.provider)
        if provider is None:
            raise DecryptionFailed(f"no configured key provider is {sealed.provider!r}")
        data_key = provider.unwrap(sealed.wrapped_data_key, context)
        return SealedSecret(
            ciphertext=sealed.ciphertext,
            nonce=sealed.nonce,
            wrapped_data_key=self.current.wrap(data_key, context),
            provider=self.current.name,
        )
