// The appliance's web console: plain JavaScript, no framework, no external URL (served under a strict CSP).
// The API key lives in sessionStorage only and goes out as x-api-key; admin panels say when the key is not
// the admin key. Charts are drawn on <canvas> from the differences between polls of /admin/stats.
"use strict";

const KEY = "appliance.apiKey";
const POLL_MS = 2000;
const HISTORY = 90; // points per chart (3 minutes at one poll every 2 s)
const $ = (id) => document.getElementById(id);
let admin = false;
let dataKey = false;
let timer = null;
const baselines = {}; // per gunicorn worker pid: the last cumulative search histogram seen
const series = { qps: [], mean: [], p99: [] };

function key() { return sessionStorage.getItem(KEY) || ""; }

async function call(method, path, body) {
  const headers = { "x-api-key": key(), accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let doc = null;
  try { doc = await resp.json(); } catch (e) { doc = null; }
  return { status: resp.status, ok: resp.ok, doc };
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, numeric) {
  const tr = el("tr");
  cells.forEach((c, i) => {
    const td = c instanceof Node ? el("td") : el("td", c, numeric && numeric[i] ? "num" : "");
    if (c instanceof Node) td.appendChild(c);
    tr.appendChild(td);
  });
  return tr;
}

function table(head, rows, numeric) {
  const t = el("table");
  const thead = el("thead");
  thead.appendChild(row(head.map((h) => el("span", h))));
  thead.querySelectorAll("td").forEach((td) => { const th = el("th", td.textContent); td.replaceWith(th); });
  t.appendChild(thead);
  const tbody = el("tbody");
  rows.forEach((r) => tbody.appendChild(row(r, numeric)));
  t.appendChild(tbody);
  return t;
}

function fill(id, ...nodes) { const box = $(id); box.replaceChildren(...nodes); }
function needsAdmin(id) { fill(id, el("p", "needs the admin key", "needs-admin")); }

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}
function pct(x) { return x === null || x === undefined ? "-" : `${(100 * x).toFixed(1)}%`; }
function ago(epoch) {
  if (!epoch) return "never";
  const s = Math.max(0, Date.now() / 1000 - epoch);
  return s < 90 ? `${s.toFixed(1)} s ago` : `${(s / 60).toFixed(0)} min ago`;
}
function meter(value, max) { const m = el("meter"); m.min = 0; m.max = max || 1; m.value = value || 0; return m; }

// ---- sign in -------------------------------------------------------------------------------------------

async function signIn(candidate) {
  sessionStorage.setItem(KEY, candidate);
  const [probe, adminProbe] = await Promise.all([call("GET", "/api/v1/tables"), call("GET", "/admin/ring")]);
  if (!probe.ok && !adminProbe.ok) {
    sessionStorage.removeItem(KEY);
    $("signin-error").textContent = (probe.doc && probe.doc.error) || `sign-in failed (${probe.status})`;
    return;
  }
  dataKey = probe.ok; // a separate admin key (setting admin_key) reads no tables
  admin = adminProbe.ok;
  $("signin-error").textContent = "";
  $("signin-panel").classList.add("hidden");
  $("main").classList.remove("hidden");
  $("signout").classList.remove("hidden");
  $("who").textContent = !dataKey ? "signed in with the admin key (it reads no tables)"
    : admin ? "signed in (admin)" : "signed in (read-only: admin panels need the admin key)";
  $("search").classList.toggle("hidden", !dataKey);
  await refresh();
  timer = setInterval(refresh, POLL_MS);
}

function signOut() {
  sessionStorage.removeItem(KEY);
  if (timer) clearInterval(timer);
  location.reload();
}

// ---- panels --------------------------------------------------------------------------------------------

async function refresh() {
  await Promise.all([refreshTables(), refreshFleet(), refreshCache(), refreshStats()].map((p) => p.catch((e) => {
    console.error(e);
  })));
}

