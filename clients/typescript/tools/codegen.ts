/** The one way openapi.json and src/generated/api.ts are made, shared by `npm run generate`
 * and the drift test, so that both compare like with like. */

import openapiTS, { astToString, COMMENT_HEADER, type OpenAPI3 } from "openapi-typescript";

/** Object keys sorted at every level, two-space indent, final newline: a served document whose
 * dicts come out in another order is the same file, so only real changes show as drift. */
export function canonicalJson(document: unknown): string {
  return JSON.stringify(sortKeys(document), null, 2) + "\n";
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return Object.fromEntries(entries.map(([key, item]) => [key, sortKeys(item)]));
  }
  return value;
}

/** openapi-typescript's output for the canonical document, with the header its CLI writes. */
export async function generateTypes(canonical: string): Promise<string> {
  const document = JSON.parse(canonical) as OpenAPI3;
  return COMMENT_HEADER + astToString(await openapiTS(document, { silent: true }));
}
