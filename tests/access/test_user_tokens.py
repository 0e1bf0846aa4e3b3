"""User JWTs: valid ones from every configured key pass; every attack and mistake is a 401."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
import respx

from shared.access.user_tokens import (
    JwksCache,
    SigningKeysUnavailable,
    TokenRejected,
    UserTokenVerifier,
)
from shared.config import Settings
from shared.runtime import Runtime
from tests.access.signing import (
    HS256_SECRET,
    ISSUER,
    JWKS_URL,
    AuthServer,
    SigningKey,
    forge,
)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def verifier(jwks_endpoint: respx.Route, clock: ManualClock) -> UserTokenVerifier:
    return UserTokenVerifier(
        hs256_secret=HS256_SECRET,
        jwks=JwksCache(JWKS_URL, ttl_s=600, min_refresh_interval_s=30, clock=clock),
        issuer=ISSUER,
        audience="authenticated",
    )


async def _rejection(verifier: UserTokenVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as rejected:
        await verifier.verify(token)
    assert rejected.value.status_code == 401
    return rejected.value.code


@pytest.mark.parametrize("key_name", ["es", "rs"])
async def test_tokens_signed_by_published_keys_are_accepted(
    verifier: UserTokenVerifier,
    auth_server: AuthServer,
    signing_keys: dict[str, SigningKey],
    key_name: str,
) -> None:
    user_id = str(uuid.uuid4())
    verified = await verifier.verify(auth_server.token(signing_keys[key_name], user_id=user_id))
    assert verified.user_id == user_id


async def test_legacy_hs256_tokens_are_accepted(
    verifier: UserTokenVerifier, auth_server: AuthServer
) -> None:
    user_id = str(uuid.uuid4())
    assert (await verifier.verify(auth_server.hs256_token(user_id=user_id))).user_id == user_id


async def test_alg_none_is_refused(verifier: UserTokenVerifier, auth_server: AuthServer) -> None:
    token = forge({"alg": "none", "typ": "JWT"}, auth_server.claims(), None)
    assert await _rejection(verifier, token) == "token_algorithm_refused"


async def test_hs256_signed_with_the_published_public_key_is_refused(
    verifier: UserTokenVerifier, auth_server: AuthServer, signing_keys: dict[str, SigningKey]
) -> None:
    # GIVEN an attacker who HMACs a token with our published RSA public key as the secret
    rsa_key = signing_keys["rs"]
    token = forge(
        {"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid},
        auth_server.claims(),
        rsa_key.public_pem(),
    )
    # THEN it is checked against the HS256 secret only, and fails
    assert await _rejection(verifier, token) == "token_invalid"


async def test_hs256_is_refused_outright_when_no_secret_is_configured(
    jwks_endpoint: respx.Route, auth_server: AuthServer, signing_keys: dict[str, SigningKey]
) -> None:
    jwks_only = UserTokenVerifier(
        hs256_secret=None, jwks=JwksCache(JWKS_URL), issuer=ISSUER, audience="authenticated"
    )
    token = forge({"alg": "HS256"}, auth_server.claims(), signing_keys["rs"].public_pem())
    assert await _rejection(jwks_only, token) == "token_algorithm_refused"


async def test_a_key_with_the_wrong_algorithm_for_its_kid_is_refused(
    verifier: UserTokenVerifier, auth_server: AuthServer, signing_keys: dict[str, SigningKey]
) -> None:
    # RS256 header naming the EC key's kid
    token = jwt.encode(
        auth_server.claims(),
        signing_keys["rs"].private_key,
        algorithm="RS256",
        headers={"kid": signing_keys["es"].kid},
    )
    assert await _rejection(verifier, token) == "token_algorithm_refused"


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": int(time.time()) - 120}, "token_expired"),
        ({"nbf": int(time.time()) + 600}, "token_not_yet_valid"),
        ({"aud": "service_role"}, "token_audience_invalid"),
        ({"iss": "https://elsewhere.supabase.co/auth/v1"}, "token_issuer_invalid"),
        ({"sub": "not-a-uuid"}, "token_invalid"),
        ({"exp": None}, "token_invalid"),
    ],
)
async def test_claims_are_checked(
    verifier: UserTokenVerifier, auth_server: AuthServer, claims: dict[str, Any], code: str
) -> None:
    assert await _rejection(verifier, auth_server.token(**claims)) == code


async def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    verifier: UserTokenVerifier, auth_server: AuthServer, signing_keys: dict[str, SigningKey]
) -> None:
    token = auth_server.token(signing_keys["stranger"])
    assert await _rejection(verifier, token) == "token_invalid"


@pytest.mark.parametrize("kid", ["../../../etc/passwd", "' or 1=1 --", "x" * 500, ""])
async def test_injected_key_ids_are_unknown_keys(
    verifier: UserTokenVerifier,
    auth_server: AuthServer,
    signing_keys: dict[str, SigningKey],
    kid: str,
) -> None:
    token = jwt.encode(
        auth_server.claims(),
        signing_keys["es"].private_key,
        algorithm="ES256",
        headers={"kid": kid},
    )
    assert await _rejection(verifier, token) == "token_key_unknown"


async def test_garbage_is_an_invalid_token(verifier: UserTokenVerifier) -> None:
    assert await _rejection(verifier, "a.b.c") == "token_invalid"


async def test_unknown_kids_do_not_cause_unbounded_refetching(
    verifier: UserTokenVerifier,
    auth_server: AuthServer,
    jwks_endpoint: respx.Route,
    signing_keys: dict[str, SigningKey],
    clock: ManualClock,
) -> None:
    # GIVEN the keys were fetched once for a valid token
    await verifier.verify(auth_server.token())
    assert jwks_endpoint.call_count == 1

    # WHEN fifty tokens name a kid the project never published, within the refresh interval
    unpublished = signing_keys["es_rotated"]
    for _ in range(50):
        assert await _rejection(verifier, auth_server.token(unpublished)) == "token_key_unknown"

    # THEN no refetch happened; after the interval, fifty more cause exactly one
    assert jwks_endpoint.call_count == 1
    clock.now += 31
    for _ in range(50):
        await _rejection(verifier, auth_server.token(unpublished))
    assert jwks_endpoint.call_count == 2


async def test_a_newly_published_key_is_accepted_after_one_refresh(
    verifier: UserTokenVerifier,
    auth_server: AuthServer,
    jwks_endpoint: respx.Route,
    signing_keys: dict[str, SigningKey],
    clock: ManualClock,
) -> None:
    await verifier.verify(auth_server.token())
    clock.now += 60  # past the refresh interval, well within the cache TTL

    # WHEN the project rotates its signing key and issues a token with the new one
    auth_server.published.insert(0, signing_keys["es_rotated"])
    user_id = str(uuid.uuid4())
    verified = await verifier.verify(auth_server.token(user_id=user_id))

    # THEN one refresh made it known
    assert verified.user_id == user_id
    assert jwks_endpoint.call_count == 2


async def test_keys_are_refetched_when_the_cache_expires(
    verifier: UserTokenVerifier,
    auth_server: AuthServer,
    jwks_endpoint: respx.Route,
    clock: ManualClock,
) -> None:
    await verifier.verify(auth_server.token())
    await verifier.verify(auth_server.token())
    clock.now += 601
    await verifier.verify(auth_server.token())
    assert jwks_endpoint.call_count == 2


async def test_an_unreachable_jwks_is_503_not_401(auth_server: AuthServer) -> None:
    with respx.mock() as router:
        router.get(JWKS_URL).mock(side_effect=httpx.ConnectError("down"))
        verifier = UserTokenVerifier(
            hs256_secret=None, jwks=JwksCache(JWKS_URL), issuer=ISSUER, audience="authenticated"
        )
        with pytest.raises(SigningKeysUnavailable) as unavailable:
            await verifier.verify(auth_server.token())
    assert unavailable.value.status_code == 503


async def test_without_any_key_configured_user_tokens_are_refused(
    auth_server: AuthServer,
) -> None:
    verifier = UserTokenVerifier(hs256_secret=None, jwks=None, issuer=None, audience="x")
    assert await _rejection(verifier, auth_server.hs256_token()) == "user_auth_not_configured"


@pytest.mark.parametrize(("leeway_s", "accepted"), [(0.0, False), (30.0, True)])
async def test_an_expired_token_works_no_longer_than_the_configured_leeway(
    settings: Settings, auth_server: AuthServer, leeway_s: float, accepted: bool
) -> None:
    # GIVEN the verifier the runtime builds from JWT_LEEWAY_S
    verifier = Runtime(settings.model_copy(update={"jwt_leeway_s": leeway_s})).user_token_verifier()
    # WHEN a token that expired five seconds ago is presented
    token = auth_server.token(exp=int(time.time()) - 5)
    # THEN it passes only within the leeway
    if accepted:
        assert (await verifier.verify(token)).user_id
    else:
        assert await _rejection(verifier, token) == "token_expired"
