"""The Python client (openrouter_agent_client) against scripts/run's stack: `openrouter-agent
serve` as its own process (tests/clients/local_stack.py), its emulator standing in for
OpenRouter at /openrouter, the client calling both over real HTTP."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from openrouter_agent_client import (
    AgentClient,
    AgentError,
    BudgetExhausted,
    DailyCapReached,
    ModelNotAllowed,
    OpenRouterError,
    SyncAgentClient,
)
from tests.clients.local_stack import Stack, running_stack
from tests.serving import free_port

CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as running:
        yield running


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


class Wire:
    """What the client sent and what it was answered, seen on its own HTTP client."""

    def __init__(self) -> None:
        self.reveals = 0
        self.usage_posts = 0
        self.refused_by_openrouter: list[int] = []

    async def request(self, request: httpx.Request) -> None:
        if request.url.path.startswith("/api/keys/user/") and request.url.params.get("reveal"):
            self.reveals += 1
        if request.url.path == "/api/usage/log":
            self.usage_posts += 1

    async def response(self, response: httpx.Response) -> None:
        if "/chat/completions" in response.request.url.path and response.status_code >= 400:
            self.refused_by_openrouter.append(response.status_code)


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The operator over plain HTTP: keys, rotations, emergencies."""
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(base_url=stack.agent_url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
async def agent(stack: Stack, wire: Wire) -> AsyncIterator[AgentClient]:
    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [wire.request],
        "response": [wire.response],
    }
    http = httpx.AsyncClient(timeout=30, event_hooks=hooks)
    async with (
        http,
        AgentClient(
            stack.agent_url,
            stack.service_token,
            openrouter_base_url=stack.openrouter_url,
            http=http,
            backoff_s=0.05,
        ) as client,
    ):
        yield client


async def _create_key(admin: httpx.AsyncClient, user_id: str) -> None:
    response = await admin.post("/api/keys/create", json={"user_id": user_id})
    assert response.status_code == 201, response.text


async def _stream_of_chats(
    agent: AgentClient, user_id: str, calls: int, *, event_after: int, event: asyncio.Event
) -> list[BaseException | None]:
    """`calls` chat completions by 4 workers; `event` is set once `event_after` succeeded, and
    the workers pause until the test says the rotation happened (event cleared)."""
    outcomes: list[BaseException | None] = []
    queue = list(range(calls))

    async def worker() -> None:
        while queue:
            queue.pop()
            if len(outcomes) >= event_after and event.is_set():
                while event.is_set():  # the operator acts; traffic resumes after
                    await asyncio.sleep(0.01)
            try:
                await agent.chat(user_id, CHAT, agent_name="stream")
                outcomes.append(None)
            except Exception as error:  # the assertion counts them
                outcomes.append(error)
            if len(outcomes) == event_after:
                event.set()

    await asyncio.gather(*(worker() for _ in range(4)))
    return outcomes


async def test_a_burst_of_100_key_lookups_for_one_user_reveals_once(
    agent: AgentClient, admin: httpx.AsyncClient, wire: Wire, user: str
) -> None:
    """GIVEN a user with a key
    WHEN 100 tasks ask the client for that user's key at once, and once more afterwards
    THEN all get the same secret, and the service was asked to reveal it exactly once."""
    await _create_key(admin, user)

    secrets = await asyncio.gather(*(agent.user_key(user) for _ in range(100)))
    again = await agent.user_key(user)

    assert len(set(secrets)) == 1
    assert secrets[0].startswith("sk-")
    assert again == secrets[0]
    assert wire.reveals == 1


async def test_the_cache_follows_the_period_the_service_advises(
    stack: Stack, admin: httpx.AsyncClient, wire: Wire, user: str
) -> None:
    """GIVEN a client on a clock the test moves, and a service whose grace period is 300 s
    WHEN the user's key is asked 239 s after its reveal, then 241 s after
    THEN the first is served from the cache, the second reveals again (cache_for_s: 240)."""
    await _create_key(admin, user)
    now = [1000.0]
    hooks = {"request": [wire.request]}
    async with (
        httpx.AsyncClient(timeout=30, event_hooks=hooks) as http,
        AgentClient(stack.agent_url, stack.service_token, http=http, clock=lambda: now[0]) as a,
    ):
        await a.user_key(user)
        now[0] += 239
        await a.user_key(user)
        assert wire.reveals == 1
        now[0] += 2
        await a.user_key(user)

    assert wire.reveals == 2


