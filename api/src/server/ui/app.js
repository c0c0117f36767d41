// fleet dashboard: reads the API v1, follows /fleet/v1/events, and acts
// through the same API (so the API's access rules apply to every button).
"use strict";

const API = new URL("../fleet/v1/", location.href);
const state = { machines: [], units: [], states: [], lastChange: {}, events: [] };
const MAX_EVENTS = 200;
const LOG_LINES = 20;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

// Reads every page of a v1 listing.
async function list(resource, field) {
  const items = [];
  let token = "";
  do {
    const url = new URL(resource, API);
    if (token) url.searchParams.set("nextPageToken", token);
    const reply = await fetch(url);
    if (!reply.ok) throw new Error(`${resource}: HTTP ${reply.status}`);
    const page = await reply.json();
    items.push(...(page[field] || []));
    token = page.nextPageToken || "";
  } while (token);
  return items;
}

async function refresh() {
  try {
    const [machines, units, states] = await Promise.all([
      list("machines", "machines"), list("units", "units"), list("state", "states"),
    ]);
    Object.assign(state, { machines, units, states });
    render();
  } catch (error) {
    $("summary").textContent = `cannot read the API: ${error.message}`;
  }
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 250);
}

function statesOf(name) { return state.states.filter((s) => s.name === name); }

function unitRows() {
  const rows = [];
  for (const unit of state.units) {
    const reported = statesOf(unit.name);
    const placements = unit.machineID ? [unit.machineID] : reported.map((s) => s.machineID);
    const machines = placements.length ? [...new Set(placements)] : [""];
    for (const machine of machines) {
      const s = reported.find((r) => r.machineID === machine) || {};
      rows.push({ unit, machine, active: s.systemdActiveState || "", sub: s.systemdSubState || "" });
    }
  }
  return rows;
}

function admitted(row) {
  const name = $("filter-unit").value.trim();
  const machine = $("filter-machine").value;
  const want = $("filter-state").value;
  if (name && !row.unit.name.includes(name)) return false;
  if (machine && row.machine !== machine) return false;
  if (want === "unplaced") return !row.machine;
  if (want && row.active !== want) return false;
  return true;
}

function stateCell(value) { return el("td", { class: `state-${value}` }, value || "-"); }

function render() {
  const rows = unitRows();
  const active = rows.filter((r) => r.active === "active").length;
  const failed = rows.filter((r) => r.active === "failed").length;
  $("summary").textContent =
    `${state.machines.length} machines · ${state.units.length} units · ${active} active · ${failed} failed`;

  const select = $("filter-machine");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all machines"),
    ...state.machines.map((m) => el("option", { value: m.id }, m.id)));
  select.value = chosen;

  $("machines").tBodies[0].replaceChildren(...state.machines.map((m) => {
    const count = rows.filter((r) => r.machine === m.id).length;
    const metadata = Object.entries(m.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    return el("tr", { "data-machine": m.id },
      el("td", {}, m.id), el("td", {}, m.primaryIP || "-"), el("td", {}, metadata || "-"), el("td", {}, count));
  }));

  $("units").tBodies[0].replaceChildren(...rows.filter(admitted).map((row) => {
    const name = row.unit.name;
    const changed = state.lastChange[name];
    return el("tr", { "data-unit": name },
      el("td", {}, name),
      stateCell(row.unit.desiredState),
      stateCell(row.unit.currentState),
      el("td", {}, row.machine || "-"),
      stateCell(row.active),
      stateCell(row.sub),
      el("td", {}, changed ? changed.toLocaleTimeString() : "-"),
      el("td", { class: "actions" },
        el("button", { "data-action": "start", onclick: () => act(name, "launched") }, "start"),
        el("button", { "data-action": "stop", onclick: () => act(name, "loaded") }, "stop"),
        el("button", { "data-action": "logs", onclick: () => showLogs(name) }, "logs"),
        el("button", { "data-action": "destroy", class: "danger", onclick: () => destroy(name) }, "destroy")));
  }));
}