async function refreshTables() {
  if (!dataKey) { $("tables-empty").textContent = "needs an API key (this is the admin key only)"; return; }
  const list = await call("GET", "/api/v1/tables");
  if (list.status === 401) { signOut(); return; }  // the key was changed or revoked
  const names = (list.doc && list.doc.tables) || [];
  const infos = await Promise.all(names.map(async (name) => {
    const [d, ix] = await Promise.all([call("GET", `/api/v1/tables/${encodeURIComponent(name)}`),
      call("GET", `/api/v1/tables/${encodeURIComponent(name)}/index`)]);
    return { name, d: d.doc || {}, ix: ix.ok ? ix.doc : null };
  }));
  const body = $("tables").querySelector("tbody");
  body.replaceChildren(...infos.map(({ name, d, ix }) => {
    const indexed = ix ? ix.indexed_rows : null;
    const total = ix ? ix.indexed_rows + ix.unindexed_rows : null;
    const cover = el("span");
    if (total) { cover.appendChild(meter(indexed, total)); cover.appendChild(el("span", ` ${pct(indexed / total)}`)); }
    else cover.textContent = "-";
    const index = ix && ix.index ? describeIndex(ix.index) : "none";
    const state = ix && ix.indexer ? ix.indexer.state + (ix.indexer.was ? ` (was ${ix.indexer.was})` : "") +
      (ix.indexer.updated_at ? `, ${ago(ix.indexer.updated_at)}` : "") : "-";
    const ev = ix && ix.events ? `${ix.events.ready} ready, ${ix.events.in_flight} in flight, ${ix.events.dead} dead` : "-";
    const tr = row([name, d.rows, d.version, d.fragments, `${d.dimension} / ${d.metric}`, index, cover,
      ix && ix.index_version !== null ? `${ix.index_version}, built ${ago(ix.last_build_time)}` : "-", state, ev],
    [0, 1, 1, 1]);
    tr.dataset.table = name;
    return tr;
  }));
  $("tables-empty").classList.toggle("hidden", names.length > 0);
  const select = $("s-table");
  const current = select.value;
  const options = names.map((n) => { const o = el("option", n); o.value = n; return o; });
  if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    select.replaceChildren(...options);
    if (names.includes(current)) select.value = current;
  }
}

function describeIndex(m) {
  // an index manifest as one line: codec, partitions, metric, default probes, measured recall
  const parts = [`${m.codec || m.kind || "index"}`];
  if (m.nlist) parts.push(`IVF ${m.nlist}`);
  if (m.metric) parts.push(m.metric);
  if (m.params && m.params.nprobes) parts.push(`nprobes ${m.params.nprobes}`);
  if (m.recall && m.recall.sample_recall !== undefined) parts.push(`recall ${m.recall.sample_recall.toFixed(3)}`);
  return parts.join(", ");
}

async function refreshFleet() {
  const ready = await call("GET", "/readyz");
  if (ready.doc) {
    const r = ready.doc;
    $("ready").replaceChildren(el("span", r.ready ? "ready" : "not ready", r.ready ? "ok" : "bad"),
      el("span", ` · ${r.executors_live} of ${r.executors} executors live · version ${r.version}`),
      ...(r.problems || []).map((p) => el("div", p, "error")));
  }
  if (!admin) { needsAdmin("fleet"); return; }
  const [ring, stats] = await Promise.all([call("GET", "/admin/ring"), lastStats()]);
  if (!ring.ok) { needsAdmin("fleet"); return; }
  const shares = (stats && stats.ring) || {};
  fill("fleet", table(["executor", "health", "ring share", "load", "last seen", "last error"],
    ring.doc.members.map((m) => [m.url,
      el("span", m.draining ? "draining" : m.healthy ? "healthy" : "down", m.draining ? "warn" : m.healthy ? "ok" : "bad"),
      shares[m.url] !== undefined ? pct(shares[m.url]) : "-", loadText(m.url), ago(m.last_seen), m.last_error || ""]),
    [0, 0, 1, 1]));
}