async def test_a_rotation_in_a_stream_of_chats_fails_no_call(
    agent: AgentClient, admin: httpx.AsyncClient, wire: Wire, user: str
) -> None:
    """GIVEN a stream of 40 chat completions for one user through the client, 4 at a time
    WHEN the operator rotates the user's key with no grace in the middle of it
    THEN OpenRouter refused the old key (401) at least once, yet every call succeeded, and
    the client revealed twice (the first key, the new one): one reveal per discovery."""
    await _create_key(admin, user)
    pause = asyncio.Event()
    stream = asyncio.create_task(_stream_of_chats(agent, user, 40, event_after=10, event=pause))
    await pause.wait()
    rotated = await admin.post("/api/keys/rotate", json={"user_id": user, "grace_seconds": 0})
    assert rotated.is_success, rotated.text
    pause.clear()
    outcomes = await stream

    assert [o for o in outcomes if o is not None] == []
    assert len(outcomes) == 40
    assert 401 in wire.refused_by_openrouter
    assert wire.reveals == 2
    await agent.flush()
    assert agent.stored == 40


async def test_an_emergency_rotation_in_a_stream_of_chats_fails_no_call(
    agent: AgentClient, admin: httpx.AsyncClient, stack: Stack, wire: Wire, user: str
) -> None:
    """GIVEN a stream of 40 chat completions for one user, 4 at a time, and an OpenRouter that
    takes 1.5 s to make a key
    WHEN an admin starts an emergency rotation of the user's key in the middle of it, and the
    traffic goes on at once (the old key disabled first, the new one made 1.5 s later)
    THEN OpenRouter refused the old key, yet every call succeeded, on the new key, and the
    client revealed twice: the first key, then the new one once it existed (it read the key's
    metadata while the new key was being made, which reveals nothing)."""
    await _create_key(admin, user)
    before = await agent.user_key(user)
    slow = {"kind": "latency", "method": "POST", "path": "/keys", "delay_s": 1.5}
    emulator = stack.openrouter_url.removesuffix("/api/v1")
    assert httpx.post(emulator + "/_emulator/faults", json=slow).status_code == 204
    pause = asyncio.Event()
    stream = asyncio.create_task(_stream_of_chats(agent, user, 40, event_after=10, event=pause))
    await pause.wait()
    emergency = asyncio.create_task(
        admin.post("/api/admin/emergency-rotate", json={"reason": "drill", "user_ids": [user]})
    )
    async with httpx.AsyncClient(base_url=stack.openrouter_url) as watcher:
        await _until_refused(watcher, before)
    pause.clear()  # the traffic goes on while the new key is still being made
    outcomes = await stream
    started = await emergency
    assert started.status_code == 202, started.text
    progress = await _wait_for_emergency(admin, started.json()["id"])

    assert progress["failed"] == 0, progress
    assert [o for o in outcomes if o is not None] == []
    assert 401 in wire.refused_by_openrouter
    assert await agent.user_key(user) != before
    assert wire.reveals == 2


async def _until_refused(openrouter: httpx.AsyncClient, secret: str) -> None:
    """Until OpenRouter refuses this key (GET /key answers 401)."""
    for _ in range(1000):
        answer = await openrouter.get("/key", headers={"Authorization": f"Bearer {secret}"})
        if answer.status_code == 401:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the key was never disabled at OpenRouter")


