"""The Python client (openrouter_agent_client) against the real app over real HTTP: uvicorn on
a free loopback port in a thread with its own loop, the emulated OpenRouter behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import httpx
import pytest
from pydantic import SecretStr

from openrouter_agent_client import AgentClient, AgentError
from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.config import Settings
from shared.db.database import Database
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import EMULATOR_BASE_URL, Runtime
from shared.web.app_factory import create_app
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN
from tests.serving import free_port, served

AGENT_SCOPES = [
    Scope.KEYS_READ,
    Scope.KEYS_REVEAL,
    Scope.USAGE_READ,
    Scope.USAGE_WRITE,
    Scope.USERS_WRITE,
]


@pytest.fixture
def server(settings: Settings, database_dsn: str, emulator: Emulator) -> Iterator[str]:
    """The local app on a real port, in a thread with its own loop and connections."""
    database = Database(database_dsn)
    openrouter = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
    )
    app = create_app(
        runtime=Runtime(settings, database=database, openrouter=openrouter, emulator=emulator)
    )
    with served(app) as url:
        yield url


@pytest.fixture
async def agent_token(settings: Settings, database_dsn: str) -> str:
    """A service token with every scope a platform's agent needs, issued by the service."""
    runtime = Runtime(settings, database=Database(database_dsn))
    try:
        issued = await AccessService(runtime).issue_token(
            issued_by="test", name="agent", scopes=AGENT_SCOPES, expires_at=None
        )
    finally:
        await runtime.database().close()
    return issued.token


