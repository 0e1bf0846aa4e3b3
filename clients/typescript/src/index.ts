/** openrouter-agent's TypeScript client: per-user OpenRouter keys (cached, single-flight,
 * refreshed when OpenRouter refuses one), chat completions, and usage reported in batches.
 * No runtime dependencies: Node 20's fetch. */

export {
  AgentClient,
  DEFAULT_KEY_TTL_MS,
  DEFAULT_OPENROUTER_BASE_URL,
  MAX_BATCH_EVENTS,
  type AgentClientOptions,
} from "./client.js";
export { toDecimalString } from "./decimal.js";
export {
  AgentError,
  BudgetExhaustedError,
  type BudgetInterval,
  DailyCapReachedError,
  ModelNotAllowedError,
  OpenRouterError,
} from "./errors.js";
export type * from "./types.js";
export type { components, paths } from "./generated/api.js";
