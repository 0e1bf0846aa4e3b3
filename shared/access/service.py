"""Authentication of every credential kind, and the service-token lifecycle."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from shared.access.principals import Principal, PrincipalKind, Scope
from shared.access.repository import (
    RateLimitDecision,
    RateLimitRepository,
    ServiceTokenRecord,
    ServiceTokenRepository,
)
from shared.access.store import AccessStore
from shared.access.user_tokens import TokenRejected, claim_at
from shared.audit.repository import AuditRepository
from shared.crypto.tokens import (
    generate_service_token,
    has_valid_checksum,
    hash_service_token,
    looks_like_service_token,
    token_hint,
)
from shared.errors import BadRequest, NotFound, ValidationFailed
from shared.runtime import Runtime
from shared.timestamps import storable_utc

BOOTSTRAP_PRINCIPAL_ID = "bootstrap"


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # shown once, never stored
    record: ServiceTokenRecord


class AccessService:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def authenticate(self, credential: str) -> Principal:
        """The principal behind a bearer credential, or TokenRejected (401)."""
        settings = self._runtime.settings
        if looks_like_service_token(credential):
            return await self._authenticate_service_token(credential)
        if credential.count(".") == 2:
            verified = await self._runtime.user_token_verifier().verify(credential)
            is_admin = claim_at(verified.claims, settings.admin_role_claim) == (
                settings.admin_role_value
            )
            return Principal(PrincipalKind.USER, verified.user_id, is_admin=is_admin)
        # Both are compared whenever configured, so timing says nothing about which one exists.
        cron = settings.cron_secret
        bootstrap = settings.bootstrap_admin_token
        is_cron = cron is not None and _same_secret(credential, cron.get_secret_value())
        is_bootstrap = bootstrap is not None and _same_secret(
            credential, bootstrap.get_secret_value()
        )
        if is_cron:
            return Principal(PrincipalKind.CRON, "cron")
        if is_bootstrap:
            return Principal(
                PrincipalKind.SERVICE,
                BOOTSTRAP_PRINCIPAL_ID,
                is_admin=True,
                scopes=frozenset({Scope.ADMIN}),  # to issue the first tokens; it reveals nothing
                name="bootstrap admin token",
            )
        raise TokenRejected("credential_invalid", "the credential is not recognised")

    async def _authenticate_service_token(self, token: str) -> Principal:
        if not has_valid_checksum(token):
            raise TokenRejected("credential_invalid", "the service token is malformed")
        token_hash = hash_service_token(token, self._runtime.token_hmac_key())
        cache = self._runtime.service_token_cache()
        remembered = cache.get(token_hash)
        if remembered is not None:
            return remembered
        record = await AccessStore(self._runtime.store()).authenticate(token_hash)
        if record is None:
            raise TokenRejected(
                "credential_invalid", "the service token is unknown, revoked or expired"
            )
        scopes = frozenset(Scope(s) for s in record.scopes)
        principal = Principal(
            PrincipalKind.SERVICE,
            str(record.id),
            is_admin=Scope.ADMIN in scopes,
            scopes=scopes,
            name=record.name,
        )
        # Remembered until the cache's time is up or the token expires, whichever is first.
        cache.put(token_hash, principal, expires_at=record.expires_at)
        return principal

    async def issue_token(
        self,
        *,
        issued_by: str,
        name: str,
        scopes: list[Scope],
        expires_at: datetime | None,
        request_id: str | None = None,
    ) -> IssuedToken:
        now = datetime.now(UTC)
        if expires_at is not None:
            try:
                expires_at = storable_utc(expires_at)
            except ValueError as error:
                raise ValidationFailed(str(error), code="expiry_too_far") from error
        if expires_at is not None and expires_at <= now:
            raise BadRequest("expires_at must be in the future", code="expiry_in_past")
        max_days = self._runtime.settings.service_token_max_lifetime_days
        if expires_at is not None and expires_at > now + timedelta(days=max_days):
            raise ValidationFailed(
                f"a service token lives at most {max_days} days (SERVICE_TOKEN_MAX_LIFETIME_DAYS)",
                code="expiry_too_far",
            )
        token = generate_service_token()
        async with self._runtime.database().connection() as conn, conn.transaction():
            record = await ServiceTokenRepository(conn).insert(
                name=name,
                token_hash=hash_service_token(token, self._runtime.token_hmac_key()),
                token_hint=token_hint(token),
                scopes=sorted({str(scope) for scope in scopes}),
                created_by=issued_by,
                expires_at=expires_at,
            )
            await AuditRepository(conn).append(
                actor=issued_by,
                action="token.issued",
                target=f"token:{record.id}",
                request_id=request_id,
                details={
                    "name": record.name,
                    "scopes": record.scopes,
                    "hint": record.token_hint,
                    "expires_at": None if expires_at is None else expires_at.isoformat(),
                },
            )
        return IssuedToken(token=token, record=record)

    async def list_tokens(self, *, include_revoked: bool) -> list[ServiceTokenRecord]:
        async with self._runtime.database().connection() as conn:
            return await ServiceTokenRepository(conn).list(include_revoked=include_revoked)

    async def revoke_token(
        self, token_id: UUID, *, revoked_by: str, request_id: str | None = None
    ) -> ServiceTokenRecord:
        async with self._runtime.database().connection() as conn, conn.transaction():
            revoked = await ServiceTokenRepository(conn).revoke(token_id, revoked_by=revoked_by)
            if revoked is None:
                raise NotFound("no service token has this id", code="token_not_found")
            record, revoked_now = revoked
            if revoked_now:
                await AuditRepository(conn).append(
                    actor=revoked_by,
                    action="token.revoked",
                    target=f"token:{record.id}",
                    request_id=request_id,
                    details={"name": record.name, "hint": record.token_hint},
                )
        self._runtime.service_token_cache().forget(str(token_id))
        return record

    async def consume_rate_limit(
        self, action: str, principal: Principal, *, per_minute: int
    ) -> RateLimitDecision:
        return await AccessStore(self._runtime.store()).consume_rate_limit(
            f"{action}:{principal.rate_limit_identity}", limit=per_minute, window_s=60
        )

    async def prune_rate_limits(self) -> int:
        return await RateLimitRepository(self._runtime.database()).prune()
