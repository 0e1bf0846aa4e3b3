"""Shared fixtures: one embedded PostgreSQL per test session, a fresh database per test (cloned
from a migrated template), the OpenRouter emulator, and apps wired to both."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import respx
from pydantic import SecretStr

# Before anything reads settings: never production defaults, never the developer's .env values.
os.environ["APP_ENV"] = "test"
for _name in (
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "OPENROUTER_MANAGEMENT_KEY",
    "OPENROUTER_PROVISIONING_KEY",
    "ENCRYPTION_MASTER_KEY",
):
    os.environ.pop(_name, None)

from shared.config import Environment, Settings  # noqa: E402
from shared.db.database import Database  # noqa: E402
from shared.db.embedded import EmbeddedPostgres, start_embedded_postgres  # noqa: E402
from shared.db.migrations import MIGRATIONS_DIR, MigrationRunner, load_migrations  # noqa: E402
from shared.keys.service import KeyLifecycleService  # noqa: E402
from shared.observability import SERVICE_NAME, RedactingFormatter, logger  # noqa: E402
from shared.openrouter.client import OpenRouterClient  # noqa: E402
from shared.openrouter.emulator import Emulator  # noqa: E402
from shared.runtime import EMULATOR_BASE_URL, Runtime  # noqa: E402
from shared.web.app_factory import create_app  # noqa: E402
from tests.access.signing import (  # noqa: E402
    HS256_SECRET,
    ISSUER,
    JWKS_URL,
    AuthServer,
    SigningKey,
    new_es256_key,
    new_rs256_key,
)
from tests.db.supabase_stack import SupabaseGateway, postgrest  # noqa: E402

TEMPLATE_DATABASE = "openrouter_agent_template"


def pytest_configure(config: pytest.Config) -> None:
    """Temporary folders of this run's own: under pytest's shared default, another pytest run on
    the machine prunes older runs' folders, and once deleted this run's database mid-run."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="openrouter-agent-tests-")
        config.add_cleanup(lambda: shutil.rmtree(config.option.basetemp, ignore_errors=True))


# What no log line may hold: an OpenRouter key, one of our service tokens, a bearer value.
SECRET_IN_LOG = (
    re.compile(r"sk-or-v1-[0-9a-f]{8}"),
    re.compile(r"ora_st_[A-Za-z0-9]{8}"),
    re.compile(r"(?i)bearer\s+(?!\*\*\*)[A-Za-z0-9._~+/=\-]{8}"),
)


class OpenRouterKeySightings(logging.Handler):
    """Formats every log record as its logger would emit it and notes any OpenRouter key."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(formatter)
        self.sightings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if any(pattern.search(line) for pattern in SECRET_IN_LOG):
            self.sightings.append(f"{record.name}: {line[:200]}")


@pytest.fixture(scope="session", autouse=True)
def no_openrouter_key_in_any_log() -> Iterator[None]:
    """The whole run's logs (ours, as written, and every library's) hold no OpenRouter key,
    no service token and no bearer credential."""
    ours = OpenRouterKeySightings(RedactingFormatter())
    everyone_else = OpenRouterKeySightings(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger(SERVICE_NAME).addHandler(ours)
    logging.getLogger().addHandler(everyone_else)
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    yield
    logging.getLogger().setLevel(root_level)
    logging.getLogger(SERVICE_NAME).removeHandler(ours)
    logging.getLogger().removeHandler(everyone_else)
    assert ours.sightings + everyone_else.sightings == []


@pytest.fixture(scope="session")
def embedded_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = start_embedded_postgres(tmp_path_factory.mktemp("pg") / "pgdata")

    async def build_template() -> None:
        async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as conn:
            await conn.execute(f'create database "{TEMPLATE_DATABASE}"')
        database = Database(server.dsn_for(TEMPLATE_DATABASE))
        try:
            await MigrationRunner(database).migrate(load_migrations(MIGRATIONS_DIR))
        finally:
            await database.close()

    asyncio.run(build_template())
    yield server
    server.destroy()


async def _create_database(server: EmbeddedPostgres, template: str) -> str:
    name = "t_" + uuid.uuid4().hex[:16]
    async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as conn:
        await conn.execute(f'create database "{name}" template "{template}"')
    return name


async def _drop_database(server: EmbeddedPostgres, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as conn:
        await conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
async def database_dsn(embedded_postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, fully migrated database of its own for this test."""
    name = await _create_database(embedded_postgres, TEMPLATE_DATABASE)
    yield embedded_postgres.dsn_for(name)
    await _drop_database(embedded_postgres, name)


