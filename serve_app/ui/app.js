// inferia console: plain JavaScript over the HTTP API (docs/API.md). No build step, no external asset.
// The admin token lives in sessionStorage (this tab only) and goes out as `Authorization: Bearer`.
"use strict";

const TOKEN_KEY = "inferia_token";
const PAGE = 50;
const REFRESH_MS = 3000;
const $ = (sel) => document.querySelector(sel);

const state = {
  view: null,
  timer: null,
  nodes: { offset: 0, total: 0 },
  events: { before: null, stack: [] },
  routing: { version: null, running: false, table: null, gen: 0 },
  pools: [],
};

// ------------------------------------------------------------------ API
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(method, path, body, extra = {}) {
  const headers = { authorization: `Bearer ${token()}`, ...(extra.headers || {}) };
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: extra.signal,
  });
  if (resp.status === 304) return { notModified: true, etag: resp.headers.get("etag") };
  let data = null;
  const text = await resp.text();
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (resp.status === 401 || resp.status === 403) {
    signOut("the token was refused; sign in again");
    throw new ApiError(resp.status, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  if (extra.withEtag) return { data, etag: resp.headers.get("etag") };
  return data;
}

// ------------------------------------------------------------------ DOM helpers (textContent only: no HTML from data)
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function stateBadge(s) { return el("span", { class: `state ${s}`, "data-state": s }, s); }
function fill(tbody, rows, empty, cols) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: cols, class: "muted" }, empty))]));
}
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 60) return `${seconds.toFixed(1)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}
function sinceIso(iso) {
  if (!iso) return null;
  return Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
}
function setStatus(text, bad = false) {
  const s = $("#status");
  s.textContent = text;
  s.className = bad ? "error" : "muted";
}

// ------------------------------------------------------------------ confirmation dialog
function confirmAction(text, fields = []) {
  // fields: [{name, label, value, type}] -> resolves to {name: value} or null when cancelled
  return new Promise((resolve) => {
    const dlg = $("#confirm");
    $("#confirm-text").textContent = text;
    $("#confirm-error").textContent = "";
    const box = $("#confirm-fields");
    box.replaceChildren(...fields.map((f) => el("label", {}, f.label,
      el("input", { name: f.name, id: `confirm-${f.name}`, type: f.type || "text", value: f.value ?? "" }))));
    dlg.onclose = () => {
      if (dlg.returnValue !== "ok") return resolve(null);
      const out = {};
      for (const f of fields) out[f.name] = box.querySelector(`[name="${f.name}"]`).value;
      resolve(out);
    };
    dlg.returnValue = "";
    dlg.showModal();
  });
}

async function act(what, fn) {
  try {
    await fn();
    setStatus(`${what}: done`);
  } catch (e) {
    setStatus(`${what}: ${e.message}`, true);
  }
  refresh();
}

// ------------------------------------------------------------------ pools
async function loadPools() {
  const pools = await api("GET", "/v1/pools");
  state.pools = pools;
  const rows = pools.map((p) => el("tr", { "data-pool": p.name },
    el("td", {}, el("b", {}, p.name), el("div", { class: "muted mono" }, p.id)),
    el("td", {}, p.provider, el("div", { class: "muted" }, p.region)),
    el("td", {}, stateBadge(p.state)),
    el("td", { "data-field": "nodes" }, p.nodes ?? ""),
    el("td", { "data-field": "limits" }, `${p.min_nodes} / ${p.target_nodes} / ${p.max_nodes}`),
    el("td", {}, p.cost_per_hour === undefined ? "" : p.cost_per_hour.toFixed(4)),
    el("td", {}, p.max_cost_per_hour ?? "none"),
    el("td", {}, (p.allowed_gpu_types || []).join(", ") || "any"),
    el("td", {}, el("button", { "data-action": "edit-pool", on: { click: () => editPool(p) } }, "Edit limits")),
  ));
  fill($("#pools-table tbody"), rows, "no pools yet (inferia-orch pools create NAME)", 9);
}

async function editPool(p) {
  const v = await confirmAction(`Change the limits of pool ${p.name}?`, [
    { name: "min_nodes", label: "min_nodes", value: p.min_nodes, type: "number" },
    { name: "target_nodes", label: "target_nodes", value: p.target_nodes, type: "number" },
    { name: "max_nodes", label: "max_nodes", value: p.max_nodes, type: "number" },
    { name: "max_cost_per_hour", label: "max_cost_per_hour (empty: none)", value: p.max_cost_per_hour ?? "" },
  ]);
  if (!v) return;
  const body = {};
  for (const k of ["min_nodes", "target_nodes", "max_nodes"]) if (String(v[k]) !== String(p[k])) body[k] = Number(v[k]);
  const cost = v.max_cost_per_hour === "" ? null : Number(v.max_cost_per_hour);
  if (cost !== (p.max_cost_per_hour ?? null)) body.max_cost_per_hour = cost;
  await act(`update pool ${p.name}`, () => api("PATCH", `/v1/pools/${encodeURIComponent(p.id)}`, body));
}

// ------------------------------------------------------------------ nodes (server-side paging and filters)
function nodeQuery() {
  const q = new URLSearchParams({ limit: PAGE, offset: state.nodes.offset });
  const s = $("#node-state").value, p = $("#node-pool").value, text = $("#node-q").value.trim();
  if (s) q.set("state", s);
  if (p) q.set("pool", p);
  if (text) q.set("q", text);
  return q;
}

async function loadNodes() {
  if (!state.pools.length) state.pools = await api("GET", "/v1/pools");
  const sel = $("#node-pool");
  if (sel.options.length !== state.pools.length + 1) {
    const keep = sel.value;
    sel.replaceChildren(el("option", { value: "" }, "every pool"), ...state.pools.map((p) => el("option", { value: p.id }, p.name)));
    sel.value = keep;
  }
  const names = Object.fromEntries(state.pools.map((p) => [p.id, p.name]));
  const page = await api("GET", `/v1/nodes?${nodeQuery()}`);
  state.nodes.total = page.total;
  const first = page.total ? page.offset + 1 : 0;
  $("#node-range").textContent = `${first}-${page.offset + page.items.length} of ${page.total}`;
  $("#node-prev").disabled = page.offset === 0;
  $("#node-next").disabled = page.offset + page.items.length >= page.total;
  const rows = page.items.map((n) => {
    const alive = !["terminated", "failed"].includes(n.state);
    const age = n.seconds_since_heartbeat ?? sinceIso(n.last_heartbeat);
    return el("tr", { "data-node": n.id, "data-deployment": n.deployment_id || "" },
      el("td", { class: "mono" }, n.id),
      el("td", {}, names[n.pool_id] || n.pool_id),
      el("td", {}, stateBadge(n.state), n.reason ? el("div", { class: "muted" }, n.reason) : null),
      el("td", {}, n.health_score ?? ""),
      el("td", {}, ago(age)),
      el("td", { class: "mono" }, n.endpoint || ""),
      el("td", { class: "mono" }, n.deployment_id || "idle"),
      el("td", {},
        el("button", { "data-action": "logs", on: { click: () => showLogs(n.id) } }, "Logs"), " ",
        alive ? el("button", { "data-action": "drain", on: { click: () => drainNode(n.id) } }, "Drain") : null, " ",
        n.state !== "terminated" ? el("button", { "data-action": "delete-node", on: { click: () => deleteNode(n.id) } }, "Delete") : null),
    );
  });
  fill($("#nodes-table tbody"), rows, "no node matches", 8);
}

async function showLogs(id) {
  $("#logs-panel").hidden = false;
  $("#logs-title").textContent = `Logs of ${id}`;
  $("#logs-body").textContent = "loading...";
  try {
    const r = await api("GET", `/v1/nodes/${encodeURIComponent(id)}/logs?tail=200`);
    $("#logs-body").textContent = r.lines.join("\n") || "(empty)";
  } catch (e) {
    $("#logs-body").textContent = `logs unavailable: ${e.message}`;
  }
}

async function drainNode(id) {
  if (!(await confirmAction(`Drain node ${id}? It leaves the routing table now and is terminated 5 s later.`))) return;
  await act(`drain ${id}`, () => api("POST", `/v1/nodes/${encodeURIComponent(id)}/drain`));
}

async function deleteNode(id) {
  if (!(await confirmAction(`Delete node ${id}? It is deprovisioned at its provider.`))) return;
  await act(`delete ${id}`, () => api("DELETE", `/v1/nodes/${encodeURIComponent(id)}`));
}

// ------------------------------------------------------------------ deployments
function extraState(d) {
  // autoscaling and rolling-update state, when the API's answer carries them (shown as they come otherwise)
  const parts = [];
  const a = d.autoscaling;
  if (a && typeof a === "object") {
    parts.push(`autoscaling ${a.min_replicas ?? "?"}-${a.max_replicas ?? "?"}, target ${a.target_ongoing_requests ?? "?"} ongoing/replica`);
    const last = d.autoscaler;
    if (last && typeof last === "object" && last.reason) parts.push(`last decision: ${last.desired ?? ""} (${last.reason})`);
  }
  const r = d.rollout;
  if (r && typeof r === "object") {
    let line = `update ${r.phase ?? ""}: generation ${r.current_generation ?? "?"} -> ${r.target_generation ?? "?"}`;
    if (r.updated !== undefined) line += `, ${r.updated} updated`;
    if (r.last_failure) line += `, last failure: ${r.last_failure}`;
    parts.push(line);
  }
  for (const [k, v] of Object.entries(d)) {  // fields of features this page does not know yet
    if (["autoscaling", "autoscaler", "rollout", "updated_at"].includes(k)) continue;
    if (/autoscal|rollout|update/i.test(k) && v !== null && v !== undefined) {
      parts.push(`${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
    }
  }
  if (!parts.length && d.generation > 1) parts.push(`generation ${d.generation}`);
  return parts.join("\n");
}

