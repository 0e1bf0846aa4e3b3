/** The client's own logic against a scripted fetch (no stack): what the service cannot be made
 * to do on cue, such as a reveal that is still in flight when the key is forgotten. */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { test } from "node:test";

import {
  AgentClient,
  AgentError,
  BudgetExhaustedError,
  DailyCapReachedError,
  ModelNotAllowedError,
  OpenRouterError,
  type AgentClientOptions,
} from "../src/index.js";
import { MemoryLogger } from "./helpers.js";

const json = (status: number, body: unknown, headers: Record<string, string> = {}): Response =>
  new Response(JSON.stringify(body), { status, headers });

/** The scripted service's id of a secret's key (KeyInfo.id). */
const idOf = (secret: string): string => `key-${secret}`;

/** A scripted service and OpenRouter: reveals answer `secrets` in turn (or what `holding` says);
 * the key's metadata (GET without reveal) names the key the next reveal answers, unless `meta`
 * says otherwise. */
class Script {
  secrets: string[] = [];
  holding: (() => string) | undefined; // the secret the service holds now, if not `secrets`
  cacheForS: number | null = 240;
  reveals = 0;
  lookups = 0; // GETs of the key's metadata, without reveal
  keyUrls: URL[] = []; // every GET of the key, reveal or not
  chats: { key: string; body: Record<string, unknown> }[] = [];
  chat: (key: string) => Response = () => json(200, completion());
  meta: ((lookup: number) => Response | undefined) | undefined;
  gate: Promise<void> | undefined; // holds the reveals while set

  readonly fetch: typeof globalThis.fetch = async (input, init) => {
    const url = new URL(String(input));
    if (url.pathname.startsWith("/api/keys/user/")) {
      this.keyUrls.push(url);
      const secret =
        this.holding?.() ?? this.secrets[Math.min(this.reveals, this.secrets.length - 1)] ?? "";
      if (url.searchParams.get("reveal") !== "true") {
        this.lookups += 1;
        const scripted = this.meta?.(this.lookups);
        if (scripted !== undefined) return scripted;
        return json(200, { secret: null, key: { id: idOf(secret), disabled: false } });
      }
      this.reveals += 1;
      await this.gate;
      const key = { id: idOf(secret), disabled: false };
      return json(200, { secret, cache_for_s: this.cacheForS, key });
    }
    if (url.pathname.endsWith("/chat/completions")) {
      const key = new Headers(init?.headers).get("authorization")?.slice(7) ?? "";
      this.chats.push({ key, body: JSON.parse(String(init?.body)) as Record<string, unknown> });
      return this.chat(key);
    }
    throw new TypeError("fetch failed");
  };

  client(options: Partial<AgentClientOptions> = {}): AgentClient {
    return new AgentClient({
      baseUrl: "http://agent.test",
      token: "t",
      openrouterBaseUrl: "http://openrouter.test/api/v1",
      fetch: this.fetch,
      batchAgeMs: 60_000,
      ...options,
    });
  }
}

function completion(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: "gen-1",
    model: "m",
    choices: [],
    usage: { prompt_tokens: 4, completion_tokens: 12, total_tokens: 16, cost: 1.6e-7 },
    ...extra,
  };
}

const HELLO = { model: "m", messages: [{ role: "user", content: "hi" }] };

test("a reveal in flight when the key is forgotten does not fill the cache", async () => {
  const script = new Script();
  script.secrets = ["sk-old", "sk-new"];
  let open!: () => void;
  script.gate = new Promise((resolve) => (open = resolve));
  const client = script.client();

  const inFlight = client.userKey("u");
  client.forgetKey("u");
  open();
  assert.equal(await inFlight, "sk-old"); // its caller gets what it asked for...
  assert.equal(await client.userKey("u"), "sk-new"); // ...but the cache does not keep it
  assert.equal(await client.userKey("u"), "sk-new");
  assert.equal(script.reveals, 2);
});

