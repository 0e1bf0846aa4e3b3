"""The adapters one process uses, built lazily from settings and reused across warm invocations.

Functions create one Runtime at import (cheap: nothing connects); the first request that needs
the database or OpenRouter builds that adapter. Tests build a Runtime around their own adapters.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import SecretStr

from shared.access.token_cache import ServiceTokenCache
from shared.access.user_tokens import JwksCache, UserTokenVerifier
from shared.config import Settings
from shared.crypto.envelope import KeyProvider, KmsKeyProvider, LocalKeyProvider, SecretSealer
from shared.crypto.master_key import MasterKey, decode_master_key, load_or_generate_master_key
from shared.crypto.tokens import derive_token_hmac_key
from shared.db.database import Database, DatabaseUnavailable, PoolLimits
from shared.db.rpc import PostgresRpc, PostgrestRpc, StoreRpc
from shared.keys.publisher import SecretsManagerPublisher
from shared.observability import logger

if TYPE_CHECKING:
    from shared.openrouter.client import OpenRouterClient
    from shared.openrouter.emulator import Emulator

EMULATOR_BASE_URL = "http://openrouter-emulator.invalid/api/v1"


def pool_limits(settings: Settings) -> PoolLimits:
    return PoolLimits(
        min_size=settings.database_pool_min_size,
        max_size=settings.database_pool_max_size,
        connect_timeout_s=settings.database_connect_timeout_s,
        statement_timeout_ms=settings.database_statement_timeout_ms,
        prepare_statements=settings.database_prepare_statements,
    )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        database: Database | None = None,
        openrouter: OpenRouterClient | None = None,
        emulator: Emulator | None = None,
        store: StoreRpc | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = datetime.now(UTC)
        self._started_monotonic = time.monotonic()
        self._database = database
        self._openrouter = openrouter
        self._emulator = emulator
        self._store = store
        self._master_key: MasterKey | None = None
        self._token_hmac_key: bytes | None = None
        self._sealer: SecretSealer | None = None
        self._publisher: SecretsManagerPublisher | None = None
        self._token_cache: ServiceTokenCache | None = None
        self._user_token_verifier: UserTokenVerifier | None = None
        self._lock = threading.Lock()

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started_monotonic

    @property
    def openrouter_provider(self) -> Literal["openrouter", "emulator"]:
        if self._openrouter is not None:
            return "emulator" if self._emulator is not None else "openrouter"
        return "emulator" if self.settings.uses_openrouter_emulator else "openrouter"

    @property
    def billing_settle_s(self) -> float:
        """How long a lowered or disabled key may still be billed for earlier requests."""
        configured = self.settings.openrouter_billing_settle_s
        if configured is not None:
            return configured
        return 0.0 if self.openrouter_provider == "emulator" else 60.0

    def database(self) -> Database:
        with self._lock:
            if self._database is None:
                self._database = Database(self._resolve_dsn(), pool_limits(self.settings))
            return self._database

    @property
    def uses_supabase_transport(self) -> bool:
        settings = self.settings
        return settings.supabase_url is not None and settings.supabase_service_role_key is not None

    def store(self) -> StoreRpc:
        """The store functions' transport: Supabase's REST gateway when SUPABASE_URL and
        SUPABASE_SERVICE_ROLE_KEY are set, else the direct connection."""
        with self._lock:
            if self._store is None and self.uses_supabase_transport:
                assert self.settings.supabase_url is not None
                assert self.settings.supabase_service_role_key is not None
                self._store = PostgrestRpc(
                    self.settings.supabase_url,
                    self.settings.supabase_service_role_key.get_secret_value(),
                    # As long as a direct call may take: a connection, then a statement
                    # (a statement timeout of 0 means none: 30 s then).
                    timeout_s=self.settings.database_connect_timeout_s
                    + (self.settings.database_statement_timeout_ms / 1000 or 30.0),
                )
            if self._store is not None:
                return self._store
        store = PostgresRpc(self.database())
        with self._lock:
            if self._store is None:
                self._store = store
            return self._store

    def _resolve_dsn(self) -> str:
        settings = self.settings
        if settings.database_url is not None:
            return settings.database_url.get_secret_value()
        if settings.supabase_url is not None:
            raise DatabaseUnavailable(
                "this function needs a direct Postgres connection (key lifecycle, admin and "
                "jobs run multi-statement transactions); set DATABASE_URL to the Supabase "
                "project's connection string",
                code="database_not_configured",
            )
        if settings.is_production:
            raise DatabaseUnavailable("DATABASE_URL is not set", code="database_not_configured")
        from shared.db.embedded import start_embedded_postgres

        server = start_embedded_postgres(settings.local_data_dir / "pgdata")
        logger.info(
            "embedded PostgreSQL started (no DATABASE_URL)",
            extra={"data_dir": str(settings.local_data_dir / "pgdata")},
        )
        return server.dsn

    def emulator(self) -> Emulator:
        """The built-in OpenRouter emulator (no management key). Its state lives in
        LOCAL_DATA_DIR, so the local server, every command beside it, and the next start all
        work on the same keys, usage and management key."""
        from shared.openrouter.emulator import Emulator

        with self._lock:
            if self._emulator is None:
                self._emulator = Emulator(state_dir=self.settings.local_data_dir)
            return self._emulator

    def openrouter(self) -> OpenRouterClient:
        # httpx and the client load with the first OpenRouter call, not with the function.
        from shared.openrouter.client import OpenRouterClient
        from shared.openrouter.limiter import AdaptiveLimiter

        settings = self.settings
        if self._openrouter is not None:
            return self._openrouter
        if settings.openrouter_management_key is not None:
            key, base_url, transport = (
                settings.openrouter_management_key,
                settings.openrouter_base_url,
                None,
            )
        else:
            emulator = self.emulator()
            key = SecretStr(emulator.management_key)
            base_url, transport = EMULATOR_BASE_URL, emulator.transport()
        with self._lock:
            if self._openrouter is None:
                self._openrouter = OpenRouterClient(
                    management_key=key,
                    base_url=base_url,
                    timeout_s=settings.openrouter_timeout_s,
                    max_retries=settings.openrouter_max_retries,
                    max_retry_after_s=settings.openrouter_max_retry_after_s,
                    limiter=AdaptiveLimiter(settings.openrouter_max_concurrency),
                    transport=transport,
                )
            return self._openrouter

    def master_key(self) -> MasterKey:
        with self._lock:
            return self._master_key_locked()

    def _master_key_locked(self) -> MasterKey:
        if self._master_key is None:
            self._master_key = load_or_generate_master_key(self.settings)
        return self._master_key

    def sealer(self) -> SecretSealer:
        """Seals key material: AWS KMS when KMS_KEY_ID is set, else the local master key."""
        with self._lock:
            if self._sealer is None:
                self._sealer = self._build_sealer()
            return self._sealer

    def _build_sealer(self) -> SecretSealer:
        settings = self.settings
        previous: list[KeyProvider] = [
            LocalKeyProvider(decode_master_key(k.get_secret_value(), "a previous master key"))
            for k in settings.encryption_previous_master_keys
        ]
        if settings.kms_key_id is None:
            return SecretSealer(LocalKeyProvider(self._master_key_locked().material), previous)
        import boto3
        from botocore.config import Config

        # Fail fast: a slow or throttled KMS must not hold a request for its whole timeout.
        client = boto3.client(
            "kms",
            config=Config(
                connect_timeout=3, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )
        if settings.encryption_master_key is not None:
            # Keys sealed before the move to KMS still open, and can be re-wrapped.
            previous.append(LocalKeyProvider(self._master_key_locked().material))
        return SecretSealer(KmsKeyProvider(settings.kms_key_id, client), previous)

    def system_key_publisher(self) -> SecretsManagerPublisher | None:
        prefix = self.settings.system_keys_secret_prefix
        if prefix is None:
            return None
        with self._lock:
            if self._publisher is None:
                import boto3

                self._publisher = SecretsManagerPublisher(boto3.client("secretsmanager"), prefix)
            return self._publisher

    def service_token_cache(self) -> ServiceTokenCache:
        with self._lock:
            if self._token_cache is None:
                self._token_cache = ServiceTokenCache(self.settings.service_token_cache_s)
            return self._token_cache

    def token_hmac_key(self) -> bytes:
        if self._token_hmac_key is None:
            self._token_hmac_key = derive_token_hmac_key(self.master_key().material)
        return self._token_hmac_key

    def user_token_verifier(self) -> UserTokenVerifier:
        """Built once per process, so its JWKS cache survives warm invocations."""
        with self._lock:
            if self._user_token_verifier is None:
                settings = self.settings
                jwks_url = settings.effective_jwks_url
                self._user_token_verifier = UserTokenVerifier(
                    hs256_secret=None
                    if settings.supabase_jwt_secret is None
                    else settings.supabase_jwt_secret.get_secret_value(),
                    jwks=None
                    if jwks_url is None
                    else JwksCache(
                        jwks_url,
                        ttl_s=settings.jwks_cache_ttl_s,
                        min_refresh_interval_s=settings.jwks_min_refresh_interval_s,
                    ),
                    issuer=settings.effective_jwt_issuer,
                    audience=settings.jwt_audience,
                    leeway_s=settings.jwt_leeway_s,
                )
            return self._user_token_verifier
