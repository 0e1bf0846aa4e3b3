// The admin dashboard: reads the JSON API with the operator's credential, draws it, and
// calls the same API for the actions (each after a confirmation). No framework, no build.
"use strict";

const TOKEN_KEY = "openrouter-agent-admin-token";
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": `Bearer ${token()}`, "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || response.statusText);
    error.status = response.status;
    error.code = body.error && body.error.code;
    throw error;
  }
  return body;
}

function money(value) {
  // As the CLI writes it: cents, or every place an amount under a cent needs.
  if (value === null || value === undefined) return "unlimited";
  const amount = Number(value);
  const sign = amount < 0 ? "-" : "";
  if (amount !== 0 && Math.abs(amount) < 0.01) return `${sign}$${String(value).replace("-", "")}`;
  return `${sign}$${Math.abs(amount).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
}

function utc(timestamp) {
  // An instant as the API gives it (UTC), to the second.
  return `${timestamp.slice(0, 19).replace("T", " ")}Z`;
}

function allowed(list) {
  // A tier policy's allowlist; none (null) means anything goes.
  return list === null || list === undefined ? cell("unrestricted", "none") : cell(list.join(", "), "list");
}

function keyLimit(row) {
  if (!row.has_key) return "no key";
  return money(row.key_limit_usd);
}

function actor(row) {
  // A service token is shown by its name; the raw actor stays in the tooltip.
  const td = cell(row.actor_name ? `${row.actor_name} (token)` : row.actor);
  td.title = row.actor;
  return td;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fill(tableId, rows, columns) {
  const table = $(tableId);
  const body = table.tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("nothing yet", "empty");
    td.colSpan = table.tHead ? table.tHead.rows[0].cells.length : columns.length;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const column of columns) tr.append(typeof column === "function" ? column(row) : cell(row[column]));
    body.append(tr);
  }
}

const CHART_WIDTH = 400;

function barChart(svgId, rows) {
  // One row per entry: its name on a line of its own (long model names never run into the
  // bar), then the bar, its width proportional to cost, and the figure at the right.
  const svg = $(svgId);
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const height = 30;
  svg.setAttribute("viewBox", `0 0 ${CHART_WIDTH} ${Math.max(rows.length, 1) * height}`);
  if (rows.length === 0) {
    const empty = document.createElementNS(ns, "text");
    empty.setAttribute("x", 0);
    empty.setAttribute("y", 18);
    empty.setAttribute("class", "empty");
    empty.textContent = "nothing yet";
    svg.append(empty);
    return;
  }
  const max = Math.max(...rows.map((r) => Number(r.cost_usd)), 0.000001);
  rows.forEach((row, i) => {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 0);
    label.setAttribute("y", i * height + 11);
    label.textContent = row.name;
    const title = document.createElementNS(ns, "title");
    title.textContent = `${row.name}: ${money(row.cost_usd)}`;
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", 0);
    bar.setAttribute("y", i * height + 15);
    bar.setAttribute("height", 11);
    bar.setAttribute("width", Math.max(1, (Number(row.cost_usd) / max) * 310));
    bar.dataset.name = row.name;
    bar.dataset.cost = row.cost_usd;
    bar.append(title);
    const figure = document.createElementNS(ns, "text");
    figure.setAttribute("x", CHART_WIDTH);
    figure.setAttribute("y", i * height + 25);
    figure.setAttribute("text-anchor", "end");
    figure.textContent = money(row.cost_usd);
    svg.append(label, bar, figure);
    fitText(label, CHART_WIDTH);
  });
}

function fitText(text, width) {
  // Shorten a label that does not fit the chart (at this screen's font size) to what does,
  // with an ellipsis; the bar's tooltip keeps the whole name.
  const whole = text.textContent;
  let shown = whole.length;
  while (shown > 1 && text.getComputedTextLength() > width) {
    shown -= 1;
    text.textContent = `${whole.slice(0, shown)}…`;
  }
}

let drawn = null;
window.addEventListener("resize", () => {
  if (!drawn) return;
  barChart("chart-tier", drawn.by_tier);
  barChart("chart-model", drawn.by_model);
});

async function load() {
  const [usage, states, jobs, emergencies, audit, tiers, policies, capped] = await Promise.all([
    api("/api/admin/usage"),
    api("/api/admin/keys/by-state"),
    api("/api/admin/jobs?limit=10"),
    api("/api/admin/emergency-rotate"),
    api("/api/admin/audit?limit=15"),
    api("/api/admin/tiers"),
    api("/api/admin/tiers/policies"),
    api("/api/admin/usage/daily-capped"),
  ]);
  $("period").textContent = usage.period.slice(0, 7);
  $("spent").textContent = money(usage.spent_usd);
  $("events-cost").textContent = money(usage.events_usd);
  $("adjustments").textContent = money(usage.adjustments_usd);
  $("unreported").textContent = money(usage.unreported_usd);
  $("corrections").textContent = money(usage.corrections_usd);
  $("corrections-detail").textContent = `${usage.corrections.toLocaleString()} corrected, ` +
    `${usage.foreign_events.toLocaleString()} foreign, ${usage.unverifiable_events.toLocaleString()} unverifiable`;
  $("events").textContent = usage.events.toLocaleString();
  $("users").textContent = usage.users.toLocaleString();
  drawn = usage;
  barChart("chart-tier", usage.by_tier);
  barChart("chart-model", usage.by_model);
  const near = [...usage.over_80_percent];
  fill("near-limit", near, ["user_id", "tier", (r) => cell(money(r.spent_usd)), (r) => cell(money(r.limit_usd)),
    (r) => cell(keyLimit(r)),
    (r) => cell(r.percent_used, Number(r.percent_used) >= 100 ? "over" : ""),
    (r) => cell(Number(r.percent_used) >= 100 ? "over" : "near")]);
  fill("daily-capped", capped.data, ["user_id", "tier", (r) => cell(money(r.spent_today_usd), "over"),
    (r) => cell(money(r.daily_cap_usd)), (r) => cell(utc(r.resets_at))]);
  const budgets = new Map(tiers.data.map((t) => [t.tier, t.monthly_budget_usd]));
  fill("tier-policies", policies.data, ["tier", (r) => cell(money(budgets.get(r.tier))),
    (r) => cell(money(r.daily_cap_usd)), (r) => allowed(r.allowed_models), (r) => allowed(r.allowed_providers)]);
  fill("keys-by-state", Object.entries(states.counts).map(([state, n]) => ({ state, n })), ["state", "n"]);
  fill("drift", usage.drift, ["user_id", (r) => cell(money(r.openrouter_usd)), (r) => cell(money(r.ledger_usd)),
    (r) => cell(money(r.drift_usd))]);
  fill("jobs", jobs.data, ["kind", "name", "status", "done", "remaining", "failed",
    (r) => cell(r.rate_per_s || ""), (r) => cell(r.eta || "")]);
  fill("emergencies", emergencies.data, ["id", "status", "replaced", "failed", "total", "reason"]);
  fill("audit", audit.data, ["seq", (r) => cell(utc(r.occurred_at)), actor,
    "action", (r) => cell(r.target || "")]);
}

async function show() {
  if (!token()) { signedOut(); return; }
  // Visible before it is drawn: labels are measured to fit, and hidden text measures 0.
  $("sign-in").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = false;
  $("load-error").hidden = true;
  try {
    await load();
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      signedOut(`refused: ${error.code || error.status}`);  // the token is no good: forget it
      return;
    }
    // An outage or a slow database is no reason to sign the admin out.
    $("load-error").hidden = false;
    $("load-error").textContent = `could not load: ${error.message}; reload to try again`;
  }
}

function signedOut(message) {
  if (message) sessionStorage.removeItem(TOKEN_KEY);
  $("dashboard").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("refused").hidden = !message;
  $("refused").textContent = message || "";
}

async function act(description, call) {
  if (!window.confirm(description)) return;
  try {
    const result = await call();
    $("action-result").textContent = "done";
    await load();
    return result;
  } catch (error) {
    $("action-result").textContent = `refused: ${error.code || error.status}: ${error.message}`;
  }
}

async function followEmergency(rotation) {
  $("emergency-progress").hidden = false;
  let status = rotation;
  for (;;) {
    $("emergency-bar").max = Math.max(status.total, 1);
    $("emergency-bar").value = status.replaced;
    $("emergency-status").textContent =
      `${status.replaced} / ${status.total} replaced, ${status.failed} failed (${status.status})`;
    if (status.status !== "running") break;
    await new Promise((resolve) => setTimeout(resolve, 500));
    status = await api(`/api/admin/emergency-rotate/${rotation.id}`);
  }
  await load();
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-button").addEventListener("click", () => {
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    show();
  });
  $("sign-out").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); signedOut(); });
  $("rotate-user").addEventListener("click", () => {
    const user = $("action-user").value.trim();
    act(`Rotate the key of ${user}?`, () => api("/api/keys/rotate", {
      method: "POST", body: JSON.stringify({ user_id: user, reason: $("action-reason").value || null }),
    }));
  });
  $("reset-user").addEventListener("click", () => {
    const user = $("action-user").value.trim();
    act(`Give ${user} their whole budget back this month?`, () => api("/api/admin/reset-usage", {
      method: "POST", body: JSON.stringify({ user_id: user, reason: $("action-reason").value }),
    }));
  });
  $("emergency").addEventListener("click", async () => {
    const reason = $("action-reason").value.trim();
    const rotation = await act(`EMERGENCY: disable and replace EVERY key now? Reason: ${reason}`,
      () => api("/api/admin/emergency-rotate", {
        method: "POST", body: JSON.stringify({ all: true, reason }),
      }));
    if (rotation) await followEmergency(rotation);
  });
  show();
});
