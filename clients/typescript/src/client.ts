/** The client of openrouter-agent: a platform's view of its users' keys and usage. */

import { toDecimalString } from "./decimal.js";
import {
  AgentError,
  BudgetExhaustedError,
  type BudgetInterval,
  DailyCapReachedError,
  ModelNotAllowedError,
  OpenRouterError,
} from "./errors.js";
import type {
  BudgetIncreaseGranted,
  BudgetIncreaseRequest,
  ChatCompletion,
  ChatOptions,
  ChatRequest,
  CurrentKey,
  KeyInfo,
  Logger,
  RotationPolicy,
  Usage,
  UsageEventBody,
  UsageLogResponse,
  UsageReport,
  UserInfo,
  UserPut,
} from "./types.js";

export const DEFAULT_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1";
/** Used only when the service does not say (no cache_for_s): a quarter of its default grace. */
export const DEFAULT_KEY_TTL_MS = 75_000;
export const MAX_BATCH_EVENTS = 1000; // the service's limit per POST /api/usage/log
/** After OpenRouter refused a key, how long chat() waits for the service to hold another one: an
 * emergency rotation disables the key first and makes the new one a moment later. */
export const DEFAULT_REFRESH_WAIT_MS = 10_000;
const FIRST_POLL_MS = 100;
const MAX_POLL_MS = 1000;
const BUDGET_MESSAGE = "key limit exceeded"; // OpenRouter's 403 when the key has nothing left
/** error.metadata.limit_source of a refusal by a guardrail's budget (a tier's daily cap). */
const GUARDRAIL_BUDGET = "openrouter_guardrail_budget";
const INTERVALS: readonly BudgetInterval[] = ["daily", "weekly", "monthly"];

export interface AgentClientOptions {
  /** openrouter-agent's URL, e.g. https://keys.example.com */
  baseUrl: string;
  /** A service token: keys:read + keys:reveal, usage:read, usage:write, users:write. */
  token: string;
  openrouterBaseUrl?: string;
  /** At most this long per cached key; the service's cache_for_s caps it (and is the default). */
  keyTtlMs?: number;
  /** Reports waiting to be sent; past it, report() drops (counted in `dropped`). */
  bufferSize?: number;
  /** Events per POST /api/usage/log (1..1000); a full batch is sent at once. */
  batchSize?: number;
  /** A report waits at most this long before a background flush sends it. */
  batchAgeMs?: number;
  /** Tries per batch (network errors, 429 and 5xx are retried). */
  maxAttempts?: number;
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Per request to openrouter-agent. */
  timeoutMs?: number;
  /** Per chat completion at OpenRouter: generations take far longer than a key lookup. */
  chatTimeoutMs?: number;
  /** After OpenRouter refused a key: how long to wait for the user's next key (0: no wait). */
  refreshWaitMs?: number;
  fetch?: typeof globalThis.fetch;
  logger?: Logger;
  /** A monotonic clock in ms, for the key cache (tests move it). */
  now?: () => number;
}

/** A revealed key, and until when the cache may serve it. */
interface HeldKey {
  secret: string;
  /** KeyInfo.id: how the service's metadata names this key without a reveal. */
  id: string | undefined;
  expiresAt: number;
}

interface PendingReveal {
  promise: Promise<HeldKey>;
  /** The secret this reveal replaces (a refresh after OpenRouter refused it), if any. */
  replacing: string | undefined;
}

interface OpenRouterAnswer {
  status: number;
  body: unknown;
  message: string;
}

/** OpenRouter refused `key` with `answer`. */
interface Refusal {
  key: HeldKey;
  answer: OpenRouterAnswer;
}

interface Refreshed {
  key: HeldKey;
  /** Set when the service named no replacement in time: OpenRouter's refusal stands. */
  standing?: Refusal;
}

/** A client of openrouter-agent. Make one per process and reuse it; `await close()` (or at
 * least `flush()`) before the process or the serverless invocation ends: reports are sent in
 * the background, on timers that never keep the process alive. */
