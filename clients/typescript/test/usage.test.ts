/** Usage reports against the running stack: batches, duplicates, shutdown, overflow, retries, and
 * the service's errors as AgentError. */

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  AgentError,
  type BudgetIncreaseGranted,
  type BudgetLayer,
  type Usage,
  type UsageReport,
} from "../src/index.js";
import { createKey, MemoryLogger, newClient, Recorder, units, useStack } from "./helpers.js";

const stack = useStack();

/** 1e-8 USD times n, as a decimal string: costs whose sums are exact. */
function cost(n: number): string {
  return `0.${String(n).padStart(8, "0")}`;
}

function event(userId: string, n: number): UsageReport {
  return {
    userId,
    generationId: `gen-${userId}-${n}`,
    model: "openai/gpt-4o",
    costUsd: cost(n),
    promptTokens: 10,
    completionTokens: 12,
    agentName: "usage-test",
  };
}

test("reports go in batches; a generation reported twice is counted once", async () => {
  const user = "usage-batches";
  await createKey(stack(), user);
  const recorder = new Recorder();
  const client = newClient(stack(), { fetch: recorder.fetch, batchSize: 100, batchAgeMs: 60_000 });
  try {
    const unique = Array.from({ length: 200 }, (_, n) => n + 1);
    const repeated = unique.filter((n) => n % 4 === 0); // 50 generations reported again
    for (const n of [...unique, ...repeated]) client.report(event(user, n));
    await client.flush();

    const usage = await client.usage(user);
    const total = unique.reduce((sum, n) => sum + units(cost(n)), 0n);
    assert.equal(usage.events, unique.length);
    assert.equal(units(usage.spent_usd), total, `spent ${usage.spent_usd}`);
    assert.equal(client.stored, 200);
    assert.equal(client.duplicates, 50);
    assert.equal(client.rejected + client.failed + client.dropped, 0);
    assert.equal(client.buffered, 0);
    assert.equal(recorder.usagePosts.length, Math.ceil(250 / 100));
  } finally {
    await client.close();
  }
});

test("close() sends what is buffered, without a flush()", async () => {
  const user = "usage-shutdown";
  await createKey(stack(), user);
  const recorder = new Recorder();
  const client = newClient(stack(), { fetch: recorder.fetch, batchAgeMs: 60_000 });
  for (let n = 1; n <= 3; n++) client.report(event(user, n));
  assert.equal(client.buffered, 3);
  assert.equal(recorder.usagePosts.length, 0, "nothing sent before close()");

  await client.close();

  assert.equal((await client.usage(user)).events, 3);
  assert.equal(client.stored, 3);
});

test("a full buffer drops reports, counted and logged, and keeps the rest", async () => {
  const user = "usage-overflow";
  await createKey(stack(), user);
  const logger = new MemoryLogger();
  const client = newClient(stack(), { bufferSize: 5, batchAgeMs: 60_000, logger });
  for (let n = 1; n <= 8; n++) client.report(event(user, n));

  assert.equal(client.dropped, 3);
  assert.equal(client.buffered, 5);
  assert.equal(logger.warnings.length, 3);
  assert.match(logger.warnings[0] ?? "", /gen-usage-overflow-6 dropped: the buffer is full/);

  await client.close();

  const usage = await client.usage(user);
  assert.equal(usage.events, 5);
  assert.equal(
    units(usage.spent_usd),
    [1, 2, 3, 4, 5].reduce((s, n) => s + units(cost(n)), 0n),
  );
  assert.equal(client.stored, 5);
});

test("a batch that meets a network error, then a 503, is retried and arrives once", async () => {
  const user = "usage-retry";
  await createKey(stack(), user);
  const recorder = new Recorder();
  recorder.fault = ({ method, url, nth }) => {
    if (method !== "POST" || url.pathname !== "/api/usage/log") return undefined;
    if (nth === 0) return new TypeError("fetch failed", { cause: new Error("ECONNRESET") });
    if (nth === 1) {
      const envelope = { error: { code: "unavailable", message: "down", request_id: "r-503" } };
      return new Response(JSON.stringify(envelope), { status: 503 });
    }
    return undefined;
  };
  const logger = new MemoryLogger();
  const client = newClient(stack(), { fetch: recorder.fetch, backoffMs: 5, logger });
  try {
    client.report(event(user, 1));
    client.report(event(user, 2));
    await client.flush();

    assert.deepEqual(
      recorder.usagePosts.map((c) => c.status),
      [0, 503, 200],
    );
    assert.equal(client.stored, 2);
    assert.equal(client.failed + client.duplicates, 0);
    assert.deepEqual(logger.errors, []);
    assert.equal((await client.usage(user)).events, 2);
  } finally {
    await client.close();
  }
});

test("a batch whose answer was lost is sent again and counted once, as duplicates", async () => {
  const user = "usage-lost-answer";
  await createKey(stack(), user);
  const recorder = new Recorder();
  const inner = recorder.fetch;
  let lost = false;
  const client = newClient(stack(), {
    backoffMs: 5,
    fetch: async (input, init) => {
      const response = await inner(input, init);
      if (!lost && String(input).endsWith("/api/usage/log")) {
        lost = true; // delivered, but the answer never comes back
        throw new TypeError("fetch failed", { cause: new Error("socket hang up") });
      }
      return response;
    },
  });
  try {
    client.report(event(user, 1));
    await client.flush();

    assert.equal(recorder.usagePosts.length, 2);
    assert.equal(client.stored, 0, "the answer of the attempt that stored it was lost");
    assert.equal(client.duplicates, 1);
    assert.equal((await client.usage(user)).events, 1);
  } finally {
    await client.close();
  }
});

