"""Test signing keys and token makers, standing in for a Supabase project's Auth server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PROJECT_URL = "https://project.supabase.test"
ISSUER = f"{PROJECT_URL}/auth/v1"
JWKS_URL = f"{ISSUER}/.well-known/jwks.json"
HS256_SECRET = "legacy-jwt-secret-of-the-test-project-0123456789"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any

    def public_jwk(self) -> dict[str, Any]:
        codec = ECAlgorithm if self.algorithm == "ES256" else RSAAlgorithm
        jwk: dict[str, Any] = json.loads(codec.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def new_es256_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def new_rs256_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class AuthServer:
    """The project's published keys (what the JWKS endpoint serves) and a token minter."""

    published: list[SigningKey] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.published]}

    def claims(self, user_id: str | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": user_id or str(uuid.uuid4()),
            "aud": "authenticated",
            "iss": ISSUER,
            "role": "authenticated",
            "iat": now,
            "exp": now + 3600,
            "app_metadata": {"provider": "email"},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, **claims: Any) -> str:
        key = key or self.published[0]
        return jwt.encode(
            self.claims(**claims),
            key.private_key,
            algorithm=key.algorithm,
            headers={"kid": key.kid},
        )

    def hs256_token(self, secret: str = HS256_SECRET, **claims: Any) -> str:
        return jwt.encode(self.claims(**claims), secret, algorithm="HS256")


def forge(header: dict[str, Any], claims: dict[str, Any], signing_input_key: bytes | None) -> str:
    """A token assembled by hand, as an attacker would: any header, any HMAC key, or none."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    if signing_input_key is None:
        return signing_input + "."
    signature = hmac.new(signing_input_key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)