export class AgentClient {
  readonly #baseUrl: string;
  readonly #openrouterBaseUrl: string;
  readonly #headers: Record<string, string>;
  readonly #keyTtlMs: number | undefined;
  readonly #bufferSize: number;
  readonly #batchSize: number;
  readonly #batchAgeMs: number;
  readonly #maxAttempts: number;
  readonly #backoffMs: number;
  readonly #maxBackoffMs: number;
  readonly #timeoutMs: number;
  readonly #chatTimeoutMs: number;
  readonly #refreshWaitMs: number;
  readonly #fetch: typeof globalThis.fetch;
  readonly #logger: Logger;
  readonly #now: () => number;

  readonly #keys = new Map<string, HeldKey>();
  readonly #pending = new Map<string, PendingReveal>();
  readonly #generation = new Map<string, number>();
  /** Per user, a refusal that stands until the refused key's cache period ends: chat() repeats
   * it at once, without waiting refreshWaitMs again, while the service's metadata shows no
   * change. */
  readonly #refused = new Map<string, Refusal>();

  #buffer: UsageEventBody[] = [];
  #flushing: Promise<void> = Promise.resolve();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #fullDrainQueued = false;
  #closed = false;
  #counts = { stored: 0, duplicates: 0, rejected: 0, failed: 0, dropped: 0, unpriced: 0 };