test("retries give up after maxAttempts: counted in failed and logged", async () => {
  const recorder = new Recorder();
  recorder.fault = ({ url }) =>
    url.pathname === "/api/usage/log" ? new Response("busy", { status: 502 }) : undefined;
  const logger = new MemoryLogger();
  const client = newClient(stack(), {
    fetch: recorder.fetch,
    backoffMs: 1,
    maxAttempts: 3,
    logger,
  });
  client.report(event("usage-nobody", 1));
  await client.close();

  assert.equal(recorder.usagePosts.length, 3);
  assert.equal(client.failed, 1);
  assert.match(logger.errors[0] ?? "", /given up after 3 attempts/);
});

test("a batch over the service's body limit is split: only the oversized event fails", async () => {
  const user = "usage-oversized";
  await createKey(stack(), user);
  const recorder = new Recorder();
  const logger = new MemoryLogger();
  const client = newClient(stack(), { fetch: recorder.fetch, batchAgeMs: 60_000, logger });
  try {
    const huge = { ...event(user, 3), model: "m".repeat(2_000_000) }; // over the 1 MB limit
    for (const report of [event(user, 1), event(user, 2), huge, event(user, 4)]) {
      client.report(report);
    }
    await client.flush();

    assert.equal(client.stored, 3);
    assert.equal(client.failed, 1);
    assert.deepEqual(
      recorder.usagePosts.map((c) => c.status),
      [413, 200, 413, 413, 200],
      "4, then halves of 2, then the oversized one alone",
    );
    assert.equal(logger.errors.length, 1);
    assert.match(logger.errors[0] ?? "", /gen-usage-oversized-3 given up.*payload_too_large/);
    assert.equal((await client.usage(user)).events, 3);
  } finally {
    await client.close();
  }
});

test("the service's refusals are counted: per event rejected, a whole batch failed", async () => {
  const logger = new MemoryLogger();
  const client = newClient(stack(), { logger });
  client.report(event("usage-no-such-user", 1));
  await client.flush();
  assert.equal(client.rejected, 1);
  assert.match(logger.warnings[0] ?? "", /1 events rejected.*unknown_user/);

  const stranger = newClient(stack(), { token: "not-a-real-token", logger });
  stranger.report(event("usage-no-such-user", 2));
  await stranger.close();
  assert.equal(stranger.failed, 1, "a 401 is not retried");
  await client.close();
});

test("an unknown user's usage rejects with AgentError: status, code, request id", async () => {
  const recorder = new Recorder();
  const client = newClient(stack(), { fetch: recorder.fetch });
  const error = await client.usage("nobody-xyz").then(
    () => assert.fail("usage() of an unknown user succeeded"),
    (caught: unknown) => caught,
  );

  assert.ok(error instanceof AgentError, String(error));
  assert.equal(error.status, 404);
  assert.equal(error.code, "user_not_found");
  assert.match(error.requestId ?? "", /^[0-9a-f]{32}$/);
  assert.equal(error.retryable, false);
  assert.match(error.message, /nobody-xyz/);
  await client.close();
});

test("putUser creates, then updates, the user", async () => {
  const client = newClient(stack());
  const created = await client.putUser("usage-subscriber", { tier: "free" });
  const updated = await client.putUser("usage-subscriber", {
    tier: "standard",
    rotationPolicy: "monthly",
    reason: "client test",
  });

  assert.equal(created.created, true);
  assert.equal(updated.created, false);
  assert.deepEqual([updated.tier, updated.rotation_policy], ["standard", "monthly"]);
  await client.close();
});

test("grantBudgetIncrease raises the user's budget and their key's limit at once", async () => {
  const user = "usage-increase";
  await createKey(stack(), user); // tier free: $10 a month
  const recorder = new Recorder();
  const client = newClient(stack(), { fetch: recorder.fetch });
  try {
    const granted: BudgetIncreaseGranted = await client.grantBudgetIncrease(user, {
      amountUsd: "5",
      reason: "client test: a goodwill gesture",
    });
    assert.equal(granted.key_limit_status, "applied");
    assert.equal(granted.key_limit_usd, "15");
    assert.equal(granted.increase.user_id, user);
    assert.equal(units(granted.increase.amount_usd), units("5"));
    assert.equal(granted.increase.lapsed, false);
    const [post] = recorder.calls.filter((c) => c.method === "POST");
    assert.equal(post?.url.pathname, `/api/users/${user}/budget-increases`);
    assert.equal(post?.status, 201);

    const usage: Usage = await client.usage(user);
    assert.equal(usage.limit_usd, "15");
    // the layers OpenRouter enforces on the key, from the generated types
    const layers: BudgetLayer[] | null | undefined = usage.budget_layers;
    const limit = layers?.find((layer) => layer.source === "key_limit");
    assert.equal(limit === undefined ? undefined : units(limit.limit_usd), units("15"));
    assert.equal(usage.blocked_by ?? null, null);
    assert.equal(usage.budget_layers_error ?? null, null);

    const until = new Date(Date.now() + 3_600_000);
    const later = await client.grantBudgetIncrease(user, {
      amountUsd: 2.5,
      endsAt: until,
      reason: "client test: for an hour",
    });
    assert.equal(later.key_limit_usd, "17.5");
    assert.equal(Date.parse(later.increase.ends_at), until.getTime());
  } finally {
    await client.close();
  }
});

test("grantBudgetIncrease of an unknown user rejects with AgentError 404", async () => {
  const client = newClient(stack());
  const error = await client
    .grantBudgetIncrease("usage-nobody-increase", { amountUsd: "1", reason: "client test" })
    .catch((caught: unknown) => caught);
  assert.ok(error instanceof AgentError, String(error));
  assert.equal(error.status, 404);
  assert.equal(error.code, "user_not_found");
  await client.close();
});