@pytest.fixture
async def admin(server: str) -> AsyncIterator[httpx.AsyncClient]:
    """The operator, over plain HTTP with the bootstrap admin token (keys, rotations)."""
    headers = {"Authorization": f"Bearer {BOOTSTRAP_ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server, headers=headers, timeout=20) as client:
        yield client


async def _create_key(admin: httpx.AsyncClient, user_id: str) -> None:
    response = await admin.post("/api/keys/create", json={"user_id": user_id})
    assert response.status_code == 201, response.text


class RevealCounter:
    """Counts the reveals the client sends, on its own transport (an httpx event hook)."""

    def __init__(self) -> None:
        self.reveals = 0

    async def __call__(self, request: httpx.Request) -> None:
        if request.url.path.startswith("/api/keys/user/") and request.url.params.get("reveal"):
            self.reveals += 1


@pytest.fixture
def counter() -> RevealCounter:
    return RevealCounter()


@pytest.fixture
async def agent(
    server: str, agent_token: str, counter: RevealCounter
) -> AsyncIterator[AgentClient]:
    http = httpx.AsyncClient(timeout=20, event_hooks={"request": [counter]})
    async with http, AgentClient(server, agent_token, http=http) as client:
        yield client


async def test_a_burst_of_key_lookups_for_one_user_reveals_once(
    agent: AgentClient, admin: httpx.AsyncClient, counter: RevealCounter
) -> None:
    """GIVEN a user with a key
    WHEN 20 tasks ask the client for that user's key at once, and once more afterwards
    THEN all get the same secret, and the service was asked to reveal it exactly once."""
    await _create_key(admin, "burst")

    secrets = await asyncio.gather(*(agent.user_key("burst") for _ in range(20)))
    again = await agent.user_key("burst")

    assert len(set(secrets)) == 1
    assert secrets[0].startswith("sk-")
    assert again == secrets[0]
    assert counter.reveals == 1


async def test_forget_key_after_a_rotation_reveals_the_new_key(
    agent: AgentClient, admin: httpx.AsyncClient, counter: RevealCounter
) -> None:
    """GIVEN a user's key cached by the client
    WHEN the operator rotates the key and the client forgets the user's key
    THEN the cache still answers the old key before forget_key, and the new one after it."""
    await _create_key(admin, "rotated")
    old = await agent.user_key("rotated")
    rotated = await admin.post("/api/keys/rotate", json={"user_id": "rotated", "grace_seconds": 0})
    assert rotated.is_success, rotated.text

    assert await agent.user_key("rotated") == old  # cached: no reveal
    agent.forget_key("rotated")
    new = await agent.user_key("rotated")

    assert new != old
    assert counter.reveals == 2


async def test_reports_flushed_twice_are_stored_once(
    agent: AgentClient, admin: httpx.AsyncClient
) -> None:
    """GIVEN a user with a key
    WHEN two generations are reported and flushed, then reported and flushed again
    THEN the service stores them once (the second flush finds duplicates) and the month's usage
    counts two events and their cost, in Decimal."""
    await _create_key(admin, "reporter")
    for _ in range(2):
        await agent.report("reporter", "gen-1", "openai/gpt-4o", Decimal("0.25"), 10, 20, "bot")
        await agent.report("reporter", "gen-2", "openai/gpt-4o", "0.5")
        await agent.flush()

    usage = await agent.usage("reporter")

    assert (agent.stored, agent.duplicates, agent.dropped, agent.failed) == (2, 2, 0, 0)
    assert agent.buffered == 0
    assert usage.events == 2
    assert usage.reported_usd == Decimal("0.75")
    assert isinstance(usage.spent_usd, Decimal)


async def test_a_full_buffer_drops_reports_without_raising(
    server: str, agent_token: str, admin: httpx.AsyncClient
) -> None:
    """GIVEN a client whose report buffer holds 3 events
    WHEN 5 generations are reported before any flush
    THEN report() never raises, 2 are counted as dropped, and the 3 buffered are stored by the
    flush on leaving the client's context."""
    await _create_key(admin, "overflow")
    async with AgentClient(server, agent_token, buffer_size=3, batch_age_s=60) as small:
        for n in range(5):
            await small.report("overflow", f"ov-{n}", "openai/gpt-4o", "0.01")
        assert (small.buffered, small.dropped) == (3, 2)

    assert (small.stored, small.dropped, small.buffered) == (3, 2, 0)


async def test_put_user_creates_then_updates(agent: AgentClient) -> None:
    """GIVEN no such user
    WHEN the client puts the user twice, the second time with another tier
    THEN the first answer says created, the second says updated with the new tier."""
    first = await agent.put_user("subscriber", tier="free")
    second = await agent.put_user("subscriber", tier="standard", rotation_policy="monthly")

    assert first.created
    assert not second.created
    assert (second.tier, second.rotation_policy) == ("standard", "monthly")


async def test_an_unknown_token_raises_agent_error_with_code_and_request_id(server: str) -> None:
    """GIVEN a client holding a token the service never issued
    WHEN it asks for a user's usage
    THEN it raises AgentError with the status, the envelope's code and its request id."""
    async with AgentClient(server, "not-a-real-token") as stranger:
        with pytest.raises(AgentError) as raised:
            await stranger.usage("anyone")

    assert raised.value.status == 401
    assert raised.value.code
    assert raised.value.request_id
    assert not raised.value.retryable


async def test_a_token_without_reveal_scope_cannot_read_a_key(
    server: str, settings: Settings, database_dsn: str, admin: httpx.AsyncClient
) -> None:
    """GIVEN a service token with keys:read but not keys:reveal
    WHEN the client asks for a user's key
    THEN it raises AgentError 403 reveal_not_allowed, and nothing is cached."""
    await _create_key(admin, "guarded")
    runtime = Runtime(settings, database=Database(database_dsn))
    try:
        issued = await AccessService(runtime).issue_token(
            issued_by="test", name="reader", scopes=[Scope.KEYS_READ], expires_at=None
        )
    finally:
        await runtime.database().close()
    async with AgentClient(server, issued.token) as reader:
        for _ in range(2):
            with pytest.raises(AgentError) as raised:
                await reader.user_key("guarded")
            assert (raised.value.status, raised.value.code) == (403, "reveal_not_allowed")


async def test_an_unreachable_service_is_retried_then_given_up_without_raising() -> None:
    """GIVEN a client pointed at a loopback port nobody listens on, with 3 attempts
    WHEN a generation is reported and flushed
    THEN flush() does not raise, the event is counted as failed, and a direct call raises
    AgentError network_error (status 0, retryable)."""
    async with AgentClient(
        f"http://127.0.0.1:{free_port()}", "t", max_attempts=3, backoff_s=0.01
    ) as lost:
        await lost.report("u", "gen-lost", "openai/gpt-4o", "0.01")
        await lost.flush()
        assert (lost.failed, lost.buffered) == (1, 0)
        with pytest.raises(AgentError) as raised:
            await lost.usage("u")

    assert (raised.value.status, raised.value.code, raised.value.retryable) == (
        0,
        "network_error",
        True,
    )
