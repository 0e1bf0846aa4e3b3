/** What the tests share: the stack, the operator's calls (admin token), and a fetch wrapper that
 * records what the client sends and can make chosen requests fail. */

import { after, before } from "node:test";

import { AgentClient, type AgentClientOptions } from "../src/index.js";
import { startStack, type RunningStack } from "../tools/stack.js";

/** One stack per test file: started before its tests, stopped after. */
export function useStack(): () => RunningStack {
  let stack: RunningStack | undefined;
  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stack?.close();
  });
  return () => {
    if (stack === undefined) throw new Error("the stack is not up");
    return stack;
  };
}

export interface Call {
  method: string;
  url: URL;
  /** The answer's status; 0 when the request failed (or was made to fail). */
  status: number;
  /** The bearer the request carried: for chats, the user's key. */
  bearer: string;
  /** For a reveal: what the service answered. */
  revealed?: { secret: string; disabled: boolean };
}

/** Decides, per request, to let it through (undefined), answer it, or fail it. */
export type Fault = (call: {
  method: string;
  url: URL;
  nth: number;
}) => Response | Error | undefined;

/** A fetch for the client that records every request and its answer's status. */
export class Recorder {
  readonly calls: Call[] = [];
  fault: Fault | undefined;

  readonly fetch: typeof globalThis.fetch = async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : input.toString());
    const method = (init?.method ?? "GET").toUpperCase();
    const nth = this.calls.filter(
      (c) => c.method === method && c.url.pathname === url.pathname,
    ).length;
    const bearer = new Headers(init?.headers).get("authorization")?.replace(/^Bearer /, "") ?? "";
    const call: Call = { method, url, status: 0, bearer };
    this.calls.push(call);
    const injected = this.fault?.({ method, url, nth });
    if (injected instanceof Error) throw injected;
    const response = injected ?? (await globalThis.fetch(input, init));
    call.status = response.status;
    if (isReveal(call) && response.ok) {
      const body = (await response.clone().json()) as {
        secret: string;
        key: { disabled: boolean };
      };
      call.revealed = { secret: body.secret, disabled: body.key.disabled };
    }
    return response;
  };

  /** GET /api/keys/user/{id}?reveal=true: what the service audits and rate-limits. */
  get reveals(): number {
    return this.calls.filter(isReveal).length;
  }

  get usagePosts(): Call[] {
    return this.calls.filter((c) => c.method === "POST" && c.url.pathname === "/api/usage/log");
  }

  get completions(): Call[] {
    return this.calls.filter((c) => c.url.pathname.endsWith("/chat/completions"));
  }
}

function isReveal(call: Call): boolean {
  return (
    call.method === "GET" &&
    call.url.pathname.startsWith("/api/keys/user/") &&
    call.url.searchParams.get("reveal") === "true"
  );
}

export function newClient(
  stack: RunningStack,
  options: Partial<AgentClientOptions> = {},
): AgentClient {
  return new AgentClient({
    baseUrl: stack.agentUrl,
    token: stack.serviceToken,
    openrouterBaseUrl: stack.openrouterUrl,
    ...options,
  });
}

/** The operator's side, over plain HTTP with the admin token. */
export async function admin(
  stack: RunningStack,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(stack.agentUrl + path, {
    method,
    headers: {
      Authorization: `Bearer ${stack.adminToken}`,
      "Content-Type": "application/json",
    },
    body: body === undefined ? null : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** A new user with a key (tier free, $10 a month); answers the key's secret. */
export async function createKey(stack: RunningStack, userId: string): Promise<string> {
  const created = await admin(stack, "POST", "/api/keys/create", { user_id: userId });
  if (created.status !== 201) throw new Error(`create ${userId}: ${JSON.stringify(created)}`);
  return created.body["secret"] as string;
}

/** Spends on the key at the emulator, as generations elsewhere would. */
export async function charge(
  stack: RunningStack,
  secret: string,
  cost: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const base = stack.openrouterUrl.replace(/\/api\/v1$/, "");
  const response = await fetch(`${base}/_emulator/charge`, {
    method: "POST",
    headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
    body: JSON.stringify({ cost }),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** A decimal string as an integer count of 1e-8 USD, for exact sums. */
export function units(decimal: string): bigint {
  const [whole = "0", fraction = ""] = decimal.split(".");
  if (fraction.length > 8) throw new Error(`more than 8 decimals: ${decimal}`);
  return BigInt(whole) * 100_000_000n + BigInt(fraction.padEnd(8, "0") || "0");
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A logger that keeps what it is told. */
export class MemoryLogger {
  readonly warnings: string[] = [];
  readonly errors: string[] = [];
  warn(message: string): void {
    this.warnings.push(message);
  }
  error(message: string): void {
    this.errors.push(message);
  }
}