async function loadDeployments() {
  const deps = await api("GET", "/v1/deployments");
  const rows = deps.map((d) => el("tr", { "data-deployment": d.id, "data-state": d.state },
    el("td", { class: "mono" }, d.id),
    el("td", {}, d.model),
    el("td", {}, d.pool),
    el("td", {}, stateBadge(d.state), d.delete_requested ? el("div", { class: "muted" }, "delete requested") : null),
    el("td", { "data-field": "replicas" }, `${d.ready_replicas} / ${d.desired_replicas}`),
    el("td", { class: "mono", style: "white-space: pre-line" }, extraState(d)),
    el("td", { class: "error" }, d.error || ""),
    el("td", {},
      el("button", { "data-action": "scale", on: { click: () => scaleDeployment(d) } }, "Scale"), " ",
      ["stopped", "failed"].includes(d.state)
        ? el("button", { "data-action": "start", on: { click: () => startDeployment(d) } }, "Start")
        : el("button", { "data-action": "stop", on: { click: () => stopDeployment(d) } }, "Stop"), " ",
      el("button", { "data-action": "delete-deployment", on: { click: () => deleteDeployment(d) } }, "Delete")),
  ));
  fill($("#deployments-table tbody"), rows, "no deployments (inferia-orch deploy MODEL --pool POOL)", 8);
}