test("forgetKey(userId, secret) with nothing cached drops the reveal in flight", async () => {
  const script = new Script();
  script.secrets = ["sk-old", "sk-new"];
  let open!: () => void;
  script.gate = new Promise((resolve) => (open = resolve));
  const client = script.client();

  const inFlight = client.userKey("u"); // may answer the key the caller below found refused
  client.forgetKey("u", "sk-old");
  open();
  assert.equal(await inFlight, "sk-old");
  assert.equal(await client.userKey("u"), "sk-new", "the in-flight answer was not cached");
  assert.equal(script.reveals, 2);
});

test("forgetKey(userId, secret) spares the refresh in flight that replaces that key", async () => {
  const script = new Script();
  script.secrets = ["sk-1", "sk-2"];
  script.chat = (key) =>
    key === "sk-1" ? json(401, { error: { message: "User not found." } }) : json(200, completion());
  let lookedUp!: () => void;
  const firstLookup = new Promise<void>((resolve) => (lookedUp = resolve));
  script.meta = (lookup) => {
    lookedUp();
    return lookup === 1 ? json(200, { secret: null, key: { id: idOf("sk-1") } }) : undefined;
  };
  const client = script.client();
  await client.userKey("u");

  const chat = client.chat("u", HELLO); // meets sk-1's refusal and waits for its replacement
  await firstLookup;
  client.forgetKey("u", "sk-1"); // another caller that met sk-1
  assert.equal((await chat).id, "gen-1");
  assert.equal(await client.userKey("u"), "sk-2", "the refresh's key was cached");
  assert.equal(script.reveals, 2, "the initial reveal and one refresh");
});

test("forgetKey(userId, secret) forgets only that key", async () => {
  const script = new Script();
  script.secrets = ["sk-1", "sk-2", "sk-3"];
  const client = script.client();
  await client.userKey("u");
  client.forgetKey("u", "sk-1");
  assert.equal(await client.userKey("u"), "sk-2");
  client.forgetKey("u", "sk-1"); // another caller that met sk-1: already replaced
  assert.equal(await client.userKey("u"), "sk-2");
  assert.equal(script.reveals, 2);
});

test("the cache keeps a key for min(keyTtlMs, cache_for_s)", async () => {
  let now = 0;
  const script = new Script();
  script.secrets = ["sk-1", "sk-2", "sk-3", "sk-4", "sk-5", "sk-6"];
  script.cacheForS = 10;
  const followed = script.client({ now: () => now });
  await followed.userKey("u");
  now = 9_999;
  assert.equal(await followed.userKey("u"), "sk-1");
  now = 10_000;
  assert.equal(await followed.userKey("u"), "sk-2", "the service's 10 s");

  const longer = script.client({ now: () => now, keyTtlMs: 60_000 });
  now = 0;
  assert.equal(await longer.userKey("v"), "sk-3");
  now = 10_000;
  assert.equal(await longer.userKey("v"), "sk-4", "cache_for_s caps keyTtlMs");

  script.cacheForS = 240;
  const shorter = script.client({ now: () => now, keyTtlMs: 3_000 });
  now = 0;
  assert.equal(await shorter.userKey("w"), "sk-5");
  now = 2_999;
  assert.equal(await shorter.userKey("w"), "sk-5");
  now = 3_000;
  assert.equal(await shorter.userKey("w"), "sk-6", "keyTtlMs below cache_for_s wins");
});

test("chat adds usage.include, keeps the request, and reports the cost as a decimal", async () => {
  const script = new Script();
  script.secrets = ["sk-1"];
  const client = script.client();
  const answer = await client.chat(
    "u",
    { ...HELLO, max_tokens: 5, temperature: 0 },
    {
      agentName: "bot",
    },
  );

  assert.equal(answer.id, "gen-1");
  assert.deepEqual(script.chats[0]?.body, {
    ...HELLO,
    max_tokens: 5,
    temperature: 0,
    usage: { include: true },
  });
  assert.equal(client.buffered, 1);
  let sent: unknown;
  const capture = script.client({
    fetch: async (input, init) => {
      if (String(input).endsWith("/api/usage/log")) {
        sent = JSON.parse(String(init?.body));
        return json(200, { stored: 1, duplicates: 0, rejected: 0, events: [], users: [] });
      }
      return script.fetch(input, init);
    },
  });
  await capture.chat("u", HELLO, { agentName: "bot" });
  await capture.close();
  assert.deepEqual(sent, {
    events: [
      {
        user_id: "u",
        generation_id: "gen-1",
        model: "m",
        cost_usd: "0.00000016",
        prompt_tokens: 4,
        completion_tokens: 12,
        agent_name: "bot",
      },
    ],
  });
});

