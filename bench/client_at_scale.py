"""The Python client at a platform's scale: reveals per minute for 10,000 active users with the
client's key cache, the reveals/s the local server sustains, and usage events/s with batching
versus one event per request.

    .venv/bin/python -m bench.client_at_scale [--users 10000] [--minutes 15] [--events 20000]

1. Reveals, in simulated time: the real AgentClient (its cache, single flight and the
   service's cache_for_s of 240 s, the default grace of 300 s) on a clock the benchmark moves,
   answered by a counting transport. Every user sends a request every 30 s on average
   (Poisson), to one instance of the service or to one of 10 (each with its own cache, as
   Lambda or Vercel instances have). Ceiling: the same traffic with no cache, a reveal a request.
2. The server: `openrouter-agent serve` as a process; reveals by 8 concurrent callers against
   the same route read without ?reveal (no decryption, no audit row, no rate-limit count).
3. Usage events: the client against that server, batches of 100 versus batch_size=1 (one event
   a request), beside raw batches of 100 posted 4 at a time with plain httpx (the ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import time
from collections import Counter

import httpx

from openrouter_agent_client import AgentClient
from tests.clients.local_stack import Stack, running_stack

REQUEST_GAP_S = 30.0  # an active user's mean time between two requests
CACHE_FOR_S = 240  # what the service advises with its default grace of 300 s


async def _simulated_reveals(users: int, minutes: int, instances: int) -> Counter[int]:
    """Reveals by minute of simulated time, over `instances` clients sharing the traffic."""
    now = [0.0]
    by_minute: Counter[int] = Counter()

    def answer(_: httpx.Request) -> httpx.Response:
        by_minute[int(now[0] // 60)] += 1
        return httpx.Response(200, json={"secret": "sk-or-v1-x", "cache_for_s": CACHE_FOR_S})

    transport = httpx.MockTransport(answer)
    clients = [
        AgentClient(
            "http://agent", "t", http=httpx.AsyncClient(transport=transport), clock=lambda: now[0]
        )
        for _ in range(instances)
    ]
    rng = random.Random(7)
    # every user's next request, in time order
    upcoming = [(rng.expovariate(1 / REQUEST_GAP_S), user) for user in range(users)]
    heapq.heapify(upcoming)
    end = minutes * 60.0
    while upcoming[0][0] < end:
        at, user = heapq.heappop(upcoming)
        now[0] = at
        await rng.choice(clients).user_key(f"user-{user}")
        heapq.heappush(upcoming, (at + rng.expovariate(1 / REQUEST_GAP_S), user))
    for client in clients:
        await client.aclose()
    return by_minute


async def _server_reveals(stack: Stack, users: list[str], seconds: float) -> tuple[float, float]:
    """(reveals/s, plain reads/s) by 8 concurrent callers of GET /api/keys/user/{id}."""
    headers = {"Authorization": f"Bearer {stack.service_token}"}

    async def rate(reveal: bool) -> float:
        done = 0
        deadline = time.perf_counter() + seconds
        async with httpx.AsyncClient(base_url=stack.agent_url, headers=headers, timeout=30) as http:

            async def caller(n: int) -> None:
                nonlocal done
                i = n
                while time.perf_counter() < deadline:
                    params = {"reveal": "true"} if reveal else {}
                    answer = await http.get(
                        f"/api/keys/user/{users[i % len(users)]}", params=params
                    )
                    if answer.status_code != 200:
                        raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")
                    done += 1
                    i += 8

            started = time.perf_counter()
            await asyncio.gather(*(caller(n) for n in range(8)))
            return done / (time.perf_counter() - started)

    return await rate(True), await rate(False)


async def _client_events(stack: Stack, user: str, events: int, batch_size: int) -> float:
    """Events/s from the first report() to the last event stored, through the client."""
    started = time.perf_counter()
    async with AgentClient(
        stack.agent_url, stack.service_token, batch_size=batch_size, buffer_size=events
    ) as client:
        for n in range(events):
            client.report(user, f"{user}-{batch_size}-{n}", "openai/gpt-4o", "0.000123")
            if n % batch_size == 0:
                await asyncio.sleep(0)  # the caller's own work: the flusher runs beside it
    elapsed = time.perf_counter() - started
    if client.stored != events:
        raise RuntimeError(f"stored {client.stored} of {events} (failed {client.failed})")
    return events / elapsed


async def _raw_batches(stack: Stack, user: str, events: int) -> float:
    """The ceiling: batches of 100 posted 4 at a time with plain httpx."""
    headers = {"Authorization": f"Bearer {stack.service_token}"}
    semaphore = asyncio.Semaphore(4)
    async with httpx.AsyncClient(base_url=stack.agent_url, headers=headers, timeout=60) as http:

        async def post(b: int) -> None:
            batch = [
                {
                    "user_id": user,
                    "generation_id": f"{user}-raw-{b}-{i}",
                    "model": "m",
                    "cost_usd": "0.000123",
                }
                for i in range(100)
            ]
            async with semaphore:
                answer = await http.post("/api/usage/log", json={"events": batch})
                if answer.status_code != 200 or answer.json()["stored"] != 100:
                    raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(post(b) for b in range(events // 100)))
        return events / (time.perf_counter() - started)


def _steady(by_minute: Counter[int], minutes: int) -> float:
    # after the cold start: the last two thirds of the run
    later = range(minutes // 3, minutes)
    return sum(by_minute[m] for m in later) / len(later)


async def _main(options: argparse.Namespace) -> None:
    users, minutes = options.users, options.minutes
    requests_per_minute = users * 60 / REQUEST_GAP_S
    print(f"reveals, {users} users each sending a request every {REQUEST_GAP_S:g} s on average:")
    print(f"  ceiling (no cache, a reveal a request): {requests_per_minute:,.0f} a minute")
    for instances in (1, 10):
        by_minute = await _simulated_reveals(users, minutes, instances)
        steady = _steady(by_minute, minutes)
        print(
            f"  {instances:>2} instance(s) with the client's cache: first minute {by_minute[0]:,},"
            f" then {steady:,.0f} a minute ({steady / requests_per_minute:.1%} of the ceiling)"
        )

    with running_stack(
        RATE_LIMIT_KEY_REVEALS_PER_MINUTE="1000000", RATE_LIMIT_KEY_WRITES_PER_MINUTE="1000000"
    ) as stack:
        admin = {"Authorization": f"Bearer {stack.admin_token}"}
        async with httpx.AsyncClient(base_url=stack.agent_url, headers=admin, timeout=60) as http:
            keyed = [f"bench-{n}" for n in range(20)]
            for user in keyed:
                made = await http.post("/api/keys/create", json={"user_id": user})
                if made.status_code != 201:
                    raise RuntimeError(made.text)
        reveals_s, reads_s = await _server_reveals(stack, keyed, options.seconds)
        print(
            f"server: {reveals_s:,.0f} reveals/s (ceiling: the same route without reveal "
            f"{reads_s:,.0f}/s; {reveals_s / reads_s:.2f} x), {reveals_s * 60:,.0f} a minute"
        )
        batched = await _client_events(stack, "bench-0", options.events, 100)
        single = await _client_events(stack, "bench-1", max(options.events // 10, 200), 1)
        raw = await _raw_batches(stack, "bench-2", options.events)
        print(
            f"usage events through the client: batches of 100 {batched:,.0f}/s, one event a"
            f" request {single:,.0f}/s ({batched / single:.0f} x); ceiling, raw batches of 100"
            f" 4 at a time {raw:,.0f}/s (client {batched / raw:.2f} x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=15)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="each server measurement")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