// Each executor's load, from two readings of its /cache/stats `load` (taken by refreshCache): the share of one
// CPU its process used between them, and the task batches it was running at the last.
const loads = {};
function recordLoads(executors) {
  executors.forEach((e) => {
    if (!e.stats || !e.stats.load) return;
    loads[e.url] = { prev: loads[e.url] ? loads[e.url].cur : null, cur: e.stats.load };
  });
}
function loadText(url) {
  const l = loads[url];
  if (!l) return "-";
  const inFlight = `${l.cur.batches_in_flight} in flight`;
  if (!l.prev || l.cur.time <= l.prev.time) return inFlight;
  const cpu = Math.max(0, (l.cur.cpu_seconds - l.prev.cpu_seconds) / (l.cur.time - l.prev.time));
  return `${pct(cpu)} CPU, ${inFlight}`;
}

async function refreshCache() {
  if (!admin) { needsAdmin("cache"); return; }
  const c = await call("GET", "/admin/cache");
  if (!c.ok) { needsAdmin("cache"); return; }
  const d = c.doc;
  recordLoads(d.executors);
  const used = (t) => { const u = el("span"); u.append(meter(t.bytes, t.budget), ` ${bytes(t.bytes)} of ${bytes(t.budget)}`); return u; };
  const tier = (name, t) => [name, pct(t.hit_rate), `${t.hits} / ${t.misses}`, used(t), t.entries];
  const rows = [tier("RAM", d.ram), tier("NVMe", d.nvme)];
  const down = d.executors.filter((e) => !e.stats).map((e) => el("p", `${e.url}: unreachable (${e.error})`, "error"));
  fill("cache", table(["tier", "hit rate", "hits / misses", "bytes used of budget", "entries"], rows, [0, 1, 1, 0, 1]), el("p", `served without object storage: ${pct(d.hit_rate)} · storage fetches ${d.storage.fetches}, errors ${d.storage.errors}`, "muted"), ...down);
}

let statsCache = null;
async function lastStats() { return statsCache; }

async function refreshStats() {
  if (!admin) { needsAdmin("traffic"); needsAdmin("queue"); return; }
  const s = await call("GET", "/admin/stats");
  if (!s.ok) { needsAdmin("traffic"); needsAdmin("queue"); return; }
  statsCache = s.doc;
  const q = s.doc.queue;
  fill("queue", q ? table(["ready", "in flight", "dead-lettered"], [[q.ready, q.in_flight, q.dead]], [1, 1, 1])
    : el("p", "no event queue configured", "muted"));
  const cur = s.doc.search;
  const prev = baselines[s.doc.pid];
  baselines[s.doc.pid] = { t: s.doc.time, ...cur };
  if (!prev) return;
  const dt = Math.max(1e-3, s.doc.time - prev.t);
  const n = cur.count - prev.count;
  const qps = n / dt;
  const mean = n > 0 ? (1000 * (cur.sum - prev.sum)) / n : null;
  let p99 = null;
  if (n > 0) {
    const want = 0.99 * n;
    for (let i = 0; i < cur.buckets.length; i++) {
      const inBucket = cur.buckets[i][1] - ((prev.buckets[i] || [0, 0])[1]);
      if (inBucket >= want) { p99 = cur.buckets[i][0] === null ? null : 1000 * cur.buckets[i][0]; break; }
    }
  }
  push(series.qps, qps); push(series.mean, mean); push(series.p99, p99);
  $("traffic-now").textContent = `now: ${qps.toFixed(1)} queries/s, mean ${mean === null ? "-" : mean.toFixed(1) + " ms"}, ` +
    `p99 ≤ ${p99 === null ? "-" : p99 + " ms"} (this worker, pid ${s.doc.pid}; ${cur.count} searches so far)`;
  draw($("qps"), [[series.qps, "#2f6fdb"]]);
  draw($("latency"), [[series.mean, "#2f6fdb"], [series.p99, "#c2410c"]]);
}

function push(list, v) { list.push(v); if (list.length > HISTORY) list.shift(); }