test("a key refused twice is retried once only: OpenRouterError 401", async () => {
  const script = new Script();
  script.secrets = ["sk-1", "sk-2"];
  script.chat = () => json(401, { error: { code: 401, message: "User not found." } });
  const client = script.client();
  const error = await client.chat("u", HELLO).catch((caught: unknown) => caught);

  assert.ok(error instanceof OpenRouterError, String(error));
  assert.equal(error.status, 401);
  assert.equal(error.message, "User not found.");
  assert.deepEqual(
    script.chats.map((c) => c.key),
    ["sk-1", "sk-2"],
  );
});

test("a refresh waits while the service still holds the refused key, then reveals once", async () => {
  const script = new Script();
  script.secrets = ["sk-1", "sk-2"];
  script.chat = (key) =>
    key === "sk-1" ? json(401, { error: { message: "User not found." } }) : json(200, completion());
  const held = { id: idOf("sk-1"), disabled: false };
  script.meta = (lookup) =>
    lookup === 1
      ? json(200, { secret: null, key: held }) // the rotation not shown yet
      : lookup === 2
        ? json(200, { secret: null, key: { id: idOf("sk-x"), disabled: true } })
        : lookup === 3
          ? json(404, { error: { code: "no_current_key", message: "none", request_id: "r" } })
          : undefined; // the new key
  const client = script.client();

  assert.equal((await client.chat("u", HELLO)).id, "gen-1");
  assert.equal(script.lookups, 4);
  assert.equal(script.reveals, 2, "the initial reveal and one refresh");
  assert.deepEqual(
    script.chats.map((c) => c.key),
    ["sk-1", "sk-2"],
  );
});

test("a refresh compares key ids: a fingerprint of another scheme does not end the wait", async () => {
  const script = new Script();
  let rotated = false; // the service shows the rotation from the 3rd metadata read on
  script.holding = () => (rotated ? "sk-2" : "sk-1");
  script.chat = (key) =>
    key === "sk-1" ? json(401, { error: { message: "User not found." } }) : json(200, completion());
  script.meta = (lookup) => {
    rotated ||= lookup >= 3;
    const secret = rotated ? "sk-2" : "sk-1";
    const key = { id: idOf(secret), fingerprint: `blake3:${secret}`, disabled: false };
    return json(200, { secret: null, key });
  };
  const client = script.client();

  assert.equal((await client.chat("u", HELLO)).id, "gen-1");
  assert.equal(script.lookups, 3, "waited while the service named the refused key's id");
  assert.equal(script.reveals, 2, "the initial reveal and one refresh, of the new key");
  assert.deepEqual(
    script.chats.map((c) => c.key),
    ["sk-1", "sk-2"],
  );
});

test("a refresh gives up after refreshWaitMs: OpenRouter's refusal stands, no reveal", async () => {
  const script = new Script();
  script.secrets = ["sk-1"];
  script.chat = () => json(401, { error: { code: 401, message: "User not found." } });
  const client = script.client({ refreshWaitMs: 0 });
  const error = await client.chat("u", HELLO).catch((caught: unknown) => caught);

  assert.ok(error instanceof OpenRouterError && error.status === 401, String(error));
  assert.equal(script.lookups, 1);
  assert.equal(script.reveals, 1, "the service holds the refused key: nothing to reveal");
  assert.equal(script.chats.length, 1, "no second try with the refused key");

  const again = await client.chat("u", HELLO).catch((caught: unknown) => caught);
  assert.ok(again instanceof OpenRouterError && again.status === 401, String(again));
  assert.equal(script.reveals, 1, "the refused key stays cached: no reveal per request");
});

