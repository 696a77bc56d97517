// nd's dashboard. Reads GET /v1/dashboard once a second and follows
// GET /v1/events; changes go through the same calls as ndctl (PATCH of a
// server, PATCH /v1/manager), each after a confirmation. The token lives
// in this tab's sessionStorage and travels in the Authorization header.
"use strict";

const TOKEN_KEY = "nd-token";
const POLL_MS = 1000;
const MAX_POINTS = 3600;
const MAX_EVENTS = 300;
const OVERLAP_MS = 5000; // each poll asks again for the last seconds' history
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
const MARK_COLORS = { commit: "#888", "cool-down": "#d4a000", down: "#b3261e", suspect: "#b3261e", up: "#1e7b34", quiesced: "#8a6d00", fixed: "#6a3d9a", config: "#1f4e9c" };
const PLOTS = [
  { key: "weight", title: "weight" },
  { key: "lmi", title: "LMI (load metric index)" },
  { key: "new_per_sec", title: "new flows / s" },
  { key: "advisor_ms", title: "advisor latency (ms)" },
];

const $ = (id) => document.getElementById(id);
const svgNS = "http://www.w3.org/2000/svg";

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let pollTimer = null;
let eventsAbort = null;
let since = 0;                // the newest history time held (Unix ms)
const hist = new Map();       // port -> {servers: Map(addr -> columns), marks: []}
const portViews = new Map();  // port -> its DOM
let refreshes = 0;

class Unauthorized extends Error {}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token }, cache: "no-store" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  if (res.status === 401) throw new Unauthorized("the token was refused");
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
  if (!res.ok) throw new Error((data && data.error) || res.statusText);
  return data;
}

// ---- sign in and out ----

function showLogin(message) {
  stop();
  $("dash").hidden = true;
  $("logout").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  document.body.dataset.state = "login";
}

async function signIn(t) {
  token = t;
  try {
    const first = await api("GET", "/v1/dashboard");
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-view").hidden = true;
    $("dash").hidden = false;
    $("logout").hidden = false;
    document.body.dataset.state = "dashboard";
    render(first);
    start();
  } catch (e) {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(e instanceof Unauthorized ? "Refused: wrong token." : "Cannot reach ndd: " + e.message);
  }
}

function signOut(message) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(message);
}

function start() {
  stop();
  pollTimer = setInterval(poll, POLL_MS);
  followEvents();
}

function stop() {
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = null;
}

async function poll() {
  try {
    render(await api("GET", "/v1/dashboard?since=" + Math.max(0, since - OVERLAP_MS)));
  } catch (e) {
    if (e instanceof Unauthorized) signOut("The token was refused (changed by a reload?).");
    else $("updated").textContent = "update failed: " + e.message;
  }
}

// ---- rendering ----

function render(d) {
  mergeHistory(d.history || []);
  renderHA(d.ha);
  renderManager(d.manager);
  const reports = new Map((d.manager.ports || []).map((p) => [p.port, p]));
  const seen = new Set();
  for (const p of d.status.ports || []) {
    const name = portName(p);
    seen.add(name);
    renderPort(name, p, reports.get(name));
  }
  for (const [name, v] of portViews) {
    if (!seen.has(name)) { v.root.remove(); portViews.delete(name); }
  }
  refreshes++;
  document.body.dataset.refreshes = String(refreshes);
  $("updated").textContent = "updated " + new Date(d.time).toLocaleTimeString();
}

function portName(p) {
  const vip = p.vip.includes(":") ? "[" + p.vip + "]" : p.vip;
  return vip + ":" + p.port + "/" + p.protocol;
}