function showError(message) {
  const node = $("action-error");
  node.textContent = message;
  node.hidden = !message;
}

async function answer(reply, what) {
  if (reply.ok) { showError(""); return; }
  let message = `HTTP ${reply.status}`;
  try { message = (await reply.json()).error.message || message; } catch (_) { /* not JSON */ }
  showError(`${what}: ${message}`);
}

async function act(name, desiredState) {
  const reply = await fetch(new URL(`units/${encodeURIComponent(name)}`, API), {
    method: "PUT",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name, desiredState }),
  });
  await answer(reply, `${desiredState === "launched" ? "start" : "stop"} ${name}`);
  refreshSoon();
}

async function destroy(name) {
  if (!confirm(`Destroy ${name}?`)) return;
  const reply = await fetch(new URL(`units/${encodeURIComponent(name)}`, API), { method: "DELETE" });
  await answer(reply, `destroy ${name}`);
  refreshSoon();
}

function describe(event) {
  const parts = [event.unit, event.machine && `on ${event.machine}`, event.targetState && `target ${event.targetState}`,
    event.activeState && `${event.activeState}/${event.subState}`, event.publicIP,
    event.reason && `(${event.reason})`].filter(Boolean);
  return parts.join(" ");
}

// The lines of a server-sent event stream's "line" events, and its error if it ended with one.
function logLines(text) {
  const lines = [];
  let error = "";
  for (const block of text.split("\n\n")) {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (kind === "line") lines.push(data.join("\n"));
    else if (kind === "error") error = data.join("\n");
  }
  return { lines, error };
}

// The unit's last journal lines, read on its machine through the API (GET /fleet/x1/units/NAME/logs).
async function showLogs(name) {
  $("logs-section").hidden = false;
  $("logs-unit").textContent = name;
  const pre = $("logs");
  const problem = $("logs-error");
  pre.textContent = "loading…";
  problem.hidden = true;
  const reply = await fetch(new URL(`../x1/units/${encodeURIComponent(name)}/logs?lines=${LOG_LINES}`, API));
  if (!reply.ok) {
    let message = `HTTP ${reply.status}`;
    try { message = (await reply.json()).error.message || message; } catch (_) { /* not JSON */ }
    pre.textContent = "";
    problem.textContent = message;
    problem.hidden = false;
    return;
  }
  const { lines, error } = logLines(await reply.text());
  pre.textContent = lines.length ? lines.join("\n") : "(no journal lines)";
  if (error) { problem.textContent = error; problem.hidden = false; }
}

function onEvent(message) {
  let event;
  try { event = JSON.parse(message.data); } catch (_) { return; }
  if (event.unit) state.lastChange[event.unit] = new Date();
  const item = el("li", { "data-kind": event.type },
    `${new Date().toLocaleTimeString()} `, el("span", { class: "kind" }, event.type), ` ${describe(event)}`);
  const feed = $("events");
  feed.prepend(item);
  while (feed.children.length > MAX_EVENTS) feed.lastChild.remove();
  refreshSoon();
}

const KINDS = ["unit.submitted", "unit.replaced", "unit.target-changed", "unit.destroyed", "unit.placed",
  "unit.unplaced", "unit.state-changed", "unit.state-removed", "machine.joined", "machine.changed",
  "machine.left", "engine.leader-changed"];

function follow() {
  // EventSource reconnects by itself and sends Last-Event-ID, so nothing is lost.
  const source = new EventSource(new URL("events", API));
  const live = $("live");
  source.onopen = () => { live.textContent = "live"; live.className = "badge on"; refreshSoon(); };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "badge off"; };
  for (const kind of KINDS) source.addEventListener(kind, onEvent);
  source.addEventListener("error", (message) => {
    if (!message.data) return; // a transport error, handled by onerror
    source.close();
    live.textContent = "stream ended";
    setTimeout(follow, 2000);
  });
}

for (const id of ["filter-unit", "filter-machine", "filter-state"]) $(id).addEventListener("input", render);
$("logs-close").addEventListener("click", () => { $("logs-section").hidden = true; });
refresh();
follow();