@pytest.fixture
async def empty_database_dsn(embedded_postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = await _create_database(embedded_postgres, "template0")
    yield embedded_postgres.dsn_for(name)
    await _drop_database(embedded_postgres, name)


@pytest.fixture
async def database(database_dsn: str) -> AsyncIterator[Database]:
    db = Database(database_dsn)
    yield db
    await db.close()


class RecordingSleep:
    """Stands in for asyncio.sleep in the client: records each wait instead of waiting, and
    moves a virtual clock on by it (the client's limiter reads that clock)."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 1_000.0

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


@pytest.fixture
def recording_sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def openrouter(
    emulator: Emulator, recording_sleep: RecordingSleep
) -> AsyncIterator[OpenRouterClient]:
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
        sleep=recording_sleep,
        clock=recording_sleep.clock,
    )
    yield client
    await client.aclose()


CRON_SECRET = "cron-secret-for-tests-0123456789"
BOOTSTRAP_ADMIN_TOKEN = "bootstrap-admin-token-for-tests-0123456789abcdef"


@pytest.fixture(scope="session")
def signing_keys() -> dict[str, SigningKey]:
    """Made once per session: RSA key generation is slow."""
    return {
        "es": new_es256_key("es-key-1"),
        "rs": new_rs256_key("rs-key-1"),
        "es_rotated": new_es256_key("es-key-2"),
        "stranger": new_es256_key("es-key-1"),  # same kid as "es", a key the project never had
    }


@pytest.fixture
def auth_server(signing_keys: dict[str, SigningKey]) -> AuthServer:
    return AuthServer(published=[signing_keys["es"], signing_keys["rs"]])


@pytest.fixture
def jwks_endpoint(auth_server: AuthServer) -> Iterator[respx.Route]:
    """The project's JWKS over real httpx, answered by respx; it serves whatever the test's
    auth server publishes at the moment of the request. No other outside request can pass."""
    with respx.mock(assert_all_called=False) as router:
        route = router.get(JWKS_URL).mock(
            side_effect=lambda request: httpx.Response(200, json=auth_server.jwks())
        )
        # Our own test servers on loopback (PostgREST and its gateway) are real.
        router.route(host="127.0.0.1").pass_through()
        yield route


@pytest.fixture
def settings(tmp_path: Path, database_dsn: str, jwks_endpoint: respx.Route) -> Settings:
    return Settings(
        app_env=Environment.TEST,
        local_data_dir=tmp_path / "local",
        database_url=SecretStr(database_dsn),
        database_connect_timeout_s=2.0,
        supabase_jwt_secret=SecretStr(HS256_SECRET),
        supabase_jwks_url=JWKS_URL,
        jwt_issuer=ISSUER,
        cron_secret=SecretStr(CRON_SECRET),
        bootstrap_admin_token=SecretStr(BOOTSTRAP_ADMIN_TOKEN),
    )


@pytest.fixture
async def runtime(
    settings: Settings, emulator: Emulator, openrouter: OpenRouterClient
) -> AsyncIterator[Runtime]:
    runtime = Runtime(settings, openrouter=openrouter, emulator=emulator)
    yield runtime
    await runtime.database().close()


@pytest.fixture
def keys(runtime: Runtime) -> KeyLifecycleService:
    return KeyLifecycleService(runtime)


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the local app (every group), over real ASGI."""
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture(scope="session")
def supabase_gateway() -> Iterator[SupabaseGateway]:
    """Supabase's API gateway (apikey checks) in front of whichever PostgREST a test runs."""
    gateway = SupabaseGateway()
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def supabase_rest(
    database_dsn: str, supabase_gateway: SupabaseGateway
) -> Iterator[SupabaseGateway]:
    """The real PostgREST on this test's database, behind the gateway: Supabase's REST API."""
    with postgrest(database_dsn) as url:
        supabase_gateway.upstream = url
        supabase_gateway.calls.clear()
        yield supabase_gateway
        supabase_gateway.upstream = None


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Everything the service logs during the test, as the JSON lines it writes."""
    stream = io.StringIO()
    handler = logger.registered_handler
    previous = handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    handler.setStream(previous)  # type: ignore[attr-defined]