// mergeHistory adds what a response brings to the history held. Responses
// overlap by OVERLAP_MS (a mark told by an event may arrive after a later
// reading was read): readings are added after a series' last, marks unless
// held already.
function mergeHistory(ports) {
  const held = new Set(ports.map((p) => p.port));
  for (const ph of ports) {
    let h = hist.get(ph.port);
    if (!h) { h = { servers: new Map(), marks: [], markKeys: new Set() }; hist.set(ph.port, h); }
    const present = new Set();
    for (const s of ph.servers) {
      present.add(s.server);
      let c = h.servers.get(s.server);
      if (!c) { c = { t: [], weight: [], lmi: [], new_per_sec: [], advisor_ms: [], active: [] }; h.servers.set(s.server, c); }
      const last = c.t.length ? c.t[c.t.length - 1] : -Infinity;
      let from = s.t.findIndex((t) => t > last);
      if (from < 0) from = s.t.length;
      for (const k of Object.keys(c)) {
        c[k].push(...(s[k] || []).slice(from));
        if (c[k].length > MAX_POINTS) c[k].splice(0, c[k].length - MAX_POINTS);
      }
      if (s.t.length) since = Math.max(since, s.t[s.t.length - 1]);
    }
    for (const addr of h.servers.keys()) if (!present.has(addr)) h.servers.delete(addr);
    let added = false;
    for (const m of ph.marks) {
      since = Math.max(since, m.t);
      const key = m.t + "|" + m.kind + "|" + (m.server || "") + "|" + m.text;
      if (h.markKeys.has(key)) continue;
      h.markKeys.add(key);
      h.marks.push(m);
      added = true;
    }
    if (added) {
      h.marks.sort((a, b) => a.t - b.t);
      if (h.marks.length > MAX_POINTS) {
        h.marks.splice(0, h.marks.length - MAX_POINTS);
        h.markKeys = new Set(h.marks.map((m) => m.t + "|" + m.kind + "|" + (m.server || "") + "|" + m.text));
      }
    }
  }
  for (const name of hist.keys()) if (!held.has(name)) hist.delete(name);
}

// renderHA shows this node's view of its group (GET /v1/ha's fields).
function renderHA(ha) {
  const badge = $("ha");
  badge.className = "badge";
  if (!ha) {
    badge.textContent = "HA: none (single node)";
    badge.dataset.state = "none";
    return;
  }
  const peers = ha.Peers || [];
  const alive = peers.filter((p) => p.Alive).length;
  badge.textContent = "HA " + ha.Group + ": " + ha.State + " since " + new Date(ha.Since).toLocaleTimeString() +
    "; " + alive + " of " + peers.length + " peers alive" + (ha.Active ? "; active " + ha.Active : "");
  badge.classList.add(ha.State);
  badge.dataset.state = ha.State;
  badge.title = peers.map((p) => p.Addr + " " + (p.Alive ? "alive" : "silent") + " " + p.State + (p.Synced ? ", synced" : "")).join("\n");
}

let proportionsShown = "";
function renderManager(m) {
  $("manager-summary").textContent = "policy " + m.policy + ", interval " + m.interval + ", sensitivity " + m.sensitivity +
    ", smoothing " + m.smoothing + ", cool-down " + m.cool_down + "; proportions active " + m.proportions.active +
    ", new " + m.proportions.new + ", advisor " + m.proportions.advisor + ", host " + m.proportions.host;
  const key = JSON.stringify(m.proportions);
  if (key !== proportionsShown && !$("proportions").contains(document.activeElement)) {
    proportionsShown = key;
    for (const k of ["active", "new", "advisor", "host"]) $("prop-" + k).value = m.proportions[k];
  }
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function fmt(v, digits) {
  if (v === undefined || v === null) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 2 : digits);
  return String(v);
}

function portView(name) {
  let v = portViews.get(name);
  if (v) return v;
  const root = el("section", { class: "port", "data-port": name });
  const title = el("h2", {}, name);
  const summary = el("p", { class: "muted" });
  const table = el("table");
  table.append(el("thead", {}, row("th", ["server", ...COLUMNS, "actions"])));
  const tbody = el("tbody");
  table.append(tbody);
  const legend = el("div", { class: "legend" });
  const plots = el("div", { class: "plots" });
  const svgs = {};
  for (const p of PLOTS) {
    const svg = document.createElementNS(svgNS, "svg");
    svg.setAttribute("viewBox", "0 0 400 150");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.dataset.plot = p.key;
    svg.dataset.points = "0";
    svgs[p.key] = svg;
    plots.append(el("div", { class: "plot" }, el("h3", {}, p.title), svg));
  }
  const marks = el("ul", { class: "marks" });
  root.append(title, summary, table, legend, plots, el("h3", {}, "decisions"), marks);
  root.addEventListener("click", onAction);
  $("ports").append(root);
  v = { root, summary, tbody, legend, svgs, marks, rows: new Map() };
  portViews.set(name, v);
  return v;
}