  constructor(options: AgentClientOptions) {
    const batchSize = options.batchSize ?? 100;
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH_EVENTS) {
      throw new RangeError(`batchSize must be an integer within 1..${MAX_BATCH_EVENTS}`);
    }
    const bufferSize = options.bufferSize ?? 10_000;
    const maxAttempts = options.maxAttempts ?? 5;
    if (!(bufferSize >= 1) || !(maxAttempts >= 1)) {
      throw new RangeError("bufferSize and maxAttempts must be at least 1");
    }
    this.#baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#openrouterBaseUrl = (options.openrouterBaseUrl ?? DEFAULT_OPENROUTER_BASE_URL).replace(
      /\/+$/,
      "",
    );
    this.#headers = { Authorization: `Bearer ${options.token}`, Accept: "application/json" };
    this.#keyTtlMs = options.keyTtlMs;
    this.#bufferSize = bufferSize;
    this.#batchSize = batchSize;
    this.#batchAgeMs = options.batchAgeMs ?? 2000;
    this.#maxAttempts = maxAttempts;
    this.#backoffMs = options.backoffMs ?? 500;
    this.#maxBackoffMs = options.maxBackoffMs ?? 10_000;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#chatTimeoutMs = options.chatTimeoutMs ?? 300_000;
    this.#refreshWaitMs = options.refreshWaitMs ?? DEFAULT_REFRESH_WAIT_MS;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#logger = options.logger ?? console;
    this.#now = options.now ?? (() => performance.now());
  }

  // -- counters ----------------------------------------------------------------------------

  /** Events the service stored. */
  get stored(): number {
    return this.#counts.stored;
  }
  /** Events the service had already (same generation id): a retry that had arrived. */
  get duplicates(): number {
    return this.#counts.duplicates;
  }
  /** Events the service refused one by one (unknown user, invalid cost...). */
  get rejected(): number {
    return this.#counts.rejected;
  }
  /** Events given up on: retries exhausted, or the whole batch refused (4xx). */
  get failed(): number {
    return this.#counts.failed;
  }
  /** Reports never buffered: the buffer was full, or the report was invalid. */
  get dropped(): number {
    return this.#counts.dropped;
  }
  /** Completions OpenRouter answered without a cost: returned, but not reported. */
  get unpriced(): number {
    return this.#counts.unpriced;
  }
  /** Reports waiting to be sent. */
  get buffered(): number {
    return this.#buffer.length;
  }

  // -- requests to the service --------------------------------------------------------------

  async #request<T>(method: string, path: string, body?: unknown): Promise<T> {
    let response: Response;
    let text: string;
    try {
      response = await this.#fetch(this.#baseUrl + path, {
        method,
        headers:
          body === undefined
            ? this.#headers
            : { ...this.#headers, "Content-Type": "application/json" },
        body: body === undefined ? null : JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
      text = await response.text();
    } catch (error) {
      throw new AgentError(0, "network_error", describe(error));
    }
    if (!response.ok) throw AgentError.fromResponse(response.status, response.headers, text);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new AgentError(response.status, "invalid_response", "the answer is not JSON");
    }
  }

  // -- keys ---------------------------------------------------------------------------------

  /** The user's current OpenRouter key, revealed once per cache period and user; concurrent
   * calls for one user share one reveal (reveals are rate-limited and audited). */
  async userKey(userId: string): Promise<string> {
    return (await this.#currentKey(userId)).secret;
  }

  #currentKey(userId: string): Promise<HeldKey> {
    const cached = this.#cachedKey(userId);
    if (cached !== undefined) return Promise.resolve(cached);
    const pending = this.#pending.get(userId);
    if (pending !== undefined) return pending.promise;
    return this.#startReveal(userId, undefined);
  }

  #cachedKey(userId: string): HeldKey | undefined {
    const cached = this.#keys.get(userId);
    return cached !== undefined && cached.expiresAt > this.#now() ? cached : undefined;
  }

  /** Drops the user's cached key and any reveal in flight: the next userKey() reveals anew.
   * For OpenRouter's 401 with a key you got from userKey() (chat() does it by itself). With
   * `secret`, a key other than that one cached, or the refresh in flight that replaces that one,
   * is kept: many calls that met the same refused key cost one reveal, not one each. */
  forgetKey(userId: string, secret?: string): void {
    if (secret !== undefined) {
      const cached = this.#cachedKey(userId);
      // With nothing cached, a plain reveal in flight may answer `secret` again: it goes too.
      const replaced =
        cached === undefined
          ? this.#pending.get(userId)?.replacing === secret
          : cached.secret !== secret;
      if (replaced) return;
    }
    this.#keys.delete(userId);
    this.#pending.delete(userId);
    this.#refused.delete(userId);
    this.#generation.set(userId, (this.#generation.get(userId) ?? 0) + 1);
  }

  /** The key for chat(): the user's current one, unless a refusal stands. Then one metadata read
   * (no reveal, no wait) tells whether the service holds another key since, or shows the refused
   * one enabled (worth one try); otherwise the refusal is repeated at once. */
  async #keyToTry(userId: string): Promise<HeldKey> {
    const refusal = this.#standingRefusal(userId);
    if (refusal === undefined) return this.#currentKey(userId);
    let info: KeyInfo | undefined;
    try {
      info = (await this.#request<CurrentKey>("GET", keyMetadataPath(userId))).key;
    } catch (error) {
      if (!isWaitable(error)) throw error;
    }
    if (info !== undefined && !info.disabled) {
      if (info.id === refusal.key.id) return refusal.key;
      if (this.#refused.get(userId) === refusal) this.#refused.delete(userId);
      return this.#replacementKey(userId, refusal);
    }
    throw refusalError(refusal.answer);
  }

  #standingRefusal(userId: string): Refusal | undefined {
    const refusal = this.#refused.get(userId);
    if (refusal === undefined || refusal.key.expiresAt > this.#now()) return refusal;
    this.#refused.delete(userId); // its cache period is over: the next refusal waits again
    return undefined;
  }

  /** A key other than the refused one: the one another call already refreshed, or the refresh
   * in flight for the same key, else a new refresh. So a burst of calls that all hit the rotated
   * key costs one reveal, not one each; a refusal that stands is answered without a wait. */
  #replacementKey(userId: string, refusal: Refusal): Promise<HeldKey> {
    const stale = refusal.key.secret;
    if (this.#standingRefusal(userId)?.key.secret === stale) return Promise.resolve(refusal.key);
    const cached = this.#cachedKey(userId);
    if (cached !== undefined && cached.secret !== stale) return Promise.resolve(cached);
    const pending = this.#pending.get(userId);
    if (pending !== undefined && pending.replacing === stale) return pending.promise;
    this.forgetKey(userId);
    return this.#startReveal(userId, refusal);
  }

  #startReveal(userId: string, refusal: Refusal | undefined): Promise<HeldKey> {
    const generation = this.#generation.get(userId) ?? 0;
    const revealing: Promise<Refreshed> =
      refusal === undefined
        ? this.#reveal(userId).then((key) => ({ key }))
        : this.#refresh(userId, refusal);
    const promise = revealing
      .then(({ key, standing }) => {
        // A forgetKey() since this reveal started means its answer may be the old key.
        if ((this.#generation.get(userId) ?? 0) === generation) {
          if (key.expiresAt > this.#now()) this.#keys.set(userId, key);
          if (standing !== undefined) this.#refused.set(userId, standing);
        }
        return key;
      })
      .finally(() => {
        if (this.#pending.get(userId)?.promise === promise) this.#pending.delete(userId);
      });
    this.#pending.set(userId, { promise, replacing: refusal?.key.secret });
    return promise;
  }

  async #reveal(userId: string): Promise<HeldKey> {
    const answer = await this.#request<CurrentKey>("GET", keyRevealPath(userId));
    const secret = answer.secret;
    if (typeof secret !== "string" || !secret) {
      throw new AgentError(200, "no_secret", "the service revealed no secret");
    }
    const info = answer.key as Partial<KeyInfo> | undefined; // a malformed answer: no id to compare
    const id = typeof info?.id === "string" ? info.id : undefined;
    return { secret, id, expiresAt: this.#now() + this.#ttlMs(answer.cache_for_s) };
  }

  /** The key after OpenRouter refused one: one reveal, once the service's current key is another
   * one (by its id) that is not disabled. Until then it asks for the key's metadata only (not a
   * reveal: those are rate-limited), up to refreshWaitMs: OpenRouter can refuse a key a moment
   * before the service shows its replacement (a rotation in progress, an emergency's disabling
   * before its new key). If the service still holds the refused key then, the refusal stands,
   * and the key stays cached: a key disabled for good costs no reveal per request. */
  async #refresh(userId: string, refusal: Refusal): Promise<Refreshed> {
    const refusedId = refusal.key.id;
    if (refusedId === undefined) return { key: await this.#reveal(userId) }; // nothing to compare
    const deadline = this.#now() + this.#refreshWaitMs;
    for (let delay = FIRST_POLL_MS; ; delay = Math.min(delay * 2, MAX_POLL_MS)) {
      let lastError: AgentError | undefined;
      try {
        const { key } = await this.#request<CurrentKey>("GET", keyMetadataPath(userId));
        if (key.id !== refusedId && !key.disabled) return { key: await this.#reveal(userId) };
      } catch (error) {
        // No current key (between an emergency's revoking and its new key), or a passing failure.
        if (!isWaitable(error)) throw error;
        lastError = error;
      }
      const left = deadline - this.#now();
      if (left <= 0) {
        if (lastError !== undefined) throw lastError;
        return { key: refusal.key, standing: refusal };
      }
      await sleep(Math.min(delay, left), true); // the last look is at the deadline, not before
    }
  }

  /** min(keyTtlMs, cache_for_s): the service knows how long its rotations leave a key working. */
  #ttlMs(cacheForS: number | null | undefined): number {
    const served = typeof cacheForS === "number" && cacheForS >= 0 ? cacheForS * 1000 : undefined;
    if (this.#keyTtlMs === undefined) return served ?? DEFAULT_KEY_TTL_MS;
    return served === undefined ? this.#keyTtlMs : Math.min(this.#keyTtlMs, served);
  }

  // -- chat ---------------------------------------------------------------------------------

  /** One chat completion for the user, with their key: refreshed once when OpenRouter refuses
   * it (a rotation or an emergency in the middle of traffic costs no failed request), the usage
   * reported in the background. Throws BudgetExhaustedError when the user's budget cannot pay
   * (DailyCapReachedError when it is their tier's daily cap), ModelNotAllowedError when their
   * tier does not allow the model or provider, OpenRouterError for other refusals, AgentError
   * when the service cannot give a key. */
  async chat(
    userId: string,
    request: ChatRequest,
    options: ChatOptions = {},
  ): Promise<ChatCompletion> {
    if ((request as { stream?: unknown }).stream === true) {
      throw new TypeError("chat() asks for whole completions: stream is not supported");
    }
    const body = JSON.stringify({ ...request, usage: { ...request.usage, include: true } });
    const key = await this.#keyToTry(userId);
    let answer = await this.#complete(key.secret, body, options.signal);
    if (isRefusedKey(answer)) {
      const fresh = await this.#replacementKey(userId, { key, answer });
      if (fresh.secret !== key.secret) {
        answer = await this.#complete(fresh.secret, body, options.signal);
      }
    } else if (this.#refused.get(userId)?.key.secret === key.secret) {
      this.#refused.delete(userId); // the refused key works again: enabled again
    }
    if (isGuardrailBudget(answer)) throw dailyCapError(answer, userId);
    if (isBudgetRefusal(answer)) {
      throw new BudgetExhaustedError(answer.status, answer.message, userId, answer.body);
    }
    if (isGuardrailRestriction(answer)) {
      throw new ModelNotAllowedError(
        answer.status,
        answer.message,
        userId,
        request.model,
        answer.body,
      );
    }
    if (answer.status < 200 || answer.status > 299) throw refusalError(answer);
    const completion = answer.body as ChatCompletion;
    if (completion === null || typeof completion !== "object" || Array.isArray(completion)) {
      throw new OpenRouterError(
        answer.status,
        "OpenRouter's answer is not a completion",
        answer.body,
      );
    }
    this.#reportCompletion(userId, completion, options.agentName);
    return completion;
  }

  async #complete(key: string, body: string, signal?: AbortSignal): Promise<OpenRouterAnswer> {
    const timeout = AbortSignal.timeout(this.#chatTimeoutMs);
    let status: number;
    let text: string;
    try {
      const response = await this.#fetch(`${this.#openrouterBaseUrl}/chat/completions`, {
        method: "POST",
        headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
        body,
        signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]),
      });
      status = response.status;
      text = await response.text();
    } catch (error) {
      throw new OpenRouterError(0, `OpenRouter could not be reached: ${describe(error)}`);
    }
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: kept as text
    }
    return { status, body: parsed, message: openRouterMessage(parsed, text) };
  }

  #reportCompletion(userId: string, completion: ChatCompletion, agentName?: string): void {
    const cost = completion.usage?.cost;
    if (
      (typeof cost !== "number" && typeof cost !== "string") ||
      typeof completion.id !== "string" ||
      typeof completion.model !== "string"
    ) {
      this.#counts.unpriced += 1;
      this.#logger.warn(
        `openrouter-agent-client: completion ${String(completion.id)} of ${userId} has no ` +
          "usage.cost: not reported (counted in unpriced)",
      );
      return;
    }
    this.report({
      userId,
      generationId: completion.id,
      model: completion.model,
      costUsd: cost,
      promptTokens: completion.usage?.prompt_tokens ?? 0,
      completionTokens: completion.usage?.completion_tokens ?? 0,
      ...(agentName === undefined ? {} : { agentName }),
    });
  }

  // -- users and usage ----------------------------------------------------------------------

  /** The user's current month: spent, limit and remaining in USD (decimal strings), and what
   * OpenRouter enforces on their key now: `budget_layers` (the key's monthly limit, their tier's
   * daily cap...; null when OpenRouter could not be read, `budget_layers_error` says why) and
   * `blocked_by`, the layer with nothing left, if any. */
  usage(userId: string): Promise<Usage> {
    return this.#request<Usage>("GET", `/api/usage/${encodeURIComponent(userId)}`);
  }

  /** Creates or updates the user (their tier and rotation policy). */
  putUser(
    userId: string,
    changes: { tier?: string; rotationPolicy?: RotationPolicy; reason?: string } = {},
  ): Promise<UserInfo> {
    const body: UserPut = {};
    if (changes.tier !== undefined) body.tier = changes.tier;
    if (changes.rotationPolicy !== undefined) body.rotation_policy = changes.rotationPolicy;
    if (changes.reason !== undefined) body.reason = changes.reason;
    return this.#request<UserInfo>("PUT", `/api/users/${encodeURIComponent(userId)}`, body);
  }

  /** Grants the user `amountUsd` more budget (USD: a decimal string, or a number) on top of
   * their tier's monthly one, until `endsAt` (default: the end of this month), with a reason:
   * their key's limit follows at once (`key_limit_status`, `key_limit_usd`). Audited; needs
   * users:write. */
  grantBudgetIncrease(
    userId: string,
    grant: { amountUsd: string | number; endsAt?: Date | string; reason: string },
  ): Promise<BudgetIncreaseGranted> {
    const body: BudgetIncreaseRequest = {
      amount_usd: toDecimalString(grant.amountUsd),
      reason: grant.reason,
    };
    if (grant.endsAt !== undefined) body.ends_at = utcTimestamp(grant.endsAt);
    return this.#request<BudgetIncreaseGranted>(
      "POST",
      `/api/users/${encodeURIComponent(userId)}/budget-increases`,
      body,
    );
  }

  // -- usage reports ------------------------------------------------------------------------

  /** Buffers one generation for the background flush. Never blocks and never throws: an invalid
   * report, one after close() and one that finds the buffer full are dropped (counted in
   * `dropped`, logged). */
  report(event: UsageReport): void {
    // Nothing would send it: close() has flushed, and the timer no longer runs.
    if (this.#closed) return this.#drop(event?.generationId, "the client is closed");
    let body: UsageEventBody;
    try {
      body = eventBody(event);
    } catch (error) {
      return this.#drop(event?.generationId, describe(error));
    }
    if (this.#buffer.length >= this.#bufferSize) {
      return this.#drop(body.generation_id, `the buffer is full (${this.#bufferSize} reports)`);
    }
    this.#buffer.push(body);
    this.#armTimer();
    if (this.#buffer.length >= this.#batchSize) this.#flushInBackground(true);
  }

  #drop(generationId: unknown, why: string): void {
    this.#counts.dropped += 1;
    this.#logger.warn(
      `openrouter-agent-client: usage report of ${String(generationId)} dropped: ${why}; ` +
        `${this.#counts.dropped} dropped in all`,
    );
  }

  #armTimer(): void {
    if (this.#timer !== undefined || this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#flushInBackground(false);
    }, this.#batchAgeMs);
    this.#timer.unref(); // a report waiting must not keep the process alive: close() sends it
  }

  /** A full batch wakes a drain of full batches only, so that a steady stream of reports is not
   * sent a few at a time; the timer's drain sends whatever waits. At most one drain of full
   * batches waits at a time: it sends every full batch there is when it runs. */
  #flushInBackground(fullOnly: boolean): void {
    if (fullOnly) {
      if (this.#fullDrainQueued) return;
      this.#fullDrainQueued = true;
    }
    this.#enqueueDrain(fullOnly)
      .then(() => {
        if (this.#buffer.length > 0) this.#armTimer(); // what a full-batch drain left
      })
      .catch((error: unknown) => {
        this.#logger.error("openrouter-agent-client: usage flush failed", error);
      });
  }

  /** One drain at a time, in order: a flush waits for the one running, then sends the rest. */
  #enqueueDrain(fullOnly: boolean): Promise<void> {
    const run = this.#flushing.then(() => {
      if (fullOnly) this.#fullDrainQueued = false;
      return this.#drain(fullOnly);
    });
    this.#flushing = run.catch(() => undefined);
    return run;
  }

  async #drain(fullOnly: boolean): Promise<void> {
    const least = fullOnly ? this.#batchSize : 1;
    while (this.#buffer.length >= least) {
      const batch = this.#buffer.splice(0, this.#batchSize);
      await this.#send(batch);
    }
  }

  /** Sends everything buffered now, in batches, retrying what may succeed later. Never throws:
   * what could not be sent is counted in `failed`. */
  async flush(): Promise<void> {
    // The background timers are unref()'d; a caller awaiting this keeps the process alive.
    const hold = setInterval(() => undefined, 1 << 30);
    try {
      await this.#enqueueDrain(false);
    } finally {
      clearInterval(hold);
    }
  }

  /** Flushes and stops the background timer: call it (await it) at shutdown. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    await this.flush();
  }

  async #send(batch: UsageEventBody[]): Promise<void> {
    let delay = this.#backoffMs;
    for (let attempt = 1; ; attempt++) {
      let answer: UsageLogResponse;
      try {
        answer = await this.#request<UsageLogResponse>("POST", "/api/usage/log", { events: batch });
      } catch (caught) {
        const error =
          caught instanceof AgentError
            ? caught
            : new AgentError(0, "network_error", describe(caught));
        if (error.status === 413 && batch.length > 1) {
          // Over the service's body limit: halves, down to the oversized event alone.
          const half = Math.floor(batch.length / 2);
          await this.#send(batch.slice(0, half));
          await this.#send(batch.slice(half));
          return;
        }
        if (!error.retryable || attempt >= this.#maxAttempts) {
          this.#counts.failed += batch.length;
          const what =
            batch.length === 1
              ? `usage report of ${batch[0]?.generation_id}`
              : `usage batch of ${batch.length} events`;
          this.#logger.error(
            `openrouter-agent-client: ${what} given up after ${attempt} attempts: ` +
              error.toString(),
          );
          return;
        }
        // Safe to send again: the service deduplicates by generation id.
        await sleep(Math.min(error.retryAfterMs ?? delay, this.#maxBackoffMs), false);
        delay = Math.min(delay * 2, this.#maxBackoffMs);
        continue;
      }
      this.#counts.stored += count(answer.stored);
      this.#counts.duplicates += count(answer.duplicates);
      const rejected = count(answer.rejected);
      if (rejected > 0) {
        this.#counts.rejected += rejected;
        const reasons = (answer.events ?? [])
          .filter((outcome) => outcome.status === "rejected")
          .slice(0, 3)
          .map((outcome) => `${outcome.generation_id}: ${outcome.reason}`);
        this.#logger.warn(
          `openrouter-agent-client: usage batch: ${rejected} events rejected by the service ` +
            `(${reasons.join("; ")})`,
        );
      }
      return;
    }
  }
}

/** 402: this request costs more than is left; 403 "Key limit exceeded", or any 403 whose
 * metadata names the limit that refused it (limit_source: the key's limit, a guardrail's or the
 * workspace's budget): nothing is left. A new key would not help (the user's budget would). */
