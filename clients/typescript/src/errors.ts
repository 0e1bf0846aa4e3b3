/** What can go wrong, as classes a caller can tell apart with instanceof. */

/** A non-2xx answer of openrouter-agent (its envelope `{"error": {...}}`), or no answer at all
 * (status 0, code "network_error"). Quote `requestId` when asking the operator about it. */
export class AgentError extends Error {
  override readonly name = "AgentError";

  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly requestId: string | null = null,
    readonly details: unknown = null,
    /** The answer's Retry-After, in ms, when it had one (a 429). */
    readonly retryAfterMs: number | null = null,
  ) {
    super(message);
  }

  /** Worth another try later: no answer, a rate limit or a server failure. */
  get retryable(): boolean {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }

  override toString(): string {
    return `${this.name}: ${this.status} ${this.code}: ${this.message} (request ${this.requestId})`;
  }

  /** Built from the envelope; the request id from the body, else the x-request-id header. */
  static fromResponse(status: number, headers: Headers, text: string): AgentError {
    const headerId = headers.get("x-request-id");
    const retryAfterMs = parseRetryAfter(headers.get("retry-after"));
    const error = envelope(text);
    if (error === null) {
      return new AgentError(status, "http_error", text.slice(0, 200), headerId, null, retryAfterMs);
    }
    return new AgentError(
      status,
      typeof error["code"] === "string" ? error["code"] : "http_error",
      typeof error["message"] === "string" ? error["message"] : "",
      typeof error["request_id"] === "string" && error["request_id"]
        ? error["request_id"]
        : headerId,
      error["details"] ?? null,
      retryAfterMs,
    );
  }
}

/** OpenRouter refused a chat completion (or could not be reached: status 0). */
export class OpenRouterError extends Error {
  override readonly name: string = "OpenRouterError";

  constructor(
    readonly status: number,
    message: string,
    /** OpenRouter's answer as parsed JSON (its text when not JSON; null when none). */
    readonly body: unknown = null,
  ) {
    super(message);
  }
}

/** The user's key cannot pay for this request (402) or has nothing left this month (403 "Key
 * limit exceeded"): a fresh key would not help, so tell the user rather than retry. */
export class BudgetExhaustedError extends OpenRouterError {
  override readonly name: string = "BudgetExhaustedError";

  constructor(
    status: number,
    message: string,
    readonly userId: string,
    body: unknown = null,
  ) {
    super(status, message, body);
  }
}

/** How often a guardrail budget resets (OpenRouter's GuardrailInterval). */
export type BudgetInterval = "daily" | "weekly" | "monthly";

/** OpenRouter's guardrail budget refused the request (`error.metadata.limit_source`
 * "openrouter_guardrail_budget"): the user's tier caps spend per UTC day (or week, or month),
 * and this window's cap is spent (403) or cannot pay for this request's worst case (402). Nothing
 * to retry before `resetsAt`; the monthly budget may have plenty left. */
export class DailyCapReachedError extends BudgetExhaustedError {
  override readonly name: string = "DailyCapReachedError";

  constructor(
    status: number,
    message: string,
    userId: string,
    body: unknown,
    /** When the window rolls over and the key may spend again (`metadata.resets_at`). */
    readonly resetsAt: Date | null,
    /** The window: `metadata.reset_interval`, else the one OpenRouter's message names. */
    readonly interval: BudgetInterval | null,
  ) {
    super(status, message, userId, body);
  }
}

/** The user's tier does not allow this model (OpenRouter's 403 from the guardrail's model
 * allowlist) or leaves no provider to serve it (404 "No endpoints available matching your
 * guardrail restrictions..."). The key is fine: another model (or provider) may be asked for,
 * the same one will be refused again until the tier's policy changes. */
export class ModelNotAllowedError extends OpenRouterError {
  override readonly name: string = "ModelNotAllowedError";

  constructor(
    status: number,
    message: string,
    readonly userId: string,
    /** The model the request asked for. */
    readonly model: string,
    body: unknown = null,
  ) {
    super(status, message, body);
  }
}

function envelope(text: string): Record<string, unknown> | null {
  try {
    const body: unknown = JSON.parse(text);
    if (body === null || typeof body !== "object") return null;
    const error = (body as Record<string, unknown>)["error"];
    return error !== null && typeof error === "object" ? (error as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function parseRetryAfter(value: string | null): number | null {
  if (value === null) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}
