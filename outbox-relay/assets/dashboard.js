// Live replication-lag dashboard: polls /api/status every second and draws
// per-source charts on canvases. No libraries, no network beyond the relay.
"use strict";

const HISTORY = 120; // samples (seconds) kept per chart
const CHARTS = [
  { key: "lagBytes", title: "Slot lag (bytes)", series: ["lagBytes"], format: bytes },
  { key: "lagSeconds", title: "Lag (seconds)", series: ["lagSeconds"], format: (v) => v.toFixed(2) + " s" },
  { key: "eps", title: "Events published per second", series: ["eps"], format: (v) => v.toFixed(0) + "/s" },
  { key: "latency", title: "Commit-to-ack latency p50 / p99 (ms)", series: ["p50", "p99"], format: (v) => v.toFixed(1) + " ms" },
];
const COLORS = ["--line1", "--line2"];
const sources = new Map(); // name -> { element, history: [], lastEvents, lastTime }

function bytes(v) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  children.forEach((c) => node.append(c));
  return node;
}

function sourceCard(name) {
  const card = el("section", { class: "source", id: "source-" + name, "data-source": name });
  const head = el("div", { class: "source-head" }, el("h2", {}, name), el("span", { class: "badge state" }, "…"),
    el("span", { class: "muted since" }));
  const numbers = el("div", { class: "numbers" });
  [["lag", "Slot lag"], ["wal-status", "WAL status"], ["safe-wal", "Safe WAL size"], ["lag-seconds", "Lag"], ["events", "Events published"], ["rate", "Events/s"],
   ["p50", "p50"], ["p99", "p99"], ["reconnects", "Reconnects"], ["reconnects-per-minute", "Reconnects/min"],
   ["dead-letters", "Dead letters"], ["lsn", "Confirmed LSN"]]
    .forEach(([cls, label]) => numbers.append(el("div", {}, label, el("b", { class: cls }, "–"))));
  const charts = el("div", { class: "charts" });
  CHARTS.forEach((c) => charts.append(el("figure", {}, el("figcaption", {}, c.title),
    el("canvas", { class: "chart", "data-chart": c.key, width: 560, height: 280 }))));
  card.append(head, el("p", { class: "slot-alert", hidden: "" }), el("p", { class: "error", hidden: "" }),
    numbers, charts);
  return card;
}

function update(status) {
  const main = document.getElementById("sources");
  document.getElementById("empty")?.remove();
  const now = Date.parse(status.generated_at) / 1000;
  for (const s of status.sources) {
    let entry = sources.get(s.name);
    if (!entry) {
      entry = { element: sourceCard(s.name), history: [], lastEvents: null, lastTime: null };
      sources.set(s.name, entry);
      main.append(entry.element);
    }
    const dt = entry.lastTime === null ? 0 : now - entry.lastTime;
    const eps = dt > 0 ? Math.max(0, s.events_published - entry.lastEvents) / dt : 0;
    entry.lastEvents = s.events_published;
    entry.lastTime = now;
    entry.history.push({ lagBytes: s.slot_lag_bytes, lagSeconds: s.lag_seconds, eps,
      p50: s.latency_p50_ms ?? 0, p99: s.latency_p99_ms ?? 0 });
    if (entry.history.length > HISTORY) entry.history.shift();
    render(entry, s, eps);
  }
}