function isBudgetRefusal(answer: OpenRouterAnswer): boolean {
  return (
    answer.status === 402 ||
    (answer.status === 403 &&
      (answer.message.toLowerCase().includes(BUDGET_MESSAGE) ||
        typeof metadataOf(answer)?.["limit_source"] === "string"))
  );
}

/** A budget refusal by a guardrail's budget: with the service, the user's tier's daily cap. */
function isGuardrailBudget(answer: OpenRouterAnswer): boolean {
  return isBudgetRefusal(answer) && metadataOf(answer)?.["limit_source"] === GUARDRAIL_BUDGET;
}

/** A guardrail's allowlists refused the request, not the key: a 403 for the model (its
 * metadata names the guardrail, its message the restriction), or the 404 "No endpoints
 * available matching your guardrail restrictions" when no allowed provider is left. */
function isGuardrailRestriction(answer: OpenRouterAnswer): boolean {
  if (answer.status === 404) return /guardrail/i.test(answer.message);
  if (answer.status !== 403 || isBudgetRefusal(answer)) return false;
  const metadata = metadataOf(answer);
  return (
    /guardrail/i.test(answer.message) ||
    typeof metadata?.["guardrail_id"] === "string" ||
    typeof metadata?.["guardrail_scope"] === "string"
  );
}