async def _wait_for_emergency(admin: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    """The emergency's progress once its old keys are disabled at OpenRouter, or it ended."""
    for _ in range(600):
        progress: dict[str, object] = (
            await admin.get(f"/api/admin/emergency-rotate/{job_id}")
        ).json()
        items = progress.get("items")
        done = isinstance(items, list) and all(i["status"] != "pending" for i in items)
        if done or progress.get("status") in ("completed", "failed"):
            return progress
        await asyncio.sleep(0.05)
    raise AssertionError(f"the emergency rotation {job_id} did not move")


async def test_a_spent_budget_is_its_own_error_and_reveals_nothing_more(
    agent: AgentClient, admin: httpx.AsyncClient, stack: Stack, wire: Wire, user: str
) -> None:
    """GIVEN a free-tier user ($10) who spent all of it at OpenRouter
    WHEN their service asks the client for one more chat completion
    THEN it raises BudgetExhausted (OpenRouter's 403 "Key limit exceeded"), without revealing
    the key again, and reports nothing."""
    await _create_key(admin, user)
    key = await agent.user_key(user)
    emulator = stack.openrouter_url.removesuffix("/api/v1")
    charged = httpx.post(
        emulator + "/_emulator/charge",
        headers={"Authorization": f"Bearer {key}"},
        json={"cost": "10"},
    )
    assert charged.status_code == 200, charged.text

    with pytest.raises(BudgetExhausted) as raised:
        await agent.chat(user, CHAT)

    assert raised.value.status in (402, 403)
    assert raised.value.user_id == user
    assert wire.reveals == 1
    assert agent.buffered == 0


async def test_completions_are_reported_in_batches_and_duplicates_count_once(
    stack: Stack, admin: httpx.AsyncClient, wire: Wire, user: str
) -> None:
    """GIVEN a client sending batches of 10
    WHEN 25 chat completions are made and 5 of their generations reported a second time
    THEN 3 batches carried the 25, a fourth the 5 again; the service stored 25 and counted 5
    duplicates, and the user's month shows 25 events costing what OpenRouter answered."""
    await _create_key(admin, user)
    hooks = {"request": [wire.request]}
    costs: list[Decimal] = []
    async with (
        httpx.AsyncClient(timeout=30, event_hooks=hooks) as http,
        AgentClient(
            stack.agent_url,
            stack.service_token,
            openrouter_base_url=stack.openrouter_url,
            http=http,
            batch_size=10,
            batch_age_s=60,
        ) as client,
    ):
        answers = [await client.chat(user, CHAT) for _ in range(25)]
        costs = [a["usage"]["cost"] for a in answers]
        await client.flush()
        for answer in answers[:5]:
            client.report(user, answer["id"], answer["model"], answer["usage"]["cost"])
        await client.flush()
        usage = await client.usage(user)

    assert (client.stored, client.duplicates, client.dropped, client.failed) == (25, 5, 0, 0)
    assert wire.usage_posts == 4
    assert usage.events == 25
    assert usage.reported_usd == sum(costs)
    assert all(isinstance(c, Decimal) for c in costs)


async def test_leaving_the_client_flushes_what_is_buffered(
    stack: Stack, admin: httpx.AsyncClient, user: str
) -> None:
    """GIVEN a client whose batches would wait a minute
    WHEN 7 generations are reported and the client is left (the service shutting down)
    THEN all 7 reach the service."""
    await _create_key(admin, user)
    async with AgentClient(stack.agent_url, stack.service_token, batch_age_s=60) as client:
        for n in range(7):
            client.report(user, f"{user}-{n}", "openai/gpt-4o", "0.01")
        assert client.buffered == 7

    async with AgentClient(stack.agent_url, stack.service_token) as reader:
        usage = await reader.usage(user)
    assert (client.stored, client.buffered, usage.events) == (7, 0, 7)


async def test_a_full_buffer_drops_reports_without_raising_and_says_so(
    stack: Stack, admin: httpx.AsyncClient, user: str, caplog: pytest.LogCaptureFixture
) -> None:
    """GIVEN a client whose report buffer holds 3 events
    WHEN 5 generations are reported before any flush
    THEN report() never raises, 2 are counted as dropped and logged, and the 3 buffered are
    stored by the flush on leaving the client's context."""
    await _create_key(admin, user)
    caplog.set_level(logging.WARNING, logger="openrouter_agent_client")
    async with AgentClient(
        stack.agent_url, stack.service_token, buffer_size=3, batch_age_s=60
    ) as small:
        for n in range(5):
            small.report(user, f"{user}-ov-{n}", "openai/gpt-4o", "0.01")
        assert (small.buffered, small.dropped) == (3, 2)

    assert (small.stored, small.dropped, small.buffered) == (3, 2, 0)
    assert sum("buffer is full" in r.getMessage() for r in caplog.records) == 2


class FailingFirst(httpx.AsyncBaseTransport):
    """Answers the first POSTs of usage with the given failures, then passes them on."""

    def __init__(self, failures: list[int | None]) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self._failures = failures  # None: the connection breaks

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/usage/log" and self._failures:
            status = self._failures.pop(0)
            if status is None:
                raise httpx.ConnectError("connection reset", request=request)
            return httpx.Response(status, json={"error": {"code": "x", "message": "busy"}})
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()


async def test_a_batch_refused_by_a_5xx_a_429_and_a_broken_connection_arrives_once(
    stack: Stack, admin: httpx.AsyncClient, user: str
) -> None:
    """GIVEN a service that answers a batch with a broken connection, then 503, then 429
    WHEN the client flushes 3 generations
    THEN it tries again with backoff and the service stores each of them once."""
    await _create_key(admin, user)
    transport = FailingFirst([None, 503, 429])
    async with (
        httpx.AsyncClient(transport=transport, timeout=30) as http,
        AgentClient(stack.agent_url, stack.service_token, http=http, backoff_s=0.01) as client,
    ):
        for n in range(3):
            client.report(user, f"{user}-r-{n}", "openai/gpt-4o", "0.02")
        await client.flush()
        usage = await client.usage(user)

    assert (client.stored, client.duplicates, client.failed) == (3, 0, 0)
    assert transport._failures == []
    assert (usage.events, usage.reported_usd) == (3, Decimal("0.06"))


def test_the_sync_client_chats_reports_and_flushes_on_close(
    stack: Stack, user: str, wire: Wire
) -> None:
    """GIVEN synchronous code (no event loop) holding a SyncAgentClient
    WHEN it creates the user, makes 3 chat completions, and closes the client
    THEN the 3 completions' costs are in the user's month, and its key was revealed once."""
    admin = httpx.Client(
        base_url=stack.agent_url, headers={"Authorization": f"Bearer {stack.admin_token}"}
    )
    assert admin.post("/api/keys/create", json={"user_id": user}).status_code == 201
    with SyncAgentClient(
        stack.agent_url,
        stack.service_token,
        openrouter_base_url=stack.openrouter_url,
        batch_age_s=60,
    ) as agent:
        answers = [agent.chat(user, CHAT, agent_name="sync") for _ in range(3)]
        assert agent.put_user(user, tier="standard").tier == "standard"
    with SyncAgentClient(stack.agent_url, stack.service_token) as reader:
        usage = reader.usage(user)

    assert agent.client.stored == 3
    assert usage.events == 3
    assert usage.reported_usd == sum(a["usage"]["cost"] for a in answers)
    assert usage.limit_usd == Decimal(50)


async def test_put_user_creates_then_updates(agent: AgentClient, user: str) -> None:
    """GIVEN no such user
    WHEN the client puts the user twice, the second time with another tier
    THEN the first answer says created, the second says updated with the new tier."""
    first = await agent.put_user(user, tier="free")
    second = await agent.put_user(user, tier="standard", rotation_policy="monthly")

    assert first.created
    assert not second.created
    assert (second.tier, second.rotation_policy) == ("standard", "monthly")


async def test_an_unknown_token_raises_agent_error_with_code_and_request_id(stack: Stack) -> None:
    """GIVEN a client holding a token the service never issued
    WHEN it asks for a user's usage
    THEN it raises AgentError with the status, the envelope's code and its request id."""
    async with AgentClient(stack.agent_url, "not-a-real-token") as stranger:
        with pytest.raises(AgentError) as raised:
            await stranger.usage("anyone")

    assert raised.value.status == 401
    assert raised.value.code
    assert raised.value.request_id
    assert not raised.value.retryable


async def test_a_token_without_reveal_scope_cannot_read_a_key(
    stack: Stack, admin: httpx.AsyncClient, user: str
) -> None:
    """GIVEN a service token with keys:read but not keys:reveal
    WHEN the client asks for a user's key, twice
    THEN it raises AgentError 403 reveal_not_allowed each time (nothing is cached)."""
    await _create_key(admin, user)
    issued = await admin.post("/api/admin/tokens", json={"name": "reader", "scopes": ["keys:read"]})
    assert issued.status_code == 201, issued.text
    async with AgentClient(stack.agent_url, issued.json()["token"]) as reader:
        for _ in range(2):
            with pytest.raises(AgentError) as raised:
                await reader.user_key(user)
            assert (raised.value.status, raised.value.code) == (403, "reveal_not_allowed")


async def test_an_unreachable_service_is_retried_then_given_up_without_raising() -> None:
    """GIVEN a client pointed at a loopback port nobody listens on, with 3 attempts
    WHEN a generation is reported and flushed
    THEN flush() does not raise, the event is counted as failed, and a direct call raises
    AgentError network_error (status 0, retryable)."""
    async with AgentClient(
        f"http://127.0.0.1:{free_port()}", "t", max_attempts=3, backoff_s=0.01
    ) as lost:
        lost.report("u", "gen-lost", "openai/gpt-4o", "0.01")
        await lost.flush()
        assert (lost.failed, lost.buffered) == (1, 0)
        with pytest.raises(AgentError) as raised:
            await lost.usage("u")

    assert (raised.value.status, raised.value.code, raised.value.retryable) == (
        0,
        "network_error",
        True,
    )


async def test_what_a_service_hands_report_never_raises_and_good_events_survive_a_bad_one(
    stack: Stack, admin: httpx.AsyncClient, user: str
) -> None:
    """GIVEN a client, and a service that refuses any request over 1 MB (413)
    WHEN it is handed a float cost (as json.loads gives OpenRouter's), a None cost, and a
    batch of 4 where one event's model is 2 MB; then a report after the client is closed
    THEN report() never raises; the float is stored as it prints (0.00016); the None and the
    late report are dropped and counted; the batch is split until the 3 good events are stored
    and only the large one is given up."""
    await _create_key(admin, user)
    async with AgentClient(stack.agent_url, stack.service_token, batch_age_s=60) as client:
        client.report(user, f"{user}-float", "openai/gpt-4o", 0.00016)
        client.report(user, f"{user}-none", "openai/gpt-4o", None)  # type: ignore[arg-type]
        await client.flush()
        for n in range(4):
            model = "m" * 2_000_000 if n == 2 else "openai/gpt-4o"
            client.report(user, f"{user}-big-{n}", model, "0.01")
        await client.flush()
        usage = await client.usage(user)
    client.report(user, f"{user}-late", "openai/gpt-4o", "0.01")

    assert (client.stored, client.failed, client.dropped, client.buffered) == (4, 1, 2, 0)
    assert (usage.events, usage.reported_usd) == (4, Decimal("0.03016"))


async def test_a_token_never_appears_in_an_error_or_a_log_line(
    stack: Stack, user: str, caplog: pytest.LogCaptureFixture
) -> None:
    """GIVEN a service token read from a file with its newline (an illegal header value)
    WHEN the client asks for usage and reports a generation it cannot send
    THEN the error and the log lines say what failed without the token."""
    caplog.set_level(logging.DEBUG, logger="openrouter_agent_client")
    token = stack.service_token + "\n"
    async with AgentClient(stack.agent_url, token, max_attempts=1) as client:
        with pytest.raises(AgentError) as raised:
            await client.usage(user)
        client.report(user, f"{user}-x", "openai/gpt-4o", "0.01")
        await client.flush()

    assert raised.value.code == "network_error"
    assert stack.service_token not in str(raised.value)
    assert client.failed == 1
    assert all(stack.service_token not in r.getMessage() for r in caplog.records)


def test_the_sync_client_after_close_drops_and_counts_without_raising(stack: Stack) -> None:
    """GIVEN a SyncAgentClient that was closed
    WHEN its caller still reports and forgets a key
    THEN nothing raises and the report is counted as dropped."""
    agent = SyncAgentClient(stack.agent_url, stack.service_token)
    agent.close()

    agent.report("anyone", "gen-after-close", "openai/gpt-4o", "0.01")
    agent.forget_key("anyone")

    assert agent.client.dropped == 1


async def test_a_disabled_key_fails_fast_after_the_first_wait_and_works_once_enabled(
    stack: Stack, admin: httpx.AsyncClient, wire: Wire, user: str
) -> None:
    """GIVEN a user whose key an admin disabled (the service names no other key)
    WHEN their service makes three chat completions, and one more after the key is enabled
    THEN the first fails after waiting refresh_wait_s for a new key, the next two at once
    (no wait, no reveal), and the one after the enable succeeds on the same key."""
    await _create_key(admin, user)
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [wire.request]}
    async with (
        httpx.AsyncClient(timeout=30, event_hooks=hooks) as http,
        AgentClient(
            stack.agent_url,
            stack.service_token,
            openrouter_base_url=stack.openrouter_url,
            http=http,
            refresh_wait_s=1.0,
        ) as client,
    ):
        await client.chat(user, CHAT)
        key_id = (await admin.get(f"/api/keys/user/{user}")).json()["key"]["id"]
        assert (await admin.post(f"/api/keys/{key_id}/disable")).status_code == 200
        took = []
        for _ in range(3):
            started = asyncio.get_running_loop().time()
            with pytest.raises(OpenRouterError) as refused:
                await client.chat(user, CHAT)
            took.append(asyncio.get_running_loop().time() - started)
            assert refused.value.status == 401
        assert (await admin.post(f"/api/keys/{key_id}/enable")).status_code == 200
        answer = await client.chat(user, CHAT)

    assert took[0] >= 1.0
    assert max(took[1:]) < 0.5
    assert answer["id"].startswith("gen-")
    assert wire.reveals == 1