async function scaleDeployment(d) {
  const v = await confirmAction(`Scale deployment ${d.id} (${d.model})?`, [
    { name: "replicas", label: "replicas", value: d.desired_replicas, type: "number" },
  ]);
  if (!v) return;
  await act(`scale ${d.id}`, () => api("PATCH", `/v1/deployments/${encodeURIComponent(d.id)}`, { replicas: Number(v.replicas) }));
}
async function stopDeployment(d) {
  if (!(await confirmAction(`Stop deployment ${d.id} (${d.model})? Its replicas are terminated.`))) return;
  await act(`stop ${d.id}`, () => api("POST", `/v1/deployments/${encodeURIComponent(d.id)}/stop`));
}
async function startDeployment(d) {
  if (!(await confirmAction(`Start deployment ${d.id} (${d.model}) again?`))) return;
  await act(`start ${d.id}`, () => api("POST", `/v1/deployments/${encodeURIComponent(d.id)}/start`));
}
async function deleteDeployment(d) {
  if (!(await confirmAction(`Delete deployment ${d.id} (${d.model})? It is stopped, then removed.`))) return;
  await act(`delete ${d.id}`, () => api("DELETE", `/v1/deployments/${encodeURIComponent(d.id)}`));
}

// ------------------------------------------------------------------ routing table, live by long-poll
function renderRouting(table) {
  const rows = [];
  for (const model of Object.keys(table.models).sort()) {
    for (const r of table.models[model]) {
      rows.push(el("tr", { "data-model": model, "data-node": r.node_id },
        el("td", {}, model), el("td", { class: "mono" }, r.node_id), el("td", { class: "mono" }, r.endpoint),
        el("td", {}, r.served_model), el("td", {}, r.health_score ?? ""), el("td", { class: "mono" }, r.deployment_id)));
    }
  }
  fill($("#routing-table tbody"), rows, "no routable endpoint", 6);
  const at = table.changed_at ? new Date(table.changed_at * 1000).toLocaleTimeString() : "?";
  $("#routing-meta").replaceChildren(el("span", { class: "live" }, "● live"),
    ` version ${table.version}, changed at ${at}`);
  $("#routing-meta").setAttribute("data-version", table.version);
}

