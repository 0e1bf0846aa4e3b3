"""Access rules: every route declares exactly one, as a dependency alias in its signature.

    async def issue(caller: AdminCaller) -> ...        # admins only
    async def liveness(_: PublicCaller) -> ...          # open, on purpose

The app factory refuses to build an app with a route that declares no rule, so a forgotten
rule fails at start-up and in the tests instead of leaving a route open.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute

from shared.access.principals import Principal, PrincipalKind, Scope
from shared.access.service import AccessService
from shared.access.user_tokens import TokenRejected
from shared.errors import BadRequest, Forbidden, TooManyRequests
from shared.observability import logger
from shared.runtime import Runtime

# Query parameters that would carry a credential; credentials belong in the Authorization
# header only, since URLs end up in logs, proxies and browser history.
_CREDENTIAL_QUERY_PARAMETERS = frozenset(
    {"access_token", "token", "api_key", "apikey", "key", "secret", "jwt", "authorization"}
)


class RateLimitedAction(StrEnum):
    KEY_WRITE = "key_write"
    KEY_REVEAL = "key_reveal"
    TOKEN_ISSUE = "token_issue"  # nosec B105


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Who may call a route. Ownership (user A vs user B) is checked by the service."""

    name: str
    public: bool = False
    users: bool = False  # signed-in users, for their own resources
    services_with: Scope | None = None  # service tokens holding this scope
    any_authenticated: bool = False
    cron: bool = False
    # admins (admin users, admin-scoped tokens) pass every rule but public-only and cron ones

    def allows(self, principal: Principal | None) -> bool:
        if self.public:
            return True
        if principal is None:
            return False
        if principal.kind is PrincipalKind.CRON:
            return self.cron or self.any_authenticated
        if self.cron:
            return False
        if self.any_authenticated or principal.is_admin:
            return True
        if principal.kind is PrincipalKind.USER:
            return self.users
        return self.services_with is not None and principal.has_scope(self.services_with)


PUBLIC = AccessRule("public", public=True)
AUTHENTICATED = AccessRule("authenticated", any_authenticated=True)
ADMIN = AccessRule("admin")
CRON = AccessRule("cron", cron=True)


def users_or_services_with(scope: Scope) -> AccessRule:
    return AccessRule(f"users or services with {scope}", users=True, services_with=scope)


def services_with(scope: Scope) -> AccessRule:
    return AccessRule(f"services with {scope}", services_with=scope)


def _bearer_credential(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise TokenRejected("credential_invalid", "use Authorization: Bearer <credential>")
    return credential.strip()


class Authorize:
    """The dependency behind every rule alias: authenticate, authorize, then rate-limit."""

    def __init__(self, rule: AccessRule, *, rate_limit: RateLimitedAction | None = None) -> None:
        self.rule = rule
        self.rate_limit = rate_limit

    async def __call__(self, request: Request) -> Principal | None:
        if self.rule.public:
            return None  # open routes never look at credentials
        if _CREDENTIAL_QUERY_PARAMETERS & {name.lower() for name in request.query_params}:
            raise BadRequest(
                "credentials are accepted in the Authorization header only",
                code="credentials_in_query",
            )
        runtime: Runtime = request.app.state.runtime
        service = AccessService(runtime)
        credential = _bearer_credential(request)
        if credential is None:
            raise TokenRejected("authentication_required", "this route needs a credential")
        try:
            principal = await service.authenticate(credential)
        except TokenRejected as rejected:
            # The reason is logged, never the credential.
            logger.info("authentication failed", extra={"reason": rejected.code})
            raise
        if not self.rule.allows(principal):
            logger.info(
                "access denied",
                extra={"rule": self.rule.name, "principal": principal.rate_limit_identity},
            )
            raise Forbidden(
                f"this route is for {self.rule.name}",
                code="forbidden",
                details={"rule": self.rule.name},
            )
        if self.rate_limit is not None:
            await enforce_rate_limit(runtime, principal, self.rate_limit)
        return principal


async def enforce_rate_limit(
    runtime: Runtime, principal: Principal, action: RateLimitedAction
) -> None:
    """Count one `action` for this credential; 429 with Retry-After once over the limit."""
    settings = runtime.settings
    per_minute = {
        RateLimitedAction.KEY_WRITE: settings.rate_limit_key_writes_per_minute,
        RateLimitedAction.KEY_REVEAL: settings.rate_limit_key_reveals_per_minute,
        RateLimitedAction.TOKEN_ISSUE: settings.rate_limit_token_issues_per_minute,
    }[action]
    decision = await AccessService(runtime).consume_rate_limit(
        action, principal, per_minute=per_minute
    )
    if not decision.allowed:
        raise TooManyRequests(
            f"at most {per_minute} {action} per minute for one credential",
            code="rate_limited",
            headers={"Retry-After": str(decision.retry_after_s)},
            details={"retry_after_s": decision.retry_after_s},
        )


KEYS_WRITE = services_with(Scope.KEYS_WRITE)
KEYS_READ = users_or_services_with(Scope.KEYS_READ)

PublicCaller = Annotated[Principal | None, Depends(Authorize(PUBLIC))]
AuthenticatedCaller = Annotated[Principal, Depends(Authorize(AUTHENTICATED))]
AdminCaller = Annotated[Principal, Depends(Authorize(ADMIN))]
AdminTokenIssuer = Annotated[
    Principal, Depends(Authorize(ADMIN, rate_limit=RateLimitedAction.TOKEN_ISSUE))
]
CronCaller = Annotated[Principal, Depends(Authorize(CRON))]
KeyWriter = Annotated[Principal, Depends(Authorize(KEYS_WRITE))]
RateLimitedKeyWriter = Annotated[
    Principal, Depends(Authorize(KEYS_WRITE, rate_limit=RateLimitedAction.KEY_WRITE))
]
KeyReader = Annotated[Principal, Depends(Authorize(KEYS_READ))]
UsageWriter = Annotated[Principal, Depends(Authorize(services_with(Scope.USAGE_WRITE)))]
UsageReader = Annotated[Principal, Depends(Authorize(users_or_services_with(Scope.USAGE_READ)))]
UsersWriter = Annotated[Principal, Depends(Authorize(services_with(Scope.USERS_WRITE)))]


def authorizers_of(route: APIRoute) -> list[Authorize]:
    """Every Authorize dependency in a route's dependency tree."""

    def walk(dependant: Any) -> Iterator[Authorize]:
        for dependency in dependant.dependencies:
            if isinstance(dependency.call, Authorize):
                yield dependency.call
            yield from walk(dependency)

    return list(walk(route.dependant))


class RouteWithoutAccessRule(RuntimeError):
    pass


def rule_of(route: APIRoute) -> AccessRule:
    """The one rule a route declares; a route with none or several is a programming error."""
    authorizers = authorizers_of(route)
    if len(authorizers) != 1:
        raise RouteWithoutAccessRule(
            f"{sorted(route.methods or ())} {route.path} declares {len(authorizers)} access rules; "
            "declare exactly one (PublicCaller, AdminCaller, ...)"
        )
    return authorizers[0].rule