test("a refusal that stands fails at once while the service shows the key disabled", async () => {
  const script = new Script();
  script.secrets = ["sk-1"];
  let disabled = true;
  script.chat = () =>
    disabled ? json(401, { error: { message: "User not found." } }) : json(200, completion());
  script.meta = () => json(200, { secret: null, key: { id: idOf("sk-1"), disabled } });
  const client = script.client({ refreshWaitMs: 300 });
  const refused = async (): Promise<number> => {
    const started = performance.now();
    const error = await client.chat("u", HELLO).catch((caught: unknown) => caught);
    assert.ok(error instanceof OpenRouterError && error.status === 401, String(error));
    assert.equal(error.message, "User not found.");
    return performance.now() - started;
  };

  assert.ok((await refused()) >= 290, "the first call waits refreshWaitMs for a replacement");
  const [lookups, chats] = [script.lookups, script.chats.length];
  assert.ok((await refused()) < 100, "a later call does not wait again");
  assert.equal(script.lookups - lookups, 1, "one metadata read");
  assert.equal(script.chats.length - chats, 0, "a key the service shows disabled is not tried");

  disabled = false; // enabled again: the same key
  assert.equal((await client.chat("u", HELLO)).id, "gen-1");
  assert.equal((await client.chat("u", HELLO)).id, "gen-1");
  assert.equal(script.reveals, 1, "the refused key stayed cached");
});

test("reveals and key metadata reads ask for no budget layers: budget_layers=false", async () => {
  const script = new Script();
  script.secrets = ["sk-1", "sk-2"];
  let disabled = false;
  script.chat = (key) =>
    key === "sk-1" || disabled
      ? json(401, { error: { message: "User not found." } })
      : json(200, completion());
  const held = { id: idOf("sk-1"), disabled: false };
  script.meta = (lookup) => (lookup === 1 ? json(200, { secret: null, key: held }) : undefined);
  const client = script.client({ refreshWaitMs: 300 });
  const searches = (): string[] => script.keyUrls.splice(0).map((url) => url.search);
  const REVEAL = "?reveal=true&budget_layers=false";
  const METADATA = "?budget_layers=false";

  // a reveal; refused, a refresh polls the metadata (still held, then the new key), reveals it
  assert.equal((await client.chat("u", HELLO)).id, "gen-1");
  assert.deepEqual(searches(), [REVEAL, METADATA, METADATA, REVEAL]);

  // the new key disabled: the refresh polls until refreshWaitMs, and the refusal stands...
  disabled = true;
  script.meta = () => json(200, { secret: null, key: { id: idOf("sk-2"), disabled: true } });
  const refused = async (): Promise<void> => {
    const error = await client.chat("u", HELLO).catch((caught: unknown) => caught);
    assert.ok(error instanceof OpenRouterError && error.status === 401, String(error));
  };
  await refused();
  const polls = searches();
  assert.ok(polls.length >= 2, `${polls.length} metadata reads while waiting`);
  assert.deepEqual(polls, polls.map(() => METADATA));
  // ...then each call costs one metadata read, without a wait
  await refused();
  assert.deepEqual(searches(), [METADATA]);
  await client.close();
});

test("a 403 that is not about money is a stale key too; other refusals are not", async () => {
  const script = new Script();
  script.secrets = ["sk-1", "sk-2"];
  script.chat = (key) =>
    key === "sk-1"
      ? json(403, { error: { code: 403, message: "Key disabled" } })
      : json(200, completion());
  const client = script.client();
  assert.equal((await client.chat("u", HELLO)).id, "gen-1");
  assert.equal(script.reveals, 2);

  script.chat = () => json(429, { error: { code: 429, message: "Rate limit exceeded" } });
  const error = await client.chat("u", HELLO).catch((caught: unknown) => caught);
  assert.ok(error instanceof OpenRouterError && error.status === 429, String(error));
  assert.equal(script.reveals, 2, "a rate limit does not refresh the key");
});