class HeldReveals(httpx.AsyncBaseTransport):
    """Holds every reveal until the test releases it; says when one has arrived."""

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()
        self.reveals = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("reveal"):
            self.reveals += 1
            self.arrived.set()
            await self.released.wait()
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()


async def test_forgetting_a_key_during_its_reveal_keeps_the_reveal_out_of_the_cache(
    stack: Stack, admin: httpx.AsyncClient, user: str
) -> None:
    """GIVEN a reveal of the user's key in flight (held at the transport) and nothing cached
    WHEN the caller forgets the key it was refused with, then the reveal ends
    THEN the reveal in flight was not cached: the next call reveals again."""
    await _create_key(admin, user)
    transport = HeldReveals()
    async with (
        httpx.AsyncClient(transport=transport, timeout=30) as http,
        AgentClient(stack.agent_url, stack.service_token, http=http) as client,
    ):
        in_flight = asyncio.create_task(client.user_key(user))
        await transport.arrived.wait()
        client.forget_key(user, "sk-or-v1-the-refused-one")
        transport.released.set()
        await in_flight
        await client.user_key(user)

    assert transport.reveals == 2


# 88 prompt tokens (3 for the message, 340 characters / 4) and the 12 of the emulator's reply:
# exactly $0.001 at its $0.00001 a token.
CAPPED_CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 340}]}
SetPolicy = Callable[..., Awaitable[None]]


