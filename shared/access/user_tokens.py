"""Verification of Supabase Auth user JWTs: the legacy HS256 secret and/or the project's JWKS.

Each token's key is chosen by its header before any signature check: HS256 only with the
configured secret, ES256/RS256 only with a JWKS key of that `kid` whose algorithm matches. So
`alg: none`, an HS256 token "signed" with a published public key (HS/RS confusion) and a key id
we never published are all refused, whatever PyJWT would accept.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from shared.errors import ServiceUnavailable, Unauthorized
from shared.observability import logger

if TYPE_CHECKING:
    from jwt import PyJWK

# PyJWT (which loads cryptography) and httpx are imported when the first user token arrives:
# functions called by services alone never pay for them at a cold start.

ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})
_REQUIRED_CLAIMS = ["exp", "sub", "aud"]


class TokenRejected(Unauthorized):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class SigningKeysUnavailable(ServiceUnavailable):
    code = "auth_keys_unavailable"


class JwksCache:
    """The project's published signing keys, fetched with httpx, cached and refreshed.

    Stale keys (older than ttl_s) are refetched; an unknown kid triggers a refetch at most once
    per min_refresh_interval_s, so forged key ids cannot make us hammer the JWKS endpoint.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 600.0,
        min_refresh_interval_s: float = 30.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._ttl_s = ttl_s
        self._min_refresh_interval_s = min_refresh_interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.fetches = 0

    async def key(self, kid: str) -> PyJWK | None:
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at > self._ttl_s
        may_refresh = (
            self._last_attempt is None or now - self._last_attempt >= self._min_refresh_interval_s
        )
        if stale or (kid not in self._keys and may_refresh):
            await self._refresh(force=stale)
        return self._keys.get(kid)

    async def _refresh(self, *, force: bool) -> None:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            now = self._clock()
            # Another request may have refreshed while we waited for the lock.
            if (
                not force
                and self._last_attempt is not None
                and (now - self._last_attempt < self._min_refresh_interval_s)
            ):
                return
            if force and self._fetched_at is not None and now - self._fetched_at <= self._ttl_s:
                return
            self._last_attempt = now
            self.fetches += 1
            import httpx

            try:
                async with httpx.AsyncClient(timeout=self._timeout_s) as client:
                    response = await client.get(self._url)
                    response.raise_for_status()
                    document = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                logger.warning("JWKS fetch failed", extra={"error": type(exc).__name__})
                if not self._keys:
                    raise SigningKeysUnavailable(
                        "the signing keys of user tokens could not be fetched"
                    ) from exc
                return  # keep serving with the keys we have
            self._keys = _parse_jwks(document)
            self._fetched_at = now


def _parse_jwks(document: object) -> dict[str, PyJWK]:
    import jwt

    keys: dict[str, PyJWK] = {}
    entries = document.get("keys") if isinstance(document, Mapping) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kid"), str):
            continue
        try:
            key = jwt.PyJWK(dict(entry))
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            continue  # a key type we do not use (e.g. a symmetric "oct" key) is skipped
        if key.algorithm_name in ASYMMETRIC_ALGORITHMS:
            keys[entry["kid"]] = key
    return keys


@dataclass(frozen=True, slots=True)
class VerifiedUser:
    user_id: str
    claims: dict[str, Any]


class UserTokenVerifier:
    def __init__(
        self,
        *,
        hs256_secret: str | None,
        jwks: JwksCache | None,
        issuer: str | None,
        audience: str,
        leeway_s: float = 30.0,
    ) -> None:
        self._hs256_secret = hs256_secret
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s

    @property
    def configured(self) -> bool:
        return self._hs256_secret is not None or self._jwks is not None

    async def _key_for(self, header: Mapping[str, Any]) -> Any:
        algorithm = header.get("alg")
        if algorithm == "HS256" and self._hs256_secret is not None:
            return self._hs256_secret
        if algorithm in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid or len(kid) > 200:
                raise TokenRejected("token_key_unknown", "the token names no known signing key")
            key = await self._jwks.key(kid)
            if key is None:
                raise TokenRejected("token_key_unknown", "the token names no known signing key")
            if key.algorithm_name != algorithm:
                raise TokenRejected(
                    "token_algorithm_refused", "the token's algorithm does not match its key"
                )
            return key.key
        raise TokenRejected(
            "token_algorithm_refused", f"tokens signed with {algorithm!r} are refused"
        )

    async def verify(self, token: str) -> VerifiedUser:
        if not self.configured:
            raise TokenRejected("user_auth_not_configured", "user tokens are not accepted here")
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected("token_invalid", "the token is not a valid JWT") from exc
        key = await self._key_for(header)
        options: dict[str, Any] = {"require": [*_REQUIRED_CLAIMS]}
        if self._issuer is not None:
            options["require"].append("iss")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(header["alg"])],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options=cast(Any, options),
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("token_expired", "the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenRejected("token_not_yet_valid", "the token is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected(
                "token_audience_invalid", "the token is for another audience"
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("token_issuer_invalid", "the token is from another issuer") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected(
                "token_invalid", "the token's signature or claims are invalid"
            ) from exc
        try:
            user_id = str(uuid.UUID(str(claims["sub"])))
        except ValueError as exc:
            raise TokenRejected("token_invalid", "the token's subject is not a user id") from exc
        return VerifiedUser(user_id=user_id, claims=claims)


def claim_at(claims: Mapping[str, Any], dotted_path: str) -> Any:
    """The value at a dotted path such as app_metadata.role, or None."""
    value: Any = claims
    for part in dotted_path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