function row(cell, values) {
  const tr = el("tr");
  for (const v of values) tr.append(v instanceof Node ? v : el(cell, {}, fmt(v)));
  return tr;
}

// The table's columns after the server's address, and the actions last.
const COLUMNS = ["state", "weight", "configured", "LMI", "active flows", "new flows/s", "advisor ms", "host",
  "loads (normalised)", "delay factor", "new flows"];

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// serverRow returns the table row of a server, made once and then updated
// in place, so that a click never lands on a row just replaced.
function serverRow(v, port, addr) {
  let r = v.rows.get(addr);
  if (r) return r;
  const tr = el("tr");
  tr.dataset.server = addr;
  const swatch = el("span", { class: "swatch" });
  tr.append(el("td", {}, swatch, addr));
  const cells = COLUMNS.map(() => el("td"));
  cells[0].className = "state";
  tr.append(...cells);
  const quiesce = button("quiesce", port, addr), weight = button("weight", port, addr), fix = button("fix", port, addr);
  tr.append(el("td", { class: "actions" }, quiesce, weight, fix));
  r = { tr, swatch, cells, quiesce, weight, fix };
  v.rows.set(addr, r);
  return r;
}

function setAction(b, action) {
  if (b.dataset.action === action) return;
  b.dataset.action = action;
  b.textContent = action;
}

function renderPort(name, ps, rep) {
  const v = portView(name);
  const byAddr = new Map(((rep && rep.servers) || []).map((s) => [s.server, s]));
  setText(v.summary, rep
    ? "policy " + rep.policy + ", scheduler " + rep.scheduler + "; last decision: " + (rep.committed ? "committed, " : "") +
      rep.reason + (rep.error ? " (error: " + rep.error + ")" : "") + "; commits " + rep.commits
    : "no manager report yet");
  const colors = new Map();
  ps.servers.forEach((s, i) => colors.set(s.address, COLORS[i % COLORS.length]));
  const present = new Set();
  ps.servers.forEach((s, i) => {
    present.add(s.address);
    const r = byAddr.get(s.address) || {};
    const row = serverRow(v, name, s.address);
    if (v.tbody.children[i] !== row.tr) v.tbody.insertBefore(row.tr, v.tbody.children[i] || null);
    let state = r.state || s.state;
    if (s.quiesced) state = "quiesced";
    const loads = Object.entries(r.loads || {}).map(([k, x]) => k + " " + fmt(x)).join(", ");
    const custom = Object.entries(r.custom || {}).map(([k, x]) => k + " " + fmt(x)).join(", ");
    const values = [state + (r.fixed ? ", fixed" : ""), fmt(s.weight), fmt(s.config_weight), fmt(r.lmi), fmt(s.active_flows),
      fmt(s.new_flows_per_sec, 1),
      r.advisor_ms === undefined || r.advisor_ms < 0 ? "–" : fmt(r.advisor_ms),
      r.host === undefined || r.host < 0 ? (custom || "–") : fmt(r.host) + (custom ? ", " + custom : ""),
      loads || "–", r.delay ? fmt(r.delay) : "–", fmt(s.new_flows)];
    values.forEach((text, j) => setText(row.cells[j], text));
    row.cells[0].className = "state state-" + state;
    row.cells[0].dataset.state = state;
    row.swatch.style.background = colors.get(s.address);
    row.tr.dataset.newFlows = String(s.new_flows);
    setAction(row.quiesce, s.quiesced ? "unquiesce" : "quiesce");
    setAction(row.fix, r.fixed ? "unfix" : "fix");
    row.weight.dataset.weight = String(s.config_weight);
  });
  for (const [addr, row] of v.rows) {
    if (!present.has(addr)) { row.tr.remove(); v.rows.delete(addr); }
  }
  v.legend.replaceChildren(...ps.servers.map((s) => {
    const sw = el("span", { class: "swatch" });
    sw.style.background = colors.get(s.address);
    return el("span", {}, sw, s.address);
  }));
  const h = hist.get(name);
  for (const p of PLOTS) plot(v.svgs[p.key], h, p.key, colors);
  if (h) {
    v.marks.replaceChildren(...distinctMarks(h.marks).slice(-50).reverse().map((m) =>
      el("li", { "data-kind": m.kind }, new Date(m.t).toLocaleTimeString() + " " + m.kind + ": " + m.text +
        (m.repeats > 1 ? " (×" + m.repeats + ", until " + new Date(m.last).toLocaleTimeString() + ")" : ""))));
  }
}