async function routingLoop() {
  const gen = ++state.routing.gen;
  state.routing.running = true;
  let etag = null;
  while (gen === state.routing.gen && token()) {
    try {
      const path = etag ? "/v1/routing-table?wait=1&timeout=25" : "/v1/routing-table";
      const r = await api("GET", path, undefined, { withEtag: true, headers: etag ? { "if-none-match": etag } : {} });
      if (gen !== state.routing.gen) break;
      if (!r.notModified) {
        etag = r.etag;
        state.routing.table = r.data;
        if (state.view === "routing") renderRouting(r.data);
      }
    } catch (e) {
      if (gen !== state.routing.gen) break;
      $("#routing-meta").textContent = `reconnecting (${e.message})`;
      await new Promise((res) => setTimeout(res, 2000));
    }
  }
}

// ------------------------------------------------------------------ events (paged by id)
async function loadEvents() {
  const q = new URLSearchParams({ limit: PAGE });
  if (state.events.before) q.set("before", state.events.before);
  const t = $("#event-type").value, k = $("#event-kind").value.trim();
  if (t) q.set("entity_type", t);
  if (k) q.set("kind", k);
  const page = await api("GET", `/v1/events?${q}`);
  state.events.next = page.next_before;
  $("#event-older").disabled = !page.next_before;
  const rows = page.items.map((e) => el("tr", { "data-event": e.id, "data-kind": e.kind },
    el("td", {}, e.id), el("td", {}, new Date(e.at).toLocaleString()), el("td", {}, e.kind),
    el("td", { class: "mono" }, `${e.entity_type} ${e.entity_id}`),
    el("td", { class: "mono" }, Object.keys(e.data || {}).length ? JSON.stringify(e.data) : "")));
  fill($("#events-table tbody"), rows, "no events", 5);
}

// ------------------------------------------------------------------ views, refresh, sign-in
const LOADERS = { pools: loadPools, nodes: loadNodes, deployments: loadDeployments, events: loadEvents,
  routing: async () => { if (state.routing.table) renderRouting(state.routing.table); } };

async function refresh() {
  clearTimeout(state.timer);
  const view = state.view;
  if (!view || !token()) return;
  try {
    await LOADERS[view]();
    if (!$("#status").classList.contains("error")) setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    if (token()) setStatus(`${view}: ${e.message}`, true);
  }
  // the events view refreshes only while showing the newest page
  if (view === state.view && token() && !(view === "events" && state.events.before)) {
    state.timer = setTimeout(refresh, REFRESH_MS);
  }
}

function show(view) {
  if (!LOADERS[view]) view = "deployments";
  state.view = view;
  document.querySelectorAll(".view").forEach((s) => { s.hidden = s.id !== `${view}-view`; });
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  setStatus("");
  refresh();
}

function signedIn() {
  $("#login-view").hidden = true;
  $("#tabs").hidden = false;
  $("#logout").hidden = false;
  if (!state.routing.running || state.routing.gen === 0) routingLoop();
  show((location.hash || "#deployments").slice(1));
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.routing.gen++;
  state.routing.running = false;
  clearTimeout(state.timer);
  state.view = null;
  document.querySelectorAll(".view").forEach((s) => { s.hidden = true; });
  $("#tabs").hidden = true;
  $("#logout").hidden = true;
  $("#login-view").hidden = false;
  $("#login-error").textContent = message;
  setStatus("");
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const value = $("#token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, value);
  try {
    await api("GET", "/v1/pools");
    $("#token").value = "";
    signedIn();
  } catch (e) {
    signOut(e.status === 403 || e.status === 401 ? "this token is not the admin token" : `sign-in failed: ${e.message}`);
  }
});
$("#logout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => { if (token()) show(location.hash.slice(1)); });
for (const id of ["#node-state", "#node-pool"]) $(id).addEventListener("change", () => { state.nodes.offset = 0; refresh(); });
let typing = null;
$("#node-q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { state.nodes.offset = 0; refresh(); }, 300); });
$("#node-prev").addEventListener("click", () => { state.nodes.offset = Math.max(0, state.nodes.offset - PAGE); refresh(); });
$("#node-next").addEventListener("click", () => { state.nodes.offset += PAGE; refresh(); });
$("#logs-close").addEventListener("click", () => { $("#logs-panel").hidden = true; });
for (const id of ["#event-type", "#event-kind"]) $(id).addEventListener("change", () => { state.events.before = null; refresh(); });
$("#event-newest").addEventListener("click", () => { state.events.before = null; refresh(); });
$("#event-older").addEventListener("click", () => { if (state.events.next) { state.events.before = state.events.next; refresh(); } });

if (token()) signedIn(); else signOut();