@pytest.fixture
async def free_policy(admin: httpx.AsyncClient) -> AsyncIterator[SetPolicy]:
    """Sets the free tier's policy (its guardrail at OpenRouter) for one test; the tier is
    unrestricted again after it, for the tests that follow on the same stack."""

    async def put(**policy: object) -> None:
        response = await admin.put("/api/admin/tiers/free/policy", json=policy)
        assert response.status_code == 200, response.text

    yield put
    await put()


def _next_utc_midnight(moment: datetime) -> datetime:
    return datetime.combine(moment.date() + timedelta(days=1), time(), UTC)


async def test_a_spent_daily_cap_is_daily_cap_reached_with_its_reset_time(
    agent: AgentClient, admin: httpx.AsyncClient, free_policy: SetPolicy, wire: Wire, user: str
) -> None:
    """GIVEN the free tier capped at $0.001 a UTC day ($10 a month), and a free user's key
    WHEN their service makes two chat completions of $0.001 each
    THEN the first is served; the second raises DailyCapReached (a BudgetExhausted): the daily
    window, resetting at the next UTC midnight, the key not revealed again; the user's usage
    shows the tier's daily layer blocking while the month has nearly all of its $10 left."""
    await free_policy(daily_cap_usd="0.001", reason="a tenth of a cent a day")
    await _create_key(admin, user)
    before = datetime.now(UTC)
    first = await agent.chat(user, CAPPED_CHAT)
    with pytest.raises(DailyCapReached) as raised:
        await agent.chat(user, CAPPED_CHAT)
    after = datetime.now(UTC)
    usage = await agent.usage(user)

    assert first["usage"]["cost"] == Decimal("0.001")
    assert isinstance(raised.value, BudgetExhausted)
    assert (raised.value.status, raised.value.user_id, raised.value.interval) == (
        403,
        user,
        "daily",
    )
    assert raised.value.resets_at in {_next_utc_midnight(before), _next_utc_midnight(after)}
    assert wire.reveals == 1
    assert usage.blocked_by is not None
    assert (usage.blocked_by.source, usage.blocked_by.interval) == ("tier_policy", "daily")
    assert usage.blocked_by.remaining_usd == 0
    assert usage.blocked_by.resets_at == raised.value.resets_at
    assert usage.budget_layers is not None
    month = [layer for layer in usage.budget_layers if layer.source == "key_limit"]
    assert [(m.interval, m.remaining_usd) for m in month] == [("monthly", Decimal("9.999"))]