function render(entry, s, eps) {
  const q = (sel) => entry.element.querySelector(sel);
  const state = q(".state");
  state.textContent = s.state;
  state.className = "badge state state-" + s.state;
  q(".since").textContent = "since " + new Date(s.state_since).toLocaleTimeString();
  const error = q(".error");
  error.hidden = !s.last_error;
  error.textContent = s.last_error ? "last error: " + s.last_error : "";
  // The slot of a source that had one is gone or lost: nothing is
  // published until an operator re-creates it.
  const alert = q(".slot-alert");
  alert.hidden = !s.slot_missing;
  alert.textContent = s.slot_missing
    ? "Replication slot missing or lost: this source publishes nothing. Re-create it with " +
      "`outbox-relay create-slots --recreate " + s.name + "` (see the error below)." : "";
  q(".lag").textContent = bytes(s.slot_lag_bytes);
  // From the lag probe (its own connection), whatever the state: a slot
  // about to be invalidated shows here first.
  const walStatus = q(".wal-status");
  walStatus.textContent = s.wal_status ?? "–";
  walStatus.className = "wal-status wal-" + (s.wal_status ?? "unknown");
  walStatus.title = s.slot_probe_error ? "lag probe failed: " + s.slot_probe_error : "";
  q(".safe-wal").textContent = s.safe_wal_size_bytes == null
    ? (s.wal_status && s.wal_status !== "missing" && s.wal_status !== "lost" ? "unlimited" : "–")
    : bytes(Math.max(0, s.safe_wal_size_bytes));
  q(".lag-seconds").textContent = s.lag_seconds.toFixed(2) + " s";
  q(".events").textContent = s.events_published.toLocaleString();
  q(".rate").textContent = eps.toFixed(0);
  q(".p50").textContent = s.latency_p50_ms == null ? "–" : s.latency_p50_ms.toFixed(1) + " ms";
  q(".p99").textContent = s.latency_p99_ms == null ? "–" : s.latency_p99_ms.toFixed(1) + " ms";
  q(".reconnects").textContent = s.reconnects;
  // A source that fails again soon after it starts streaming shows
  // `streaming` most of the time; this number gives it away.
  const perMinute = q(".reconnects-per-minute");
  perMinute.textContent = s.reconnects_per_minute;
  perMinute.classList.toggle("flapping", s.reconnects_per_minute > 2);
  perMinute.title = s.reconnects_per_minute > 2 ? "flapping: the source keeps failing soon after it reconnects" : "";
  q(".dead-letters").textContent = s.dead_letters;
  q(".lsn").textContent = s.confirmed_lsn;
  for (const chart of CHARTS) draw(q(`canvas[data-chart="${chart.key}"]`), chart, entry.history);
}

function draw(canvas, chart, history) {
  const ctx = canvas.getContext("2d");
  const style = getComputedStyle(document.documentElement);
  const w = canvas.width, h = canvas.height, pad = { l: 8, r: 8, t: 30, b: 8 };
  ctx.clearRect(0, 0, w, h);
  let max = 0;
  for (const p of history) for (const k of chart.series) max = Math.max(max, p[k]);
  const top = max > 0 ? max * 1.15 : 1;
  ctx.strokeStyle = style.getPropertyValue("--grid");
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ((h - pad.t - pad.b) * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
  }
  const x = (i) => pad.l + ((w - pad.l - pad.r) * i) / (HISTORY - 1);
  const y = (v) => h - pad.b - ((h - pad.t - pad.b) * v) / top;
  const offset = HISTORY - history.length;
  chart.series.forEach((key, n) => {
    ctx.strokeStyle = style.getPropertyValue(COLORS[n]);
    ctx.lineWidth = 3;
    ctx.beginPath();
    history.forEach((p, i) => (i === 0 ? ctx.moveTo(x(i + offset), y(p[key])) : ctx.lineTo(x(i + offset), y(p[key]))));
    ctx.stroke();
  });
  ctx.fillStyle = style.getPropertyValue("--text");
  ctx.font = "22px system-ui, sans-serif";
  const last = history[history.length - 1] || {};
  const label = chart.series.map((k) => chart.format(last[k] ?? 0)).join(" / ");
  ctx.fillText("now " + label + "   max " + chart.format(max), pad.l, 22);
}

async function poll() {
  const badge = document.getElementById("connection");
  try {
    const response = await fetch("api/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    update(await response.json());
    badge.textContent = "live";
    badge.className = "badge state-streaming";
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    badge.textContent = "relay unreachable";
    badge.className = "badge state-error";
  }
  setTimeout(poll, 1000);
}

poll();