// distinctMarks folds a run of commits that say the same (under the delay
// scheduler the manager commits its flow time every interval, the weights
// unchanged) into its first, counting the repeats.
function distinctMarks(marks) {
  const out = [];
  let prev = null;
  for (const m of marks) {
    const body = m.text.replace(/\(change [^)]*\)/, "");
    if (prev && m.kind === "commit" && prev.kind === "commit" && prev.body === body) {
      prev.repeats++;
      prev.last = m.t;
      continue;
    }
    prev = Object.assign({}, m, { body, repeats: 1, last: m.t });
    out.push(prev);
  }
  return out;
}

function button(action, port, server) {
  return el("button", { type: "button", "data-action": action, "data-port": port, "data-server": server }, action === "weight" ? "set weight" : action);
}

// plot draws one line per server over the history's time span, the
// manager's decisions as vertical lines (their text in a tooltip).
function plot(svg, h, key, colors) {
  const W = 400, H = 150, L = 34, B = 14, T = 4;
  svg.replaceChildren();
  if (!h) return;
  let tmin = Infinity, tmax = -Infinity, vmax = 0, n = 0;
  for (const c of h.servers.values()) {
    if (!c.t.length) continue;
    tmin = Math.min(tmin, c.t[0]);
    tmax = Math.max(tmax, c.t[c.t.length - 1]);
    for (const x of c[key]) if (x > vmax) vmax = x;
  }
  if (!isFinite(tmin)) return;
  tmin = Math.max(tmin, tmax - 3600 * 1000);
  if (tmax === tmin) tmin = tmax - 1000;
  if (vmax <= 0) vmax = 1;
  const x = (t) => L + (W - L - 2) * (t - tmin) / (tmax - tmin);
  const y = (v) => T + (H - T - B) * (1 - Math.max(v, 0) / vmax);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  add("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#ccc" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#ccc" });
  add("text", { x: 2, y: T + 9, "font-size": 10, fill: "#666" }, fmt(vmax, vmax < 10 ? 2 : 0));
  add("text", { x: 2, y: H - B, "font-size": 10, fill: "#666" }, "0");
  add("text", { x: L, y: H - 2, "font-size": 10, fill: "#666" }, new Date(tmin).toLocaleTimeString());
  add("text", { x: W - 2, y: H - 2, "font-size": 10, fill: "#666", "text-anchor": "end" }, new Date(tmax).toLocaleTimeString());
  for (const m of distinctMarks(h.marks)) {
    if (m.t < tmin) continue;
    const line = add("line", { x1: x(m.t), y1: T, x2: x(m.t), y2: H - B, stroke: MARK_COLORS[m.kind] || "#888",
      "stroke-dasharray": m.kind === "commit" ? "2,2" : "none", "data-kind": m.kind });
    const title = document.createElementNS(svgNS, "title");
    title.textContent = new Date(m.t).toLocaleTimeString() + " " + m.kind + ": " + m.text;
    line.append(title);
  }
  for (const [addr, c] of h.servers) {
    const pts = [];
    for (let i = 0; i < c.t.length; i++) {
      if (c.t[i] < tmin) continue;
      const v = c[key][i];
      if (key === "advisor_ms" && v < 0) continue;
      pts.push(x(c.t[i]).toFixed(1) + "," + y(v).toFixed(1));
    }
    n += pts.length;
    if (pts.length) {
      const line = add("polyline", { points: pts.join(" "), fill: "none", stroke: colors.get(addr) || "#000", "stroke-width": 1.5, "data-server": addr });
      const title = document.createElementNS(svgNS, "title");
      title.textContent = addr;
      line.append(title);
    }
  }
  svg.dataset.points = String(n);
}

// ---- actions ----

let confirmResolve = null;
function confirmAction(text, input) {
  $("confirm-text").textContent = text;
  $("confirm-input-row").hidden = input === undefined;
  if (input !== undefined) $("confirm-input").value = input;
  $("confirm").returnValue = "";
  $("confirm").showModal();
  return new Promise((resolve) => { confirmResolve = resolve; });
}

function serverPath(port, server) {
  // port is "vip:port/protocol" or "[vip6]:port/protocol".
  const m = /^\[?([^\]]+?)\]?:(\d+)\/(\w+)$/.exec(port);
  return "/v1/clusters/" + m[1] + "/ports/" + m[2] + "/" + m[3] + "/servers/" + server;
}

