/** Keys and chat against the running stack: reveals (cached, single-flight), a rotation and an
 * emergency rotation in the middle of a stream of chats, and a budget that runs out. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { AgentClient, BudgetExhaustedError, OpenRouterError } from "../src/index.js";
import type { RunningStack } from "../tools/stack.js";
import {
  admin,
  type Call,
  charge,
  createKey,
  newClient,
  Recorder,
  sleep,
  useStack,
} from "./helpers.js";

const stack = useStack();

const HELLO = { model: "openai/gpt-4o", messages: [{ role: "user", content: "hello" }] };

test("userKey reveals the key, and a burst of 100 calls for one user reveals it once", async () => {
  const recorder = new Recorder();
  const client = newClient(stack(), { fetch: recorder.fetch });
  try {
    const created = await createKey(stack(), "keys-alice");
    assert.equal(await client.userKey("keys-alice"), created);
    assert.equal(recorder.reveals, 1);

    await createKey(stack(), "keys-burst");
    const before = recorder.reveals;
    const secrets = await Promise.all(
      Array.from({ length: 100 }, () => client.userKey("keys-burst")),
    );
    const again = await client.userKey("keys-burst");

    assert.equal(new Set(secrets).size, 1);
    assert.match(secrets[0] ?? "", /^sk-or-/);
    assert.equal(again, secrets[0]);
    assert.equal(recorder.reveals - before, 1, "100 concurrent calls share one reveal");
  } finally {
    await client.close();
  }
});

interface StreamResult {
  completed: number;
  failures: unknown[];
  /** OpenRouter's 401s during the stream. */
  refused: number;
  /** Reveals that answered a key that works: the initial one, and one refresh per discovery. */
  fresh: string[];
  /** Reveals that answered a key OpenRouter had already refused, or a disabled one: wasted on
   * the service's rate limit (the refresh waits on the key's metadata instead). */
  stale: number;
}

/** `workers` callers chat in a loop; once `disruptAfter` calls are done, `disrupt` runs while
 * they go on, and the stream goes on for `after` more calls once it is done (so calls are sure
 * to meet the disrupted key), with at least `minimum` calls in all. */
