"""The authenticated caller of a request, whatever credential it used."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Scope(StrEnum):
    KEYS_READ = "keys:read"
    KEYS_WRITE = "keys:write"
    KEYS_REVEAL = "keys:reveal"
    USAGE_WRITE = "usage:write"
    USAGE_READ = "usage:read"
    USERS_WRITE = "users:write"  # the subscription system: users and their tiers, nothing else
    ADMIN = "admin"


class PrincipalKind(StrEnum):
    USER = "user"  # a Supabase Auth JWT
    SERVICE = "service"  # a service token (or the bootstrap admin token)
    CRON = "cron"  # the scheduler's CRON_SECRET


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    id: str  # user id (JWT sub), service token id, "bootstrap" or "cron"
    is_admin: bool = False
    scopes: frozenset[Scope] = field(default_factory=frozenset)
    name: str | None = None

    def has_scope(self, scope: Scope) -> bool:
        """Admins reach everything; others hold exactly the scopes they were given."""
        return self.is_admin or scope in self.scopes

    @property
    def actor(self) -> str:
        """How this caller is named in audit rows and records: kind and id."""
        return f"{self.kind}:{self.id}"

    @property
    def rate_limit_identity(self) -> str:
        return self.actor