async function onAction(ev) {
  const b = ev.target.closest("button[data-action]");
  if (!b) return;
  const { action, port, server } = b.dataset;
  let patch, text;
  switch (action) {
    case "quiesce": patch = { quiesce: true }; text = "Quiesce " + server + " on " + port + "? It gets no new flows; its flows carry on."; break;
    case "unquiesce": patch = { quiesce: false }; text = "Unquiesce " + server + " on " + port + "? It gets new flows again."; break;
    case "fix": patch = { fixed: true }; text = "Fix " + server + "'s weight on " + port + "? The manager leaves it."; break;
    case "unfix": patch = { fixed: false }; text = "Unfix " + server + " on " + port + "? The manager moves its weight again."; break;
    case "weight": text = "Set the weight of " + server + " on " + port + ":"; break;
    default: return;
  }
  const ok = await confirmAction(text, action === "weight" ? b.dataset.weight : undefined);
  if (!ok) return;
  if (action === "weight") {
    const w = Number($("confirm-input").value);
    if (!Number.isInteger(w) || w < 0) { toast("not a weight: " + $("confirm-input").value); return; }
    patch = { weight: w };
  }
  await change("PATCH", serverPath(port, server), patch);
}

async function change(method, path, body) {
  try {
    const res = await api(method, path, body);
    toast(res.changes);
    poll();
  } catch (e) {
    if (e instanceof Unauthorized) signOut("The token was refused.");
    else toast("refused: " + e.message);
  }
}

function toast(text) {
  $("toast").textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { $("toast").textContent = ""; }, 6000);
}

// ---- events: GET /v1/events?follow=true, read as NDJSON ----

async function followEvents() {
  const ctl = new AbortController();
  eventsAbort = ctl;
  $("events").replaceChildren();
  while (eventsAbort === ctl) {
    try {
      const res = await fetch("/v1/events?follow=true", { headers: { Authorization: "Bearer " + token }, signal: ctl.signal, cache: "no-store" });
      if (res.status === 401) { signOut("The token was refused."); return; }
      $("events-state").textContent = "(following)";
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line) showEvent(JSON.parse(line));
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    $("events-state").textContent = "(reconnecting)";
    await new Promise((r) => setTimeout(r, 2000));
    // A reconnection replays the recent events: start the list afresh.
    if (eventsAbort === ctl) $("events").replaceChildren();
  }
}

function showEvent(ev) {
  const list = $("events");
  const where = [ev.service, ev.server].filter(Boolean).join(" ");
  list.prepend(el("li", { "data-type": ev.type }, new Date(ev.time).toLocaleTimeString() + " " + ev.type + (where ? " " + where : "") + ": " + ev.message));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value.trim()); });
  $("logout").addEventListener("click", () => signOut(""));
  $("confirm").addEventListener("close", () => {
    if (confirmResolve) confirmResolve($("confirm").returnValue === "yes");
    confirmResolve = null;
  });
  $("proportions").addEventListener("submit", async (e) => {
    e.preventDefault();
    const p = {};
    for (const k of ["active", "new", "advisor", "host"]) p[k] = Number($("prop-" + k).value);
    const ok = await confirmAction("Set the manager's proportions to active " + p.active + ", new " + p.new +
      ", advisor " + p.advisor + ", host " + p.host + "? (They must sum to 100.)");
    if (ok) await change("PATCH", "/v1/manager", { proportions: p });
  });
  if (token) signIn(token); else showLogin("");
});