function draw(canvas, lines) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const values = lines.flatMap(([s]) => s.filter((v) => v !== null));
  const top = Math.max(1e-9, ...values) * 1.1;
  ctx.fillStyle = "#6b7785";
  ctx.font = "10px sans-serif";
  ctx.fillText(values.length ? top.toPrecision(3) : "no data yet", 4, 11);
  lines.forEach(([s, color]) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    s.forEach((v, i) => {
      if (v === null) { started = false; return; }
      const x = (i / (HISTORY - 1)) * (w - 2) + 1, y = h - 2 - (v / top) * (h - 16);
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    });
    ctx.stroke();
    ctx.fillStyle = color;
    s.forEach((v, i) => { if (v !== null) ctx.fillRect((i / (HISTORY - 1)) * (w - 2), h - 3 - (v / top) * (h - 16), 3, 3); });
  });
}

// ---- search --------------------------------------------------------------------------------------------

function parseVector(text) {
  const parts = text.trim().replace(/^\[|\]$/g, "").split(/[\s,]+/).filter((p) => p.length);
  const v = parts.map(Number);
  if (!v.length || v.some((x) => !Number.isFinite(x))) throw new Error("the vector must be numbers, e.g. [0.1, 0.2]");
  return v;
}

async function search(event) {
  event.preventDefault();
  const name = $("s-table").value;
  const status = $("s-status");
  const head = $("results").querySelector("thead"), body = $("results").querySelector("tbody");
  head.replaceChildren(); body.replaceChildren();
  status.className = "muted";
  try {
    if (!name) throw new Error("no table to search");
    const k = Number($("s-k").value) || 10;
    const filter = $("s-filter").value.trim();
    const text = $("s-text").value.trim();
    const rowText = $("s-row").value.trim();
    let path, body_;
    if (text !== "") {
      // text wins: a full-text search (the table needs an FTS index), the LanceDB protocol's query as JSON rows
      path = `/v1/table/${encodeURIComponent(name)}/query/`;
      body_ = { full_text_query: { query: text }, k };
    } else {
      path = `/api/v1/tables/${encodeURIComponent(name)}/search`;
      const vector = rowText !== "" ? await rowVector(name, Number(rowText)) : parseVector($("s-vector").value);
      body_ = { vector, k };
    }
    if (filter) body_.filter = filter;
    const started = performance.now();
    const r = await call("POST", path, body_);
    if (!r.ok) throw new Error((r.doc && (r.doc.error + (r.doc.detail ? `: ${r.doc.detail}` : ""))) || `HTTP ${r.status}`);
    const results = r.doc.results || r.doc.rows || [];
    status.textContent = `${results.length} results from version ${r.doc.version} in ${(performance.now() - started).toFixed(0)} ms`;
    const cols = [...new Set(results.flatMap((x) => Object.keys(x)))];
    const htr = el("tr"); cols.forEach((c) => htr.appendChild(el("th", c))); head.appendChild(htr);
    results.forEach((x) => {
      const tr = el("tr");
      cols.forEach((c) => {
        const v = x[c];
        tr.appendChild(el("td", typeof v === "object" && v !== null ? JSON.stringify(v) : v, c.startsWith("_") ? "num" : "payload"));
      });
      body.appendChild(tr);
    });
  } catch (e) {
    status.textContent = e.message;
    status.className = "error";
  }
}

async function rowVector(name, rowId) {
  // A row's vector: a search restricted to that row id (any query vector will do), asking only for its vector.
  const d = await call("GET", `/api/v1/tables/${encodeURIComponent(name)}`);
  if (!d.ok) throw new Error((d.doc && d.doc.error) || `HTTP ${d.status}`);
  const r = await call("POST", `/api/v1/tables/${encodeURIComponent(name)}/search`,
    { vector: new Array(d.doc.dimension).fill(0), k: 1, filter: `_rowid = ${rowId}`, columns: ["vector"] });
  if (!r.ok) throw new Error((r.doc && r.doc.error) || `HTTP ${r.status}`);
  if (!r.doc.results.length) throw new Error(`table ${name} has no row with id ${rowId}`);
  const v = r.doc.results[0].vector;
  $("s-vector").value = JSON.stringify(v);
  return v;
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", (e) => { e.preventDefault(); signIn($("key").value.trim()); });
  $("signout").addEventListener("click", signOut);
  $("search").addEventListener("submit", search);
  $("node").textContent = location.host;
  if (key()) signIn(key());
});