test("a 403 that names its limit is a budget refusal, not a stale key: no lookup, no reveal", async () => {
  const script = new Script();
  script.secrets = ["sk-1", "sk-2"];
  const refusal = (message: string, metadata: Record<string, unknown>) => () =>
    json(403, { error: { code: 403, message, metadata } });
  const client = script.client();

  script.chat = refusal("Workspace budget exceeded.", {
    limit_source: "openrouter_workspace_budget",
    resets_at: "2030-01-01T00:00:00Z",
  });
  const workspace = await client.chat("u", HELLO).catch((caught: unknown) => caught);
  assert.ok(workspace instanceof BudgetExhaustedError, String(workspace));
  assert.ok(!(workspace instanceof DailyCapReachedError), "not a guardrail's budget");

  script.chat = refusal("Budget exceeded.", {
    limit_source: "openrouter_guardrail_budget",
    reset_interval: "weekly",
    resets_at: "2030-01-07T00:00:00Z",
  });
  const weekly = await client.chat("u", HELLO).catch((caught: unknown) => caught);
  assert.ok(weekly instanceof DailyCapReachedError, String(weekly));
  assert.equal(weekly.interval, "weekly", "the metadata's reset_interval");
  assert.equal(weekly.resetsAt?.toISOString(), "2030-01-07T00:00:00.000Z");

  script.chat = refusal("Not allowed.", { guardrail_id: "g-1", guardrail_scope: "api-key" });
  const model = await client.chat("u", HELLO).catch((caught: unknown) => caught);
  assert.ok(model instanceof ModelNotAllowedError, String(model));
  assert.equal(model.model, "m");

  assert.deepEqual([script.reveals, script.lookups, script.chats.length], [1, 0, 3]);
});

test("a completion without usage.cost is returned, counted in unpriced, and logged", async () => {
  const script = new Script();
  script.secrets = ["sk-1"];
  script.chat = () => json(200, completion({ usage: { prompt_tokens: 1, completion_tokens: 1 } }));
  const logger = new MemoryLogger();
  const client = script.client({ logger });

  assert.equal((await client.chat("u", HELLO)).id, "gen-1");
  assert.equal(client.unpriced, 1);
  assert.equal(client.buffered, 0);
  assert.match(logger.warnings[0] ?? "", /gen-1 .*no usage\.cost/);
});

test("a full batch sends full batches only; the rest waits for the timer or flush()", async () => {
  const sizes: number[] = [];
  const client = new Script().client({
    batchSize: 3,
    fetch: async (_input, init) => {
      const { events } = JSON.parse(String(init?.body)) as { events: unknown[] };
      sizes.push(events.length);
      return json(200, {
        stored: events.length,
        duplicates: 0,
        rejected: 0,
        events: [],
        users: [],
      });
    },
  });
  for (let n = 0; n < 4; n++) {
    client.report({ userId: "u", generationId: `g-${n}`, model: "m", costUsd: "0.1" });
  }
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(sizes, [3]);
  assert.equal(client.buffered, 1, "a steady stream is not sent a few at a time");

  await client.close();
  assert.deepEqual(sizes, [3, 1]);
  assert.equal(client.stored, 4);
});

test("a report waits at most batchAgeMs: the timer sends it without flush()", async () => {
  const sent: number[] = [];
  const client = new Script().client({
    batchAgeMs: 50,
    fetch: async (_input, init) => {
      const { events } = JSON.parse(String(init?.body)) as { events: unknown[] };
      sent.push(events.length);
      return json(200, {
        stored: events.length,
        duplicates: 0,
        rejected: 0,
        events: [],
        users: [],
      });
    },
  });
  client.report({ userId: "u", generationId: "g-1", model: "m", costUsd: "0.1" });
  client.report({ userId: "u", generationId: "g-2", model: "m", costUsd: "0.1" });
  await new Promise((resolve) => setTimeout(resolve, 300));

  assert.deepEqual(sent, [2]);
  assert.equal(client.buffered, 0);
  await client.close();
});

