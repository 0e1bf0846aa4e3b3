/** The checked-in openapi.json and src/generated/api.ts are what the running service serves:
 * a change of the service that the client's types do not know fails here. */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { canonicalJson, generateTypes } from "../tools/codegen.js";
import { useStack } from "./helpers.js";

const stack = useStack();
const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const FIX = "the service's API changed: run `npm run generate` in clients/typescript and commit";

async function served(): Promise<string> {
  const response = await fetch(`${stack().agentUrl}/openapi.json`);
  assert.equal(response.status, 200);
  return canonicalJson(await response.json());
}

test("openapi.json is the served document", async () => {
  const checkedIn = await readFile(resolve(PACKAGE_DIR, "openapi.json"), "utf8");
  assert.ok((await served()) === checkedIn, `openapi.json differs from the served one: ${FIX}`);
});

test("src/generated/api.ts is openapi-typescript's output for the served document", async () => {
  const checkedIn = await readFile(resolve(PACKAGE_DIR, "src/generated/api.ts"), "utf8");
  const generated = await generateTypes(await served());
  assert.ok(generated === checkedIn, `src/generated/api.ts is out of date: ${FIX}`);
});
