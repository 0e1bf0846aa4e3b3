/** The repo's local stack (tests/clients/local_stack.py) as a child process: the real server,
 * its embedded PostgreSQL and OpenRouter emulator, in a fresh temp folder, up until close(). */

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** What local_stack prints on its one JSON line, in camelCase. */
export interface Stack {
  agentUrl: string;
  openrouterUrl: string;
  adminToken: string;
  serviceToken: string;
  dataDir: string;
}

export interface RunningStack extends Stack {
  close(): Promise<void>;
}

const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 30_000;

/** clients/typescript is two levels below the repo root, whether run from tools/ or dist/tools/. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!dir.endsWith("clients/typescript") && dirname(dir) !== dir) dir = dirname(dir);
  return resolve(dir, "..", "..");
}

/** Starts the stack and resolves once it printed its line (about 2-3 s). */
export async function startStack(): Promise<RunningStack> {
  const root = repoRoot();
  const python = process.env["OPENROUTER_AGENT_PYTHON"] ?? resolve(root, ".venv/bin/python");
  const child = spawn(python, ["-m", "tests.clients.local_stack"], {
    cwd: root,
    stdio: ["pipe", "pipe", "inherit"],
  });
  // A crashed test run must not leave the server behind: SIGINT lets local_stack clean up.
  const onExit = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGINT");
  };
  process.on("exit", onExit);
  try {
    const line = await firstLine(child);
    const raw = JSON.parse(line) as Record<string, string>;
    return {
      agentUrl: required(raw, "agent_url"),
      openrouterUrl: required(raw, "openrouter_url"),
      adminToken: required(raw, "admin_token"),
      serviceToken: required(raw, "service_token"),
      dataDir: required(raw, "data_dir"),
      close: () => stop(child).finally(() => process.off("exit", onExit)),
    };
  } catch (error) {
    await stop(child);
    process.off("exit", onExit);
    throw error;
  }
}

function required(raw: Record<string, string>, name: string): string {
  const value = raw[name];
  if (typeof value !== "string" || !value) throw new Error(`local_stack printed no ${name}`);
  return value;
}

function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolveLine, reject) => {
    if (!child.stdout) return reject(new Error("local_stack has no stdout"));
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => {
      reject(new Error(`local_stack printed nothing within ${START_TIMEOUT_MS} ms`));
    }, START_TIMEOUT_MS);
    const fail = (error: Error): void => {
      clearTimeout(timer);
      reject(error);
    };
    child.once("error", fail);
    child.once("exit", (code, signal) => {
      fail(new Error(`local_stack exited (${code ?? signal}) before printing its line`));
    });
    lines.once("line", (line) => {
      clearTimeout(timer);
      lines.close();
      resolveLine(line);
    });
  });
}

/** Closing stdin is local_stack's signal to stop the server and remove its folder. */
async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.stdin?.end();
  const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
  }
}