test("the timers never keep the process alive: a script that does not close() exits", async () => {
  const index = new URL("../src/index.js", import.meta.url).href;
  const script = `
    import { AgentClient } from ${JSON.stringify(index)};
    const client = new AgentClient({ baseUrl: "http://127.0.0.1:9", token: "t", batchAgeMs: 60000 });
    client.report({ userId: "u", generationId: "g", model: "m", costUsd: "0.1" });
  `;
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    execFile(
      process.execPath,
      ["--input-type=module", "-e", script],
      { timeout: 20_000 },
      (error) => (error ? reject(error) : resolve()),
    );
  });
  assert.ok(performance.now() - started < 10_000, "the process waited for the batch timer");
});

test("await close() at the end of a script sends the batch, through its retries", async () => {
  const index = new URL("../src/index.js", import.meta.url).href;
  const script = `
    import { AgentClient } from ${JSON.stringify(index)};
    let attempts = 0;
    const fetch = async () => {
      attempts += 1;
      if (attempts === 1) throw new TypeError("fetch failed");
      console.log("sent on attempt " + attempts);
      return new Response(JSON.stringify({ stored: 1, duplicates: 0, rejected: 0 }));
    };
    const client = new AgentClient({ baseUrl: "http://agent.test", token: "t", fetch, backoffMs: 300 });
    client.report({ userId: "u", generationId: "g", model: "m", costUsd: "0.1" });
    await client.close();
    console.log("stored " + client.stored);
  `;
  const output = await new Promise<string>((resolve, reject) => {
    execFile(
      process.execPath,
      ["--input-type=module", "-e", script],
      { timeout: 20_000 },
      (error, stdout, stderr) =>
        error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(stdout),
    );
  });
  assert.equal(output, "sent on attempt 2\nstored 1\n");
});

test("report() never throws: an invalid report is dropped and logged", () => {
  const logger = new MemoryLogger();
  const client = new Script().client({ logger });
  client.report({ userId: "u", generationId: "g", model: "m", costUsd: "lots" });
  client.report({ userId: "", generationId: "g", model: "m", costUsd: 1 });
  client.report({ userId: "u", generationId: "g", model: "m", costUsd: 1, promptTokens: -1 });
  client.report(null as never);

  assert.equal(client.dropped, 4);
  assert.equal(client.buffered, 0);
  assert.equal(logger.warnings.length, 4);
});

test("a report after close() is dropped, counted and logged", async () => {
  const logger = new MemoryLogger();
  const client = new Script().client({ logger });
  await client.close();
  client.report({ userId: "u", generationId: "g-late", model: "m", costUsd: "0.1" });

  assert.equal(client.dropped, 1);
  assert.equal(client.buffered, 0);
  assert.match(logger.warnings[0] ?? "", /g-late dropped: the client is closed/);
});

test("AgentError: the envelope, the header's request id, no answer at all", async () => {
  const headers = new Headers({ "x-request-id": "from-header", "retry-after": "2" });
  const limited = AgentError.fromResponse(
    429,
    headers,
    JSON.stringify({ error: { code: "rate_limited", message: "slow down", request_id: null } }),
  );
  assert.deepEqual(
    [limited.status, limited.code, limited.requestId, limited.retryAfterMs, limited.retryable],
    [429, "rate_limited", "from-header", 2000, true],
  );
  const html = AgentError.fromResponse(502, new Headers(), "<html>bad gateway</html>");
  assert.deepEqual([html.code, html.retryable], ["http_error", true]);

  const client = new Script().client({ baseUrl: "http://unreachable.test" });
  const error = await client.usage("u").catch((caught: unknown) => caught);
  assert.ok(error instanceof AgentError, String(error));
  assert.deepEqual([error.status, error.code, error.retryable], [0, "network_error", true]);
});

test("options out of range are refused at construction", () => {
  const script = new Script();
  assert.throws(() => script.client({ batchSize: 0 }), RangeError);
  assert.throws(() => script.client({ batchSize: 1001 }), RangeError);
  assert.throws(() => script.client({ bufferSize: 0 }), RangeError);
  assert.throws(() => script.client({ maxAttempts: 0 }), RangeError);
});