async function chatStream(
  client: AgentClient,
  recorder: Recorder,
  userId: string,
  disrupt: () => Promise<void>,
  { workers = 4, minimum = 40, disruptAfter = 12, after = 12 } = {},
): Promise<StreamResult> {
  const start = recorder.calls.length;
  const failures: unknown[] = [];
  let completed = 0;
  let target = Number.POSITIVE_INFINITY;
  let disruption: Promise<void> | undefined;
  const worker = async (): Promise<void> => {
    while (completed < target) {
      try {
        const answer = await client.chat(userId, HELLO, { agentName: "stream" });
        assert.match(answer.id, /^gen-/);
      } catch (error) {
        failures.push(error);
      }
      completed += 1;
      if (completed >= disruptAfter && disruption === undefined) {
        disruption = disrupt().then(() => {
          target = Math.max(minimum, completed + after);
        });
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, worker));
  await disruption;
  const calls = recorder.calls.slice(start);
  const isRefusal = (c: Call): boolean =>
    c.url.pathname.endsWith("/chat/completions") && c.status === 401;
  // stale: the answer was a key that OpenRouter had refused before this reveal started
  const revealed = calls.flatMap((c, index) => {
    if (c.revealed === undefined) return [];
    const { secret, disabled } = c.revealed;
    const refused = calls.slice(0, index).some((p) => isRefusal(p) && p.bearer === secret);
    return [{ secret, stale: disabled || refused }];
  });
  return {
    completed,
    failures,
    refused: calls.filter(isRefusal).length,
    fresh: revealed.filter((r) => !r.stale).map((r) => r.secret),
    stale: revealed.filter((r) => r.stale).length,
  };
}

async function emergencyRotate(current: RunningStack, userId: string): Promise<void> {
  const started = await admin(current, "POST", "/api/admin/emergency-rotate", {
    reason: "client test: a leaked key",
    user_ids: [userId],
  });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const id = String(started.body["id"]);
  for (let status = String(started.body["status"]); status !== "completed";) {
    assert.notEqual(status, "failed", "the emergency rotation failed");
    await sleep(100);
    status = String(
      (await admin(current, "GET", `/api/admin/emergency-rotate/${id}`)).body["status"],
    );
  }
}

test("a rotation, then an emergency rotation, in the middle of chats fail no request", async () => {
  const recorder = new Recorder();
  const client = newClient(stack(), { fetch: recorder.fetch });
  const user = "keys-stream";
  try {
    const first = await createKey(stack(), user);

    const rotation = await chatStream(client, recorder, user, async () => {
      const rotated = await admin(stack(), "POST", "/api/keys/rotate", {
        user_id: user,
        grace_seconds: 0,
        reason: "client test",
      });
      assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
      const previous = rotated.body["previous_key"] as Record<string, unknown>;
      assert.equal(previous["state"], "revoked", "grace 0 ends the old key at once");
    });
    assert.deepEqual(rotation.failures, []);
    assert.ok(rotation.completed >= 40, `${rotation.completed} calls`);
    assert.ok(rotation.refused >= 1, "OpenRouter refused the rotated key at least once");
    const second = await client.userKey(user);
    assert.deepEqual(rotation.fresh, [first, second], "the initial reveal, then one refresh");
    assert.equal(rotation.stale, 0, "no reveal answered the refused key");
    assert.notEqual(second, first);

    const emergency = await chatStream(client, recorder, user, () =>
      emergencyRotate(stack(), user),
    );
    assert.deepEqual(emergency.failures, []);
    assert.ok(emergency.completed >= 40, `${emergency.completed} calls`);
    assert.ok(emergency.refused >= 1, "OpenRouter refused the disabled key at least once");
    const third = await client.userKey(user);
    assert.notEqual(third, second);
    assert.deepEqual(emergency.fresh, [third], "one refresh for the one discovery");
    assert.equal(emergency.stale, 0, "no reveal answered the disabled key");

    await client.flush();
    assert.equal(client.failed + client.rejected + client.dropped, 0);
    assert.equal(client.stored, rotation.completed + emergency.completed);

    // Reveals and the metadata reads while waiting for the new key skip the budget layers
    // (each would cost the service a call to OpenRouter).
    const lookups = recorder.calls.filter((c) => c.url.pathname === `/api/keys/user/${user}`);
    const reveals = lookups.filter((c) => c.url.searchParams.get("reveal") === "true");
    assert.ok(reveals.length >= 3 && lookups.length > reveals.length, `${lookups.length} lookups`);
    const withLayers = lookups.filter((c) => c.url.searchParams.get("budget_layers") !== "false");
    assert.deepEqual(
      withLayers.map((c) => c.url.href),
      [],
    );
  } finally {
    await client.close();
  }
});

test("a spent budget throws BudgetExhaustedError, without a refresh", async () => {
  const recorder = new Recorder();
  const client = newClient(stack(), { fetch: recorder.fetch });
  const user = "keys-broke";
  try {
    await createKey(stack(), user);
    await client.chat(user, HELLO);
    const secret = await client.userKey(user);
    const spent = await charge(stack(), secret, "9.99");
    assert.equal(spent.status, 200, JSON.stringify(spent.body));
    const before = recorder.calls.length;

    // 402: what is left cannot pay for the worst case of this request
    const large = { ...HELLO, max_tokens: 100_000 };
    const unaffordable = await client.chat(user, large).then(
      () => assert.fail("chat() succeeded past the budget"),
      (error: unknown) => error,
    );
    assert.ok(unaffordable instanceof BudgetExhaustedError, String(unaffordable));
    assert.equal(unaffordable.status, 402);
    assert.equal(unaffordable.userId, user);
    assert.match(unaffordable.message, /requires more credits/);

    // 403: nothing left at all
    const left = (spent.body["data"] as Record<string, unknown>)["limit_remaining"];
    assert.equal((await charge(stack(), secret, String(left))).status, 200);
    const exhausted = await client.chat(user, HELLO).then(
      () => assert.fail("chat() succeeded with nothing left"),
      (error: unknown) => error,
    );
    assert.ok(exhausted instanceof BudgetExhaustedError, String(exhausted));
    assert.equal(exhausted.status, 403);
    assert.match(exhausted.message, /Key limit exceeded/);

    const calls = recorder.calls.slice(before).map((c) => c.url.pathname);
    assert.deepEqual(
      calls.filter((path) => !path.endsWith("/api/usage/log")),
      ["/openrouter/api/v1/chat/completions", "/openrouter/api/v1/chat/completions"],
      "one request per call, and no key refresh: a budget refusal is not a stale key",
    );
  } finally {
    await client.close();
  }
});

test("a disabled key: one wait of refreshWaitMs, then at once; enabled again, it works", async () => {
  const recorder = new Recorder();
  const client = newClient(stack(), { fetch: recorder.fetch, refreshWaitMs: 500 });
  const user = "keys-disabled";
  try {
    await createKey(stack(), user);
    await client.chat(user, HELLO);
    const current = await admin(stack(), "GET", `/api/keys/user/${user}`);
    const keyId = String((current.body["key"] as Record<string, unknown>)["id"]);
    const disabled = await admin(stack(), "POST", `/api/keys/${keyId}/disable`);
    assert.equal(disabled.status, 200, JSON.stringify(disabled.body));

    const refused = async (): Promise<{ ms: number; calls: Call[] }> => {
      const [start, started] = [recorder.calls.length, performance.now()];
      const error = await client.chat(user, HELLO).catch((caught: unknown) => caught);
      assert.ok(error instanceof OpenRouterError, String(error));
      assert.ok(!(error instanceof BudgetExhaustedError), String(error));
      assert.equal(error.status, 401);
      return { ms: performance.now() - started, calls: recorder.calls.slice(start) };
    };
    const first = await refused();
    assert.ok(first.ms >= 450, `the first refusal waited ${first.ms} ms for a replacement`);
    const second = await refused();
    assert.ok(second.ms < 150, `the second refusal took ${second.ms} ms`);
    assert.deepEqual(
      second.calls.map((c) => `${c.method} ${c.url.pathname}${c.url.search}`),
      [`GET /api/keys/user/${user}?budget_layers=false`],
      "one metadata read (without the budget layers): no reveal, no request to OpenRouter",
    );

    const enabled = await admin(stack(), "POST", `/api/keys/${keyId}/enable`);
    assert.equal(enabled.status, 200, JSON.stringify(enabled.body));
    assert.match((await client.chat(user, HELLO)).id, /^gen-/);
    assert.match((await client.chat(user, HELLO)).id, /^gen-/);
  } finally {
    await client.close();
  }
});