class KeyReads:
    """The client's reads of a user's key metadata (no reveal): what it does for a refused key."""

    def __init__(self) -> None:
        self.metadata_reads = 0

    async def request(self, request: httpx.Request) -> None:
        path = request.url.path
        if path.startswith("/api/keys/user/") and not request.url.params.get("reveal"):
            self.metadata_reads += 1


@pytest.mark.parametrize(
    ("policy", "request_", "status"),
    [
        ({"allowed_models": ["openai/gpt-4o-mini"]}, {"model": "anthropic/claude-opus-4"}, 403),
        ({"allowed_providers": ["Anthropic"]}, {"model": "openai/gpt-4o-mini"}, 404),
    ],
    ids=["model", "provider"],
)
async def test_a_model_or_provider_outside_the_tiers_allowlist_is_not_a_refused_key(
    stack: Stack,
    admin: httpx.AsyncClient,
    free_policy: SetPolicy,
    wire: Wire,
    user: str,
    policy: dict[str, list[str]],
    request_: dict[str, str],
    status: int,
) -> None:
    """GIVEN the free tier restricted to some models (or providers), and a free user's key
    WHEN their service asks for a chat completion the tier's guardrail refuses
    THEN chat() raises ModelNotAllowed at once, naming the model: the key was not revealed
    again, nor its metadata read, nor the call made twice (it is not a refused key)."""
    await free_policy(**policy)
    await _create_key(admin, user)
    reads = KeyReads()
    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [wire.request, reads.request],
        "response": [wire.response],
    }
    async with (
        httpx.AsyncClient(timeout=30, event_hooks=hooks) as http,
        AgentClient(
            stack.agent_url,
            stack.service_token,
            openrouter_base_url=stack.openrouter_url,
            http=http,
            refresh_wait_s=5.0,
        ) as client,
    ):
        started = asyncio.get_running_loop().time()
        with pytest.raises(ModelNotAllowed) as raised:
            await client.chat(user, {**CHAT, **request_})
        took = asyncio.get_running_loop().time() - started

    assert (raised.value.status, raised.value.model, raised.value.user_id) == (
        status,
        request_["model"],
        user,
    )
    assert not isinstance(raised.value, BudgetExhausted)
    assert (wire.reveals, reads.metadata_reads, wire.refused_by_openrouter) == (1, 0, [status])
    assert took < 5.0


async def test_the_subscription_system_grants_an_increase_the_key_follows(
    agent: AgentClient, admin: httpx.AsyncClient, user: str
) -> None:
    """GIVEN a free user ($10) with a key
    WHEN the subscription system grants $5 until a date through the client
    THEN the answer says the key's limit is $15, and the user's month shows a $15 limit."""
    await _create_key(admin, user)
    until = datetime.now(UTC) + timedelta(days=3)

    granted = await agent.grant_budget_increase(user, "5", "promotion", ends_at=until)
    usage = await agent.usage(user)

    assert (granted.key_limit_status, granted.key_limit_usd) == ("applied", Decimal(15))
    assert granted.increase.amount_usd == Decimal(5)
    assert usage.limit_usd == Decimal(15)
