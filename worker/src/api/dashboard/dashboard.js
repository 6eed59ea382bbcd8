// Ferry's dashboard: plain JavaScript over the read API (docs/read-api.md), no build step.
// One source's values as a live chart (one line per float, newest on the right), its
// stats, and the Pipeline's stages. Live updates come from /v1/events, read with fetch so
// that a bearer token can go with it (EventSource cannot send headers).
"use strict";

const MAX_POINTS = 300; // per line; older points scroll off the left
const STAGES_EVERY_MS = 5000;
const POLL_WITHOUT_EVENTS_MS = 5000;
const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#ad1457"];

const state = {
  token: sessionStorage.getItem("ferry-api-token") || "",
  source: null,
  points: [], // [{ts, values}], oldest first
  lastTs: null,
  refreshing: false,
  refreshAgain: false,
  live: false,
  lastEventAt: 0,
  deadLetters: null, // {at, perStage: {stage: total}}
  deadLetterRates: {},
  drawn: 0, // points on the chart now
  loadedAt: Date.now(),
  livePoints: 0, // points drawn whose record is younger than the page: live data arrived
};
window.ferryDashboard = state;

const $ = (id) => document.getElementById(id);

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

// Asks for a token once on 401, then retries; every other failure is thrown with its message.
async function api(path) {
  for (;;) {
    const response = await fetch(path, { headers: authHeaders() });
    if (response.status === 401) {
      await askToken();
      continue;
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`;
      throw new Error(message);
    }
    return body;
  }
}

let tokenAsked = null;
function askToken() {
  if (!tokenAsked) {
    tokenAsked = new Promise((resolve) => {
      const dialog = $("login");
      dialog.addEventListener("close", () => {
        state.token = $("token").value.trim();
        sessionStorage.setItem("ferry-api-token", state.token);
        tokenAsked = null;
        resolve();
      }, { once: true });
      dialog.showModal();
    });
  }
  return tokenAsked;
}

// ---- sources ----

let searchTimer = null;
async function searchSources(text) {
  const query = new URLSearchParams({ limit: "50" });
  if (text) query.set("match", text);
  try {
    const page = await api(`/v1/sources?${query}`);
    const list = $("source-list");
    list.replaceChildren(...page.sources.sort().map((id) => {
      const option = document.createElement("option");
      option.value = id;
      return option;
    }));
    $("pick-note").textContent = page.sources.length
      ? `${page.sources.length}${page.next_cursor ? "+" : ""} matching`
      : "no source matches";
    return page.sources;
  } catch (err) {
    $("pick-note").textContent = `cannot list sources: ${err.message}`;
    return [];
  }
}

function pick(source) {
  if (!source || source === state.source) return;
  state.source = source;
  state.points = [];
  state.lastTs = null;
  $("search").value = source;
  $("chart-title").textContent = source;
  const url = new URL(location.href);
  url.searchParams.set("source", source);
  history.replaceState(null, "", url);
  refresh();
}

// ---- one source's history ----

// Reads what is new since the newest point, at most one request at a time; a refresh asked
// for meanwhile runs once after it.
async function refresh() {
  if (!state.source) return;
  if (state.refreshing) {
    state.refreshAgain = true;
    return;
  }
  state.refreshing = true;
  const source = state.source;
  try {
    const query = new URLSearchParams({ limit: String(MAX_POINTS) });
    if (state.lastTs !== null) query.set("since", String(state.lastTs));
    const body = await api(`/v1/sources/${encodeURIComponent(source)}/history?${query}`);
    if (source !== state.source) return;
    addRecords(body.records);
    draw();
    await showStats(source);
  } catch (err) {
    $("last-text").textContent = `cannot read ${source}: ${err.message}`;
  } finally {
    state.refreshing = false;
    if (state.refreshAgain) {
      state.refreshAgain = false;
      refresh();
    }
  }
}

function sameRecord(a, b) {
  return a.ts === b.ts && JSON.stringify(a.values) === JSON.stringify(b.values);
}

function addRecords(newestFirst) {
  const fresh = newestFirst
    .filter((r) => typeof r.ts === "number" && Array.isArray(r.values))
    .reverse();
  for (const record of fresh) {
    if (state.lastTs !== null && record.ts < state.lastTs) continue;
    const tail = state.points.slice(-20);
    if (tail.some((p) => sameRecord(p, record))) continue;
    state.points.push({ ts: record.ts, values: record.values, text: record.text });
    state.lastTs = record.ts;
  }
  if (state.points.length > MAX_POINTS) state.points.splice(0, state.points.length - MAX_POINTS);
  const last = state.points[state.points.length - 1];
  if (last) {
    $("last-text").textContent = `${state.points.length} points, newest ${new Date(last.ts).toLocaleTimeString()}${last.text ? ` · “${last.text}”` : ""}`;
  } else {
    $("last-text").textContent = "no records with values yet";
  }
}

// ---- the chart ----

function draw() {
  const canvas = $("chart");
  const box = canvas.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(box.width * ratio));
  canvas.height = Math.max(1, Math.round(box.height * ratio));
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  const width = box.width, height = box.height;
  const pad = { left: 52, right: 8, top: 8, bottom: 22 };
  g.clearRect(0, 0, width, height);
  const points = state.points;
  const lines = points.reduce((n, p) => Math.max(n, p.values.length), 0);
  if (points.length === 0 || lines === 0) {
    g.fillStyle = "#5d6b7c";
    g.fillText(state.source ? "waiting for records…" : "pick a source", pad.left, height / 2);
    $("legend").replaceChildren();
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const p of points) for (const v of p.values) {
    if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  if (!(hi > lo)) { hi = lo + 1; lo -= 1; }
  const t0 = points[0].ts, t1 = Math.max(points[points.length - 1].ts, t0 + 1);
  const x = (ts) => pad.left + ((ts - t0) / (t1 - t0)) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * (height - pad.top - pad.bottom);

  g.strokeStyle = "#e4e8ee";
  g.fillStyle = "#5d6b7c";
  g.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    g.beginPath(); g.moveTo(pad.left, y(v)); g.lineTo(width - pad.right, y(v)); g.stroke();
    g.fillText(formatNumber(v), 4, y(v) + 4);
  }
  g.fillText(new Date(t0).toLocaleTimeString(), pad.left, height - 6);
  const newest = new Date(t1).toLocaleTimeString();
  g.fillText(newest, width - pad.right - g.measureText(newest).width, height - 6);

  for (let line = 0; line < lines; line++) {
    g.strokeStyle = COLORS[line % COLORS.length];
    g.lineWidth = 1.5;
    g.beginPath();
    let started = false;
    for (const p of points) {
      const v = p.values[line];
      if (!Number.isFinite(v)) { started = false; continue; }
      if (started) g.lineTo(x(p.ts), y(v)); else g.moveTo(x(p.ts), y(v));
      started = true;
    }
    g.stroke();
  }
  state.drawn = points.length;
  state.livePoints = points.filter((p) => p.ts > state.loadedAt).length;
  // What the chart shows, readable from the DOM (the browser test reads it).
  canvas.dataset.points = String(points.length);
  canvas.dataset.livePoints = String(state.livePoints);
  canvas.dataset.newest = String(t1);
  document.documentElement.dataset.scrollWidth = String(document.documentElement.scrollWidth);
  document.documentElement.dataset.innerWidth = String(window.innerWidth);
  $("legend").replaceChildren(...Array.from({ length: lines }, (_, line) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[line % COLORS.length];
    item.append(swatch, `value ${line}: ${formatNumber(points[points.length - 1].values[line])}`);
    return item;
  }));
}

function formatNumber(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "–";
  const abs = Math.abs(v);
  return abs !== 0 && (abs >= 1e6 || abs < 1e-3) ? v.toExponential(2) : v.toFixed(abs >= 100 ? 1 : 3);
}

// ---- stats and counters ----

async function showStats(source) {
  const body = await api(`/v1/sources/${encodeURIComponent(source)}/stats`);
  const parts = [];
  for (const [name, figures] of Object.entries(body.stats || {})) {
    parts.push(definitionList(`stats: ${name}`, figures
      ? [["count", figures.count], ["min", formatNumber(figures.min)], ["max", formatNumber(figures.max)],
        ["mean", formatNumber(figures.mean)], ["last", formatNumber(figures.last)]]
      : [["", "no figures yet"]]));
  }
  for (const [name, counters] of Object.entries(body.validation || {})) {
    parts.push(definitionList(`validation: ${name}`, counters
      ? Object.entries(counters).sort()
      : [["", "no counters yet"]]));
  }
  if (parts.length === 0) {
    const note = document.createElement("p");
    note.className = "muted";
    note.textContent = "This Pipeline has no stats or validate processor.";
    parts.push(note);
  }
  $("stats").replaceChildren(...parts);
}

function definitionList(title, rows) {
  const wrap = document.createElement("div");
  const heading = document.createElement("h3");
  heading.textContent = title;
  heading.style.fontSize = "14px";
  heading.style.margin = "4px 0";
  const list = document.createElement("dl");
  for (const [key, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value === undefined || value === null ? "–" : String(value);
    list.append(dt, dd);
  }
  wrap.append(heading, list);
  return wrap;
}

// ---- stages: replicas and lag from the Pipeline's status, dead letters from /v1/totals ----

async function showStages() {
  let pipeline = null, note = "";
  try {
    pipeline = await api("/v1/pipeline");
  } catch (err) {
    note = `stages unavailable: ${err.message}`;
  }
  try {
    const totals = await api("/v1/totals");
    const now = Date.now();
    const perStage = {};
    for (const [stage, reasons] of Object.entries(totals.dead_letters || {})) {
      perStage[stage] = Object.values(reasons).reduce((a, b) => a + b, 0);
    }
    if (state.deadLetters) {
      const seconds = (now - state.deadLetters.at) / 1000;
      for (const [stage, total] of Object.entries(perStage)) {
        const before = state.deadLetters.perStage[stage] || 0;
        state.deadLetterRates[stage] = seconds > 0 ? Math.max(0, total - before) / seconds : 0;
      }
    }
    state.deadLetters = { at: now, perStage };
  } catch (err) {
    note = note || `dead letters unavailable: ${err.message}`;
  }
  if (pipeline) $("pipeline").textContent = `${pipeline.namespace}/${pipeline.name}`;
  const stages = pipeline ? pipeline.stages : Object.keys(state.deadLetters ? state.deadLetters.perStage : {}).map((name) => ({ name }));
  $("stages").tBodies[0].replaceChildren(...stages.map((stage) => {
    const row = document.createElement("tr");
    row.dataset.stage = stage.name;
    const rate = state.deadLetterRates[stage.name];
    const cells = [
      [stage.name, ""],
      [stage.replicas === undefined || stage.replicas === null ? "–" : `${stage.ready_replicas ?? 0}/${stage.desired_replicas ?? stage.replicas}`, "num"],
      [stage.lag === undefined || stage.lag === null ? "–" : String(stage.lag), "num"],
      [rate === undefined ? "–" : rate.toFixed(1), "num"],
    ];
    for (const [text, cls] of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (cls) cell.className = cls;
      row.append(cell);
    }
    return row;
  }));
  $("stages-note").textContent = note;
}

// ---- live: the batch events ----

async function follow() {
  for (;;) {
    try {
      const response = await fetch("/v1/events", { headers: { ...authHeaders(), Accept: "text/event-stream" } });
      if (response.status === 401) { await askToken(); continue; }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      setLive(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onMessage(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      // The stream ended or never started: reconnect after a pause; polling covers the gap.
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function onMessage(block) {
  const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
  if (!data) return;
  state.lastEventAt = Date.now();
  let event;
  try { event = JSON.parse(data); } catch { return; }
  const names = Array.isArray(event.sources) ? event.sources : [];
  if (state.source && (names.includes(state.source) || event.more_sources > 0)) refresh();
}

function setLive(live) {
  state.live = live;
  const badge = $("live");
  badge.textContent = live ? "live" : "offline";
  badge.classList.toggle("off", !live);
}

// ---- start ----

// A link may carry the token in its fragment (`#token=…`), which never reaches a server
// or its logs; it moves into this tab's session storage and out of the address bar.
function tokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (!token) return;
  state.token = token;
  sessionStorage.setItem("ferry-api-token", token);
  fragment.delete("token");
  const url = new URL(location.href);
  url.hash = fragment.toString();
  history.replaceState(null, "", url);
}

async function start() {
  tokenFromFragment();
  $("search").addEventListener("input", (e) => {
    clearTimeout(searchTimer);
    const text = e.target.value.trim();
    searchTimer = setTimeout(async () => {
      const found = await searchSources(text);
      if (found.includes(text)) pick(text);
    }, 250);
  });
  $("search").addEventListener("change", (e) => pick(e.target.value.trim()));
  window.addEventListener("resize", draw);
  const wanted = new URL(location.href).searchParams.get("source");
  const first = await searchSources("");
  pick(wanted || first.sort()[0]);
  follow();
  showStages();
  setInterval(showStages, STAGES_EVERY_MS);
  // Without events (a stream down, or a Pipeline whose batches name no source), poll.
  setInterval(() => {
    if (!state.live || Date.now() - state.lastEventAt > POLL_WITHOUT_EVENTS_MS) refresh();
  }, POLL_WITHOUT_EVENTS_MS);
  draw();
}

start();
