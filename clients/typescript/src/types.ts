/** The service's shapes are aliases of the generated OpenAPI types (src/generated/api.ts, made
 * by `npm run generate`), so a change of the service shows up here as a compile error. The chat
 * shapes are OpenRouter's (OpenAI-compatible), which the service's document does not cover. */

import type { components } from "./generated/api.js";

type Schemas = components["schemas"];

/** GET /api/usage/{user_id}: the user's current month; money is decimal strings. */
export type Usage = Schemas["CurrentUsage"];
/** One budget OpenRouter enforces on the user's key (Usage.budget_layers, Usage.blocked_by):
 * source key_limit (the key's monthly limit), tier_policy (the tier's daily cap), guardrail or
 * workspace; remaining_usd "0" refuses every request until resets_at. */
export type BudgetLayer = Schemas["BudgetLayer"];
/** One line of Usage.by_model / Usage.by_agent. */
export type Breakdown = Schemas["Breakdown"];
/** PUT /api/users/{user_id}: the user as written and what it did to their key's limit. */
export type UserInfo = Schemas["UserInfo"];
/** PUT /api/users/{user_id}'s body. */
export type UserPut = Schemas["UserPut"];
/** POST /api/users/{user_id}/budget-increases's body. */
export type BudgetIncreaseRequest = Schemas["BudgetIncreaseRequest"];
/** POST /api/users/{user_id}/budget-increases (201): the grant and what it did to the key's
 * limit. */
export type BudgetIncreaseGranted = Schemas["BudgetIncreaseGranted"];
/** One grant of extra budget (BudgetIncreaseGranted.increase). */
export type BudgetIncrease = Schemas["BudgetIncreaseInfo"];
/** GET /api/keys/user/{user_id}?reveal=true. */
export type CurrentKey = Schemas["CurrentKeyResponse"];
/** A key's metadata (never its secret). */
export type KeyInfo = Schemas["KeyInfo"];
/** One generation as the service stores it (POST /api/usage/log). */
export type UsageEvent = Schemas["UsageEvent"];
/** POST /api/usage/log's answer: per event stored, duplicate or rejected. */
export type UsageLogResponse = Schemas["UsageLogResponse"];
/** The body of every error of the service: `{"error": ErrorBody}`. */
export type ErrorBody = Schemas["ErrorBody"];
export type RotationPolicy = NonNullable<UserInfo["rotation_policy"]>;

/** What the client sends for one event: the fields it knows, cost as a decimal string. */
export type UsageEventBody = Pick<
  UsageEvent,
  "user_id" | "generation_id" | "model" | "prompt_tokens" | "completion_tokens"
> & { cost_usd: string; agent_name?: string };

/** One generation for report(): what chat() reports on its own after each completion. */
export interface UsageReport {
  userId: string;
  /** OpenRouter's generation id (the completion's `id`): the service deduplicates by it. */
  generationId: string;
  model: string;
  /** USD: a decimal string, or a number (written without exponent). */
  costUsd: string | number;
  promptTokens?: number;
  completionTokens?: number;
  agentName?: string;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool" | (string & {});
  content: string | unknown[] | null;
  [extra: string]: unknown;
}

/** An OpenAI-compatible chat completion request, not streamed; other fields pass through. */
export interface ChatRequest {
  model: string;
  messages: ChatMessage[];
  max_tokens?: number;
  stream?: false;
  usage?: { include?: boolean; [extra: string]: unknown };
  [extra: string]: unknown;
}

export interface ChatUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** USD, with `usage: {include: true}` (chat() always asks for it). */
  cost?: number;
  [extra: string]: unknown;
}

export interface ChatChoice {
  index: number;
  message: ChatMessage;
  finish_reason: string | null;
  [extra: string]: unknown;
}

/** OpenRouter's answer: `id` is the generation id that usage is reported under. */
export interface ChatCompletion {
  id: string;
  model: string;
  object?: string;
  created?: number;
  choices: ChatChoice[];
  usage?: ChatUsage;
  [extra: string]: unknown;
}

export interface ChatOptions {
  /** Reported with the usage: the service breaks spend down by it. */
  agentName?: string;
  /** Aborts the completion (with the client's chatTimeoutMs, whichever comes first). */
  signal?: AbortSignal;
}

/** Where warnings and errors of the background work go; console by default. */
export interface Logger {
  warn(message: string, ...rest: unknown[]): void;
  error(message: string, ...rest: unknown[]): void;
}
