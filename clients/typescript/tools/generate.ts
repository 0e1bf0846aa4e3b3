/** `npm run generate`: the served OpenAPI document into openapi.json and src/generated/api.ts.
 * From OPENROUTER_AGENT_URL when set, else from a local stack started for the purpose. */

import { writeFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { canonicalJson, generateTypes } from "./codegen.js";
import { startStack } from "./stack.js";

const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

async function servedDocument(agentUrl: string): Promise<unknown> {
  const response = await fetch(new URL("/openapi.json", agentUrl));
  if (!response.ok) throw new Error(`GET /openapi.json answered ${response.status}`);
  return response.json();
}

async function main(): Promise<void> {
  const given = process.env["OPENROUTER_AGENT_URL"];
  const stack = given ? null : await startStack();
  try {
    const canonical = canonicalJson(await servedDocument(given ?? stack!.agentUrl));
    await writeFile(resolve(PACKAGE_DIR, "openapi.json"), canonical);
    await writeFile(resolve(PACKAGE_DIR, "src/generated/api.ts"), await generateTypes(canonical));
    console.log("wrote openapi.json and src/generated/api.ts");
  } finally {
    await stack?.close();
  }
}

await main();
