"""The one settings object. Every variable is documented here and in the README's table.

Values come from, in order of precedence: what the code passes, the environment, a `.env` file
in the working directory, and (when SECRETS_MANAGER_SECRET_ID names one) a JSON secret in AWS
Secrets Manager. This is pydantic-settings' behaviour in ~60 lines of our own: the library costs
every function 30 ms of cold start for features we do not use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Self, get_origin

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from shared.observability import LOG_LEVELS

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

# Values copied from templates and docs; refusing them outside development stops a deployment
# that was configured by copy-paste from running with a guessable secret.
PLACEHOLDER_SECRETS = frozenset(
    {
        "changethis",
        "changeme",
        "secret",
        "your-service-role-key",
        "sk-or-v1-your-provisioning-key",
        "sk-or-v1-your-management-key",
    }
)


# The settings a secret in AWS Secrets Manager may hold (SECRETS_MANAGER_SECRET_ID): the
# credentials, never ordinary configuration.
SECRET_SETTINGS = frozenset(
    {
        "DATABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "OPENROUTER_MANAGEMENT_KEY",
        "ENCRYPTION_MASTER_KEY",
        "ENCRYPTION_PREVIOUS_MASTER_KEYS",
        "SUPABASE_JWT_SECRET",
        "CRON_SECRET",
        "BOOTSTRAP_ADMIN_TOKEN",
        "ALERT_WEBHOOK_SECRET",
    }
)


def read_secrets_manager(secret_id: str) -> dict[str, Any]:
    """The secret settings held in one JSON secret in AWS Secrets Manager, read at start-up.

    On Lambda the environment then holds only the secret's name: a value resolved at deploy
    time would sit in the function's configuration, readable by anyone allowed
    lambda:GetFunctionConfiguration. Powertools Parameters caches the secret per container
    (POWERTOOLS_PARAMETERS_MAX_AGE, 300 s by default).
    """
    # Imported only here: boto3 costs a cold start that functions without it do not pay.
    from aws_lambda_powertools.utilities import parameters

    values = parameters.get_secret(secret_id, transform="json")
    if not isinstance(values, dict):
        raise ValueError("SECRETS_MANAGER_SECRET_ID must name a JSON object of settings")
    unknown = sorted(set(values) - SECRET_SETTINGS)
    if unknown:
        # A misspelt name would otherwise leave the setting unset without a word.
        raise ValueError(
            "the secret in SECRETS_MANAGER_SECRET_ID holds names that are not secret "
            "settings: " + ", ".join(unknown)
        )
    return dict(values)


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (`export` allowed, # comments, single or double quotes): the subset of
    the .env format that a local set-up uses."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[name.strip()] = value
    return values


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class Settings(BaseModel):
    """Configuration read from the environment (and a local .env file when present)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_environment(), **values})

    app_env: Environment = Field(
        default=Environment.DEVELOPMENT,
        description="development, test or production. Embedded defaults are refused in production.",
    )
    host: str = Field(default="127.0.0.1", description="Address the local server binds to.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=3001, description="Port of the local server (the original agent's port)."
    )
    log_level: str = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)."
    )
    local_data_dir: Path = Field(
        default=REPOSITORY_ROOT / ".local",
        description="Folder for the embedded database and the generated local master key.",
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="Postgres DSN. Unset (and no Supabase): an embedded PostgreSQL starts.",
    )
    database_pool_min_size: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Connections kept open when idle (0 suits Lambda)."
    )
    database_pool_max_size: Annotated[int, Field(ge=1)] = Field(
        default=5, description="Upper bound on connections per process."
    )
    database_connect_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=5.0, description="Seconds to wait for a connection before answering 503."
    )
    database_statement_timeout_ms: Annotated[int, Field(ge=0)] = Field(
        default=10_000, description="Server-side statement timeout per connection (0 = none)."
    )
    database_prepare_statements: bool = Field(
        default=True,
        description="Set false behind a transaction-mode pooler (e.g. Supabase on port 6543).",
    )
    auto_migrate: bool | None = Field(
        default=None,
        description="Apply pending migrations when the local server starts. Default: on for the "
        "embedded database, off otherwise.",
    )

    supabase_url: str | None = Field(
        default=None,
        description="Supabase project URL. With SUPABASE_SERVICE_ROLE_KEY, the hot path (usage, "
        "token checks, rate limits, health) goes through its REST gateway; key lifecycle, admin "
        "and jobs still need DATABASE_URL.",
    )
    supabase_service_role_key: SecretStr | None = Field(
        default=None,
        description="Supabase service-role key (legacy JWT or new sb_secret_ key) for the REST "
        "gateway.",
    )

    openrouter_management_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENROUTER_MANAGEMENT_KEY", "OPENROUTER_PROVISIONING_KEY"),
        description="OpenRouter management (provisioning) key. Unset: the built-in emulator.",
    )
    openrouter_base_url: str = Field(
        default="https://openrouter.ai/api/v1", description="OpenRouter API base URL."
    )
    openrouter_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="Per-request timeout for OpenRouter calls."
    )
    openrouter_max_retries: Annotated[int, Field(ge=0, le=10)] = Field(
        default=3, description="Retries of GET/PATCH/DELETE on 429, 5xx and network errors."
    )
    openrouter_max_concurrency: Annotated[int, Field(ge=1, le=256)] = Field(
        default=32,
        description="OpenRouter calls at once: of one process, and of the whole fleet of "
        "invocations working bulk jobs (shared in the database); a 429 lowers it for a while "
        "and pauses new calls for its Retry-After.",
    )
    openrouter_max_retry_after_s: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="Longest Retry-After the client will wait in one request."
    )

    encryption_master_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 random bytes. Unset in development: generated into "
        "LOCAL_DATA_DIR/master.key with a warning.",
    )
    max_request_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=1_048_576, description="Larger request bodies are refused with 413."
    )

    supabase_jwt_secret: SecretStr | None = Field(
        default=None, description="Supabase's legacy HS256 JWT secret, to verify user tokens."
    )
    supabase_jwks_url: str | None = Field(
        default=None,
        description="JWKS of the project's asymmetric signing keys (ES256/RS256). Default: "
        "SUPABASE_URL/auth/v1/.well-known/jwks.json when SUPABASE_URL is set.",
    )
    jwt_issuer: str | None = Field(
        default=None,
        description="Required `iss` of user tokens. Default: SUPABASE_URL/auth/v1.",
    )
    jwt_audience: str = Field(default="authenticated", description="Required `aud` of user tokens.")
    jwt_leeway_s: Annotated[float, Field(ge=0, le=300)] = Field(
        default=30.0,
        description="Clock skew allowed on a user token's `exp` and `nbf`: an expired token"
        " works this much longer.",
    )
    jwks_cache_ttl_s: Annotated[float, Field(gt=0)] = Field(
        default=600.0, description="How long fetched signing keys are trusted before a refetch."
    )
    jwks_min_refresh_interval_s: Annotated[float, Field(ge=0)] = Field(
        default=30.0,
        description="An unknown `kid` refetches the JWKS at most this often (no refetch storms).",
    )
    admin_role_claim: str = Field(
        default="app_metadata.role",
        description="Dotted path of the JWT claim that marks an admin user.",
    )
    admin_role_value: str = Field(
        default="admin", description="Value of ADMIN_ROLE_CLAIM that makes a user an admin."
    )
    cron_secret: SecretStr | None = Field(
        default=None,
        description="Bearer secret the scheduler (Vercel crons) sends; at least 16 characters.",
    )
    bootstrap_admin_token: SecretStr | None = Field(
        default=None,
        description="An admin credential from the environment, to issue the first service "
        "token of a fresh deployment; at least 32 characters. Remove it afterwards.",
    )
    service_token_cache_s: Annotated[float, Field(ge=0, le=300)] = Field(
        default=10.0,
        description="Seconds an instance remembers a verified service token (0: check every "
        "request). A token revoked elsewhere works on other warm instances for at most this.",
    )
    service_token_max_lifetime_days: Annotated[int, Field(ge=1, le=3650)] = Field(
        default=730,
        description="Longest lifetime a service token may be issued with (expires_at at most "
        "this many days ahead).",
    )
    cors_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed by CORS (JSON list). Empty: CORS denied.",
    )
    kms_key_id: str | None = Field(
        default=None,
        description="AWS KMS key (id, ARN or alias) that wraps data keys. Unset: the local "
        "master key wraps them.",
    )
    encryption_previous_master_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Former master keys (JSON list of base64), kept only to re-wrap data keys "
        "after a master key rotation.",
    )
    openrouter_key_name_prefix: str = Field(
        default="ora",
        pattern=r"^[a-z0-9-]{1,20}$",
        description="Prefix of the names of keys we create at OpenRouter; the reconciler only "
        "ever touches keys with this prefix. Use one per deployment sharing an account.",
    )
    rotation_grace_seconds: Annotated[int, Field(ge=0, le=86_400)] = Field(
        default=300, description="Default overlap during which a rotated-out key still works."
    )
    rotation_grace_budget_fraction: Annotated[Decimal, Field(ge=0, le=1)] = Field(
        default=Decimal("0.1"),
        description="Share of the remaining monthly budget the old key may still spend during "
        "its grace period; the new key gets the rest, so together they never exceed it.",
    )
    key_operation_lease_s: Annotated[int, Field(ge=5, le=900)] = Field(
        default=60,
        description="How long one invocation holds an owner's keys (an operation, a limit "
        "change) before another may take over.",
    )
    openrouter_billing_settle_s: Annotated[float, Field(ge=0, le=3600)] | None = Field(
        default=None,
        description="OpenRouter bills a request when it completes: how long after a key's "
        "limit is lowered (or it is disabled) it may still be billed for requests admitted "
        "before. Budget it could still spend goes to no other key for this long. Unset: 60 "
        "with OpenRouter, 0 with the in-process emulator (which bills at once).",
    )
    reconcile_orphan_min_age_s: Annotated[int, Field(ge=60)] = Field(
        default=900,
        description="Keys under our prefix unknown to the database are deleted by the reconciler "
        "only when at least this old (a create may still be in flight).",
    )
    local_jobs_enabled: bool = Field(
        default=True,
        description="The local server (serve) runs the scheduled jobs itself, on the "
        "deployments' schedules. false: only cron routes and `openrouter-agent jobs run` do.",
    )
    local_jobs_poll_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=5.0,
        description="How often the local server looks for key operations and emergency "
        "rotations due before their job's next minute (a grace period ending, say).",
    )
    job_time_budget_s: Annotated[float, Field(gt=0, le=840)] = Field(
        default=45.0,
        description="Seconds one invocation of a bulk job works before it stops cleanly and "
        "leaves the rest to the next (under Vercel's 60 s; up to 14 min on Lambda).",
    )
    job_concurrency: Annotated[int, Field(ge=1, le=256)] = Field(
        default=32,
        description="Items of a bulk job (a key rotation each) one invocation works on at once "
        "(its OpenRouter calls stay within the fleet's share).",
    )
    emergency_concurrency: Annotated[int, Field(ge=1, le=256)] = Field(
        default=32, description="Keys an emergency rotation works on at once, per invocation."
    )
    work_lanes: Annotated[int, Field(ge=1, le=16)] = Field(
        default=2,
        description="Invocations that work the bulk jobs every minute (the work lanes: as many "
        "crons in vercel.json and schedules in serverless.yml).",
    )
    tier_policy_request_budget_s: Annotated[float, Field(ge=0, le=25)] = Field(
        default=15.0,
        description="Seconds a tier's new policy request itself assigns the tier's keys to its "
        "guardrail before answering (1,000 keys a second at OpenRouter's pace); the work lanes "
        "do the rest.",
    )
    emergency_request_budget_s: Annotated[float, Field(ge=0, le=25)] = Field(
        default=20.0,
        description="Seconds the emergency-rotate request itself works before answering; the "
        "job continues the rest.",
    )
    system_keys_secret_prefix: str | None = Field(
        default=None,
        description="When set, every new system key is also written to AWS Secrets Manager as "
        "<prefix><system name> (JSON: key, key_id, openrouter_hash).",
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="Threshold alerts (50, 80, 100 percent) are POSTed here as JSON. Unset: "
        "they stay in the outbox and in the usage reports.",
    )
    alert_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signs each alert: X-OpenRouter-Agent-Signature: sha256=<HMAC of the body>.",
    )
    drift_tolerance_usd: Annotated[Decimal, Field(ge=0)] = Field(
        default=Decimal("0.01"),
        description="Per user and month, a difference between OpenRouter's counters and the "
        "ledger beyond this is reported as drift.",
    )
    verify_calls_per_run: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=500,
        description="The most GET /generation calls one run of the verify-reported-usage job "
        "(every 5 minutes) makes to confirm reported costs; the rest wait for the next run.",
    )
    verify_give_up_s: Annotated[int, Field(ge=0)] = Field(
        default=3600,
        description="A reported event whose generation OpenRouter still does not find (404) "
        "this many seconds after it was recorded is given up: marked unverifiable.",
    )
    verify_alert_usd: Annotated[Decimal, Field(ge=0)] = Field(
        default=Decimal(1),
        description="A correction of a reported cost this large or larger (either way) queues "
        "a usage.cost_mismatch alert.",
    )
    system_key_monthly_budget_usd: Decimal | None = Field(
        default=None, description="Monthly limit of system keys (unset: unlimited)."
    )
    rate_limit_key_writes_per_minute: Annotated[int, Field(ge=1)] = Field(
        default=10, description="Key creations and rotations per credential per minute."
    )
    # bench/client_at_scale.py: 10,000 active users cost 2,247 reveals a minute from one
    # instance with the client's cache (8,648 in its first minute), 11,106 from ten instances
    # (18,360 in theirs); the local server sustains 40,000 a minute on 2 cores.
    rate_limit_key_reveals_per_minute: Annotated[int, Field(ge=1)] = Field(
        default=20_000,
        description="Key reveals per service credential per minute (each one audited).",
    )
    rate_limit_token_issues_per_minute: Annotated[int, Field(ge=1)] = Field(
        default=10, description="Service token issuances per credential per minute."
    )

    secrets_manager_secret_id: str | None = Field(
        default=None,
        description="Name or ARN of a JSON secret in AWS Secrets Manager whose keys are the "
        "secret settings (DATABASE_URL, OPENROUTER_MANAGEMENT_KEY, ...), read at start-up. "
        "Variables set in the environment win.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # `DATABASE_URL=` in a shell or .env means "not set", not "an empty DSN".
        return None if isinstance(value, str) and value.strip() == "" else value

    @field_validator("log_level")
    @classmethod
    def _a_log_level(cls, value: str) -> str:
        # Refused here, by name: the logger itself only passes over what is no level.
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError("is none of " + ", ".join(LOG_LEVELS))
        return level

    @property
    def is_production(self) -> bool:
        return self.app_env is Environment.PRODUCTION

    @property
    def effective_jwks_url(self) -> str | None:
        if self.supabase_jwks_url is not None:
            return self.supabase_jwks_url
        if self.supabase_url is not None:
            return self.supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return None

    @property
    def effective_jwt_issuer(self) -> str | None:
        if self.jwt_issuer is not None:
            return self.jwt_issuer
        if self.supabase_url is not None:
            return self.supabase_url.rstrip("/") + "/auth/v1"
        return None

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None and self.supabase_url is None

    @property
    def uses_openrouter_emulator(self) -> bool:
        return self.openrouter_management_key is None

    @property
    def should_auto_migrate(self) -> bool:
        return self.uses_embedded_database if self.auto_migrate is None else self.auto_migrate

    @model_validator(mode="after")
    def _refuse_unsafe_production_settings(self) -> Self:
        if self.app_env is Environment.DEVELOPMENT:
            return self
        secrets = {
            "DATABASE_URL": self.database_url,
            "SUPABASE_SERVICE_ROLE_KEY": self.supabase_service_role_key,
            "OPENROUTER_MANAGEMENT_KEY": self.openrouter_management_key,
            "ENCRYPTION_MASTER_KEY": self.encryption_master_key,
            "SUPABASE_JWT_SECRET": self.supabase_jwt_secret,
            "CRON_SECRET": self.cron_secret,
            "BOOTSTRAP_ADMIN_TOKEN": self.bootstrap_admin_token,
            "ALERT_WEBHOOK_SECRET": self.alert_webhook_secret,
        }
        for name, value in secrets.items():
            if (
                value is not None
                and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS
            ):
                raise ValueError(f"{name} holds a placeholder value; set a real secret")
        for name, value, minimum in (
            ("CRON_SECRET", self.cron_secret, 16),
            ("BOOTSTRAP_ADMIN_TOKEN", self.bootstrap_admin_token, 32),
        ):
            if value is not None and len(value.get_secret_value()) < minimum:
                raise ValueError(f"{name} must be at least {minimum} characters")
        if self.is_production:
            missing = [
                name
                for name, value in (
                    ("OPENROUTER_MANAGEMENT_KEY", self.openrouter_management_key),
                    ("ENCRYPTION_MASTER_KEY", self.encryption_master_key),
                )
                if value is None
            ]
            if self.uses_embedded_database:
                missing.append("DATABASE_URL or SUPABASE_URL")
            if missing:
                raise ValueError("production refuses embedded defaults; set " + ", ".join(missing))
        return self


def _variable_names(name: str, field: Any) -> list[str]:
    choices = getattr(field.validation_alias, "choices", None)
    return [str(choice) for choice in choices] if choices else [name.upper()]


def _from_environment() -> dict[str, Any]:
    """Field values from the environment, a .env file and Secrets Manager, by precedence."""
    dotenv = read_dotenv(Path(".env")) if Path(".env").is_file() else {}
    environment: Mapping[str, str] = {**dotenv, **os.environ}
    values: dict[str, Any] = {}
    secret_id = environment.get("SECRETS_MANAGER_SECRET_ID", "").strip()
    if secret_id:
        values.update({name.lower(): v for name, v in read_secrets_manager(secret_id).items()})
    for name, field in Settings.model_fields.items():
        for variable in _variable_names(name, field):
            raw = environment.get(variable, "")
            if not raw.strip():
                continue  # `DATABASE_URL=` in a shell or .env means "not set"
            if get_origin(field.annotation) is list:
                # Lists are JSON in the environment, as the README's table says.
                try:
                    raw = json.loads(raw)
                except ValueError:
                    raise ValueError(f"{variable} must be a JSON list") from None
            values[name] = raw
            break
    return values


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (functions are warm-reused)."""
    return Settings()