/** OpenRouter's 401 (or a 403 that is neither about money nor a guardrail's restriction): this
 * key no longer works. */
function isRefusedKey(answer: OpenRouterAnswer): boolean {
  return (
    answer.status === 401 ||
    (answer.status === 403 && !isBudgetRefusal(answer) && !isGuardrailRestriction(answer))
  );
}

/** OpenRouter's `error.metadata`, when its answer has one. */
function metadataOf(answer: OpenRouterAnswer): Record<string, unknown> | undefined {
  const error = record(answer.body)?.["error"];
  return record(record(error)?.["metadata"]);
}

function record(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

/** resetsAt from metadata.resets_at; the interval from metadata.reset_interval when OpenRouter
 * gives it, else from its message ("Guardrail daily budget of $1.00 exceeded"). */
function dailyCapError(answer: OpenRouterAnswer, userId: string): DailyCapReachedError {
  const metadata = metadataOf(answer) ?? {};
  const at = metadata["resets_at"];
  const resetsAt = typeof at === "string" && !Number.isNaN(Date.parse(at)) ? new Date(at) : null;
  const said = metadata["reset_interval"] ?? metadata["interval"];
  const interval =
    INTERVALS.find((name) => name === said) ??
    INTERVALS.find((name) => new RegExp(`\\b${name}\\b`, "i").test(answer.message)) ??
    null;
  return new DailyCapReachedError(
    answer.status,
    answer.message,
    userId,
    answer.body,
    resetsAt,
    interval,
  );
}

function keyPath(userId: string): string {
  return `/api/keys/user/${encodeURIComponent(userId)}`;
}

/** The key's metadata only. budget_layers=false: the client never reads the layers, and each
 * answer with them costs the service one call to OpenRouter. */
function keyMetadataPath(userId: string): string {
  return `${keyPath(userId)}?budget_layers=false`;
}

/** The key's secret, without the budget layers (see keyMetadataPath). */
function keyRevealPath(userId: string): string {
  return `${keyPath(userId)}?reveal=true&budget_layers=false`;
}

/** The service has no current key (404), or failed for now: worth another look. */
function isWaitable(error: unknown): error is AgentError {
  return error instanceof AgentError && (error.status === 404 || error.retryable);
}

function refusalError(answer: OpenRouterAnswer): OpenRouterError {
  return new OpenRouterError(answer.status, answer.message, answer.body);
}

function openRouterMessage(body: unknown, text: string): string {
  if (body !== null && typeof body === "object") {
    const error = (body as Record<string, unknown>)["error"];
    if (error !== null && typeof error === "object") {
      const message = (error as Record<string, unknown>)["message"];
      if (typeof message === "string") return message;
    }
  }
  return text.slice(0, 200);
}

function eventBody(event: UsageReport): UsageEventBody {
  const text = (name: string, value: unknown): string => {
    if (typeof value !== "string" || value === "") throw new TypeError(`${name} is required`);
    return value;
  };
  const tokens = (name: string, value: unknown): number => {
    if (value === undefined) return 0;
    if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
      throw new TypeError(`${name} must be a non-negative integer`);
    }
    return value;
  };
  const body: UsageEventBody = {
    user_id: text("userId", event.userId),
    generation_id: text("generationId", event.generationId),
    model: text("model", event.model),
    cost_usd: toDecimalString(event.costUsd),
    prompt_tokens: tokens("promptTokens", event.promptTokens),
    completion_tokens: tokens("completionTokens", event.completionTokens),
  };
  if (event.agentName !== undefined) body.agent_name = text("agentName", event.agentName);
  return body;
}

/** A Date as ISO 8601 in UTC; a string must carry its offset (the service refuses a naive time)
 * and is sent as given. */
function utcTimestamp(value: Date | string): string {
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) throw new RangeError("endsAt is an invalid Date");
    return value.toISOString();
  }
  if (typeof value !== "string" || Number.isNaN(Date.parse(value))) {
    throw new RangeError(`endsAt is not a timestamp: ${JSON.stringify(value)}`);
  }
  return value;
}

function count(value: unknown): number {
  return typeof value === "number" && Number.isFinite(value) ? value : 0;
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = error.cause instanceof Error ? ` (${error.cause.message})` : "";
  return `${error.name}: ${error.message}${cause}`;
}

/** A wait; `keepAlive` when a caller awaits it, else unref()'d like every background timer. */
function sleep(ms: number, keepAlive: boolean): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (!keepAlive) timer.unref();
  });
}
