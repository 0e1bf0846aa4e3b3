/** Tier policies against the running stack: OpenRouter (the emulator) enforces a tier's daily cap
 * and model and provider allowlists through the tier's guardrail, and chat() tells its refusals
 * apart from a refused key: no reveal, no wait for another key. The policies are the "beta"
 * tier's, set by each test and cleared after it: other tests of the stack use the free tier. */

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BudgetExhaustedError,
  DailyCapReachedError,
  ModelNotAllowedError,
} from "../src/index.js";
import { admin, type Call, charge, newClient, Recorder, useStack } from "./helpers.js";

const stack = useStack();

const TIER = "beta";
const CHEAP = "openai/gpt-4o-mini";
const DEAR = "anthropic/claude-opus-4";
const REFRESH_WAIT_MS = 2000; // what a refusal taken for a refused key would wait
const hello = (model: string, extra: Record<string, unknown> = {}) => ({
  model,
  messages: [{ role: "user", content: "hello" }], // one emulated chat: 17 tokens, $0.00017
  ...extra,
});

/** Runs `body` with the beta tier's policy set, and clears the policy after, whatever happens. */
async function withPolicy(policy: Record<string, unknown>, body: () => Promise<void>) {
  const set = await admin(stack(), "PUT", `/api/admin/tiers/${TIER}/policy`, policy);
  assert.equal(set.status, 200, JSON.stringify(set.body));
  assert.ok(set.body["guardrail_id"], "the policy is enforced by a guardrail");
  try {
    await body();
  } finally {
    const cleared = await admin(stack(), "PUT", `/api/admin/tiers/${TIER}/policy`, {});
    assert.equal(cleared.status, 200, JSON.stringify(cleared.body));
  }
}

/** A beta user's key, made after the policy: assigned to the tier's guardrail at once. */
async function betaKey(userId: string): Promise<string> {
  const created = await admin(stack(), "POST", "/api/keys/create", { user_id: userId, tier: TIER });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return created.body["secret"] as string;
}

/** Every request but the background usage reports. */
const requests = (calls: Call[]): string[] =>
  calls
    .filter((c) => c.url.pathname !== "/api/usage/log")
    .map((c) => `${c.method} ${c.url.pathname}${c.url.search}`);

const nextUtcMidnight = (moment: Date): number =>
  Date.UTC(moment.getUTCFullYear(), moment.getUTCMonth(), moment.getUTCDate() + 1);

test("a tier's daily cap spent throws DailyCapReachedError until next UTC midnight, no refresh", async () => {
  await withPolicy({ daily_cap_usd: "0.0003", allowed_models: [CHEAP] }, async () => {
    const user = "policy-capped";
    const secret = await betaKey(user);
    const recorder = new Recorder();
    const client = newClient(stack(), { fetch: recorder.fetch, refreshWaitMs: REFRESH_WAIT_MS });
    try {
      const started = new Date();
      assert.match((await client.chat(user, hello(CHEAP))).id, /^gen-/);
      const before = recorder.calls.length;

      // 402 when what is left today cannot pay for this chat's worst case
      let capped: unknown;
      for (let chats = 2; chats <= 3 && capped === undefined; chats++) {
        capped = await client.chat(user, hello(CHEAP)).then(
          () => undefined,
          (error: unknown) => error,
        );
      }
      assert.ok(capped instanceof DailyCapReachedError, String(capped));
      assert.ok(capped instanceof BudgetExhaustedError, "a budget refusal, as the key limit's");
      assert.equal(capped.status, 402);
      assert.equal(capped.userId, user);
      assert.ok(capped.resetsAt instanceof Date, String(capped.resetsAt));
      assert.ok(
        [nextUtcMidnight(started), nextUtcMidnight(new Date())].includes(capped.resetsAt.getTime()),
        `resetsAt ${capped.resetsAt.toISOString()} is the next UTC midnight`,
      );

      // 403 once nothing is left today (spent elsewhere): the message names the daily budget
      const metadata = (capped.body as { error: { metadata: Record<string, number> } }).error
        .metadata;
      const left = (Number(metadata["limit_usd"]) - Number(metadata["spend_usd"])).toFixed(8);
      const spent = await charge(stack(), secret, left);
      assert.equal(spent.status, 200, JSON.stringify(spent.body));
      const startedAt = performance.now();
      const exhausted = await client.chat(user, hello(CHEAP)).catch((error: unknown) => error);
      const ms = performance.now() - startedAt;
      assert.ok(exhausted instanceof DailyCapReachedError, String(exhausted));
      assert.equal(exhausted.status, 403);
      assert.equal(exhausted.interval, "daily");
      assert.equal(exhausted.resetsAt?.getTime(), capped.resetsAt.getTime());
      assert.ok(ms < REFRESH_WAIT_MS / 2, `the refusal took ${ms} ms: no wait for another key`);

      const chats = requests(recorder.calls.slice(before));
      assert.ok(chats.length >= 2 && chats.length <= 3, chats.join(", "));
      assert.ok(
        chats.every((c) => c === "POST /openrouter/api/v1/chat/completions"),
        `one request to OpenRouter per chat, no key lookup nor reveal: ${chats.join(", ")}`,
      );
      assert.equal(recorder.reveals, 1);
    } finally {
      await client.close();
    }
  });
});

test("a model or provider outside the tier's allowlists throws ModelNotAllowedError at once", async () => {
  const policy = { allowed_models: [CHEAP], allowed_providers: ["OpenAI"], reason: "ts client" };
  await withPolicy(policy, async () => {
    const user = "policy-dear";
    await betaKey(user);
    const recorder = new Recorder();
    const client = newClient(stack(), { fetch: recorder.fetch, refreshWaitMs: REFRESH_WAIT_MS });
    try {
      assert.match((await client.chat(user, hello(CHEAP))).id, /^gen-/);
      const before = recorder.calls.length;

      const refused = async (request: ReturnType<typeof hello>): Promise<ModelNotAllowedError> => {
        const startedAt = performance.now();
        const error = await client.chat(user, request).catch((caught: unknown) => caught);
        const ms = performance.now() - startedAt;
        assert.ok(error instanceof ModelNotAllowedError, String(error));
        assert.ok(!(error instanceof BudgetExhaustedError), String(error));
        assert.equal(error.userId, user);
        assert.equal(error.model, request.model);
        assert.ok(ms < REFRESH_WAIT_MS / 2, `the refusal took ${ms} ms: no wait for another key`);
        return error;
      };
      const model = await refused(hello(DEAR));
      assert.equal(model.status, 403);
      assert.match(model.message, /not allowed/);
      const provider = await refused(hello(CHEAP, { provider: { only: ["Anthropic"] } }));
      assert.equal(provider.status, 404);
      assert.match(provider.message, /No endpoints available matching your guardrail restrictions/);
      assert.equal((await refused(hello(DEAR))).status, 403, "refused the same way again");

      // the key was never in doubt: it serves the allowed model, still without a lookup
      assert.match((await client.chat(user, hello(CHEAP))).id, /^gen-/);
      assert.deepEqual(
        requests(recorder.calls.slice(before)),
        Array(4).fill("POST /openrouter/api/v1/chat/completions"),
        "one request to OpenRouter per chat: no reveal, no key metadata polled",
      );
      assert.equal(recorder.reveals, 1);
    } finally {
      await client.close();
    }
  });
});
