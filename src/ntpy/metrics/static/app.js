// ntpy status page: polls the daemon's JSON API and draws the tables and plots itself.
// Plain browser JavaScript, no libraries and no build step, so the page works offline and
// the daemon serves every byte of it. Data is inserted with textContent only (never as
// HTML), so a hostile source name cannot inject markup.
"use strict";

(() => {
  const STATUS_EVERY_MS = 2000;
  const HISTORY_EVERY_MS = 5000;
  const FETCH_TIMEOUT_MS = 4000;
  const MIN_SPAN_MS = 5 * 60 * 1000;
  const LEAP_TEXT = ["none", "insert second", "delete second", "alarm (unsynchronized)"];
  const TALLY_CLASS = { "*": "tally-sys", "+": "tally-cand", "-": "tally-out", "x": "tally-false", "#": "tally-excess" };

  const state = {
    hours: 6,
    status: null,
    lastT: null,
    nowMs: null,
    windowMs: 24 * 3600 * 1000,
    intervalMs: 16000,
    system: { t: [], offset: [], jitter: [], freq: [] },
    sources: new Map(),
  };

  // ---------------------------------------------------------------- fetching

  async function getJSON(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const resp = await fetch(url, { cache: "no-store", signal: ctl.signal });
      if (!resp.ok) {
        throw new Error(`${url}: HTTP ${resp.status}`);
      }
      return await resp.json();
    } finally {
      clearTimeout(timer);
    }
  }

  const failures = new Map();

  function reportFailure(what, err) {
    failures.set(what, err && err.name === "AbortError" ? "timed out" : String(err && err.message || err));
    showFailures();
  }

  function reportSuccess(what) {
    if (failures.delete(what)) {
      showFailures();
    }
  }

  function showFailures() {
    const banner = document.getElementById("error");
    if (failures.size === 0) {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    const parts = [...failures].map(([what, msg]) => `${what}: ${msg}`);
    banner.textContent = `Cannot reach the daemon (${parts.join("; ")}); retrying.`;
    banner.hidden = false;
  }

  function every(ms, job) {
    const run = async () => {
      try {
        await job();
      } finally {
        setTimeout(run, ms);
      }
    };
    run();
  }

  // ---------------------------------------------------------------- formatting

  function fmtNs(ns, signed) {
    if (ns === null || ns === undefined || !Number.isFinite(ns)) {
      return "-";
    }
    const a = Math.abs(ns);
    let text;
    if (a < 1e3) {
      text = `${a.toFixed(0)} ns`;
    } else if (a < 1e6) {
      text = `${(a / 1e3).toFixed(3)} µs`;
    } else if (a < 1e9) {
      text = `${(a / 1e6).toFixed(3)} ms`;
    } else {
      text = `${(a / 1e9).toFixed(3)} s`;
    }
    const sign = ns < 0 ? "-" : signed ? "+" : "";
    return sign + text;
  }

  function fmtPpm(ppb) {
    if (!Number.isFinite(ppb)) {
      return "-";
    }
    const ppm = ppb / 1000;
    return `${ppm >= 0 ? "+" : ""}${ppm.toFixed(3)} ppm`;
  }

  function fmtWhen(s) {
    if (s === null || s === undefined) {
      return "-";
    }
    if (s <= 2048) {
      return String(s);
    }
    if (s < 300 * 60) {
      return `${Math.floor(s / 60)}m`;
    }
    if (s < 96 * 3600) {
      return `${Math.floor(s / 3600)}h`;
    }
    return `${Math.floor(s / 86400)}d`;
  }

  function fmtDate(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) {
      return "-";
    }
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function two(n) {
    return String(n).padStart(2, "0");
  }

  function clockTime(ms, withSeconds) {
    const d = new Date(ms);
    const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
    return withSeconds ? `${hm}:${two(d.getSeconds())}` : hm;
  }

  // ---------------------------------------------------------------- tables

  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) {
      el.className = cls;
    }
    return el;
  }

  function fillKV(tableId, rows) {
    const body = document.querySelector(`#${tableId} tbody`);
    const out = rows.map(([key, value, title]) => {
      const tr = document.createElement("tr");
      tr.append(cell("th", key), cell("td", value));
      if (title) {
        tr.title = title;
      }
      return tr;
    });
    body.replaceChildren(...out);
  }

  function renderSummary(st) {
    const badge = document.getElementById("summary");
    let text;
    let cls;
    if (st.synchronized) {
      text = `synchronized · stratum ${st.stratum}`;
      cls = "badge-ok";
    } else if (st.leap === 3) {
      text = "not synchronized";
      cls = "badge-bad";
    } else {
      text = `not synchronized · stratum ${st.stratum}`;
      cls = "badge-warn";
    }
    badge.textContent = text;
    badge.className = `badge ${cls}`;
  }

  function renderTracking(st) {
    const peer = st.sources.find((s) => s.id === st.system_peer_id);
    const peerName = peer ? peer.name : st.system_peer || "-";
    fillKV("tracking", [
      ["Synchronized", st.synchronized ? "yes" : "no"],
      ["Stratum", String(st.stratum)],
      ["Reference ID", st.refid || "-"],
      ["System peer", peerName],
      ["Offset", fmtNs(st.offset_ns, true), "last offset correction (clock minus reference)"],
      ["Frequency", fmtPpm(st.frequency_ppb)],
      ["Jitter", fmtNs(st.jitter_ns, false)],
      ["Clock jitter", fmtNs(st.clock_jitter_ns, false)],
      ["Wander", fmtPpm(st.clock_wander_ppb).replace("+", "")],
      ["Root delay", fmtNs(st.root_delay_ns, false)],
      ["Root dispersion", fmtNs(st.root_dispersion_ns, false)],
      ["Root distance", fmtNs(st.root_distance_ns, false), "maximum error: time is correct to within this"],
      ["Leap", LEAP_TEXT[st.leap] || String(st.leap)],
      ["Poll", `${st.poll_s} s`],
      ["Precision", `2^${st.precision} s (${fmtNs(Math.pow(2, st.precision) * 1e9, false)})`],
      ["Reference time", st.reference_ns === null ? "-" : fmtDate(st.reference_ns / 1e6)],
      ["Clock updates", String(st.updates)],
      ["Clock", st.clock],
    ]);
  }

  function renderSources(st) {
    const body = document.querySelector("#sources tbody");
    if (st.sources.length === 0) {
      const tr = document.createElement("tr");
      const td = cell("td", "no sources configured", "empty");
      td.colSpan = 12;
      tr.append(td);
      body.replaceChildren(tr);
      return;
    }
    const rows = st.sources.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.sourceId = String(s.id);
      if (s.tally === "*") {
        tr.className = "sel-sys";
      }
      const name = cell("td", s.name);
      if (s.address && s.address !== s.name) {
        name.title = s.address;
      }
      const never = s.when_s === null;
      tr.append(
        cell("td", s.tally, `tally ${TALLY_CLASS[s.tally] || ""}`),
        name,
        cell("td", s.refid),
        cell("td", String(s.stratum)),
        cell("td", s.type_char),
        cell("td", fmtWhen(s.when_s)),
        cell("td", String(s.poll_s)),
        cell("td", s.reach.toString(8)),
        cell("td", never ? "-" : fmtNs(s.delay_ns, false)),
        cell("td", never ? "-" : fmtNs(s.offset_ns, true)),
        cell("td", never ? "-" : fmtNs(s.jitter_ns, false)),
        cell("td", s.state),
      );
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function renderCounters(counters) {
    const keys = Object.keys(counters).sort();
    fillKV("counters", keys.map((k) => [k.replace(/_/g, " "), String(counters[k])]));
  }

  async function pollStatus() {
    try {
      const data = await getJSON("api/status");
      state.status = data.status;
      renderSummary(data.status);
      renderTracking(data.status);
      renderSources(data.status);
      renderCounters(data.counters || {});
      const version = data.info && data.info.version;
      document.getElementById("version").textContent = version ? version : "";
      document.getElementById("updated").textContent = `updated ${clockTime(Date.now(), true)}`;
      reportSuccess("status");
    } catch (err) {
      reportFailure("status", err);
    }
  }

  // ---------------------------------------------------------------- history

  function trim(series, keys, cutoff) {
    let n = 0;
    while (n < series.t.length && series.t[n] < cutoff) {
      n += 1;
    }
    if (n > 0) {
      for (const k of keys) {
        series[k].splice(0, n);
      }
    }
  }

  function resetHistory() {
    state.system = { t: [], offset: [], jitter: [], freq: [] };
    state.sources = new Map();
    state.lastT = null;
  }

  function mergeHistory(h) {
    if (state.lastT !== null && h.now_ms < state.lastT) {
      resetHistory(); // the served clock went back (a step): start over next time
      return false;
    }
    state.nowMs = h.now_ms;
    state.windowMs = h.window_s * 1000;
    state.intervalMs = h.interval_s * 1000;
    let last = state.lastT === null ? -Infinity : state.lastT;
    const sys = h.system;
    for (let i = 0; i < sys.t_ms.length; i += 1) {
      state.system.t.push(sys.t_ms[i]);
      state.system.offset.push(sys.offset_ns[i]);
      state.system.jitter.push(sys.jitter_ns[i]);
      state.system.freq.push(sys.frequency_ppb[i] / 1000);
      last = Math.max(last, sys.t_ms[i]);
    }
    for (const src of h.sources) {
      let mine = state.sources.get(src.id);
      if (!mine) {
        mine = { t: [], offset: [], delay: [] };
        state.sources.set(src.id, mine);
      }
      mine.name = src.name;
      for (let i = 0; i < src.t_ms.length; i += 1) {
        mine.t.push(src.t_ms[i]);
        mine.offset.push(src.offset_ns[i]);
        mine.delay.push(src.delay_ns[i]);
        last = Math.max(last, src.t_ms[i]);
      }
    }
    const cutoff = h.now_ms - state.windowMs;
    trim(state.system, ["t", "offset", "jitter", "freq"], cutoff);
    for (const [id, src] of state.sources) {
      trim(src, ["t", "offset", "delay"], cutoff);
      if (src.t.length === 0) {
        state.sources.delete(id);
      }
    }
    if (Number.isFinite(last)) {
      state.lastT = last;
    }
    return true;
  }

  async function pollHistory() {
    try {
      const url = state.lastT === null ? "api/history" : `api/history?since_ms=${state.lastT}`;
      const data = await getJSON(url);
      mergeHistory(data);
      drawAll();
      reportSuccess("history");
    } catch (err) {
      reportFailure("history", err);
    }
  }

  // ---------------------------------------------------------------- plots

  const TIME_UNITS = [
    [1e9, "s"],
    [1e6, "ms"],
    [1e3, "µs"],
    [1, "ns"],
  ];
  const TIME_STEPS_MS = [
    10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3, 1800e3,
    3600e3, 7200e3, 10800e3, 21600e3, 43200e3,
  ];

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function niceStep(rough) {
    const exp = Math.floor(Math.log10(rough));
    const base = Math.pow(10, exp);
    const f = rough / base;
    const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    return nice * base;
  }

  function decimalsFor(step) {
    return Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  }

  // Each series: {name, color, t: [ms], v: [value in base unit]}.
  // opts: {kind: "time" (values in ns) | "ppm", includeZero, gapMs}
  function drawPlot(canvas, seriesList, opts) {
    const dpr = window.devicePixelRatio || 1;
    const rect = canvas.getBoundingClientRect();
    const width = Math.max(200, Math.round(rect.width));
    const height = Math.max(120, Math.round(rect.height));
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const fg = cssVar("--fg");
    const muted = cssVar("--muted");
    const grid = cssVar("--grid");
    const axis = cssVar("--axis");
    ctx.font = "11px system-ui, sans-serif";

    const now = state.nowMs;
    let xmax = now === null ? Date.now() : now;
    let xmin = xmax - state.hours * 3600e3;
    let oldest = Infinity;
    let ylo = Infinity;
    let yhi = -Infinity;
    const visible = seriesList.map((s) => {
      const idx = [];
      for (let i = 0; i < s.t.length; i += 1) {
        if (s.t[i] >= xmin && s.t[i] <= xmax && Number.isFinite(s.v[i])) {
          idx.push(i);
          oldest = Math.min(oldest, s.t[i]);
          ylo = Math.min(ylo, s.v[i]);
          yhi = Math.max(yhi, s.v[i]);
        }
      }
      return idx;
    });
    const total = visible.reduce((n, idx) => n + idx.length, 0);
    if (Number.isFinite(oldest)) {
      xmin = Math.max(xmin, oldest);
    }
    if (xmax - xmin < MIN_SPAN_MS) {
      xmin = xmax - MIN_SPAN_MS;
    }

    const legend = seriesList.length > 1 || (seriesList.length === 1 && opts.legend);
    const left = 62;
    const right = 12;
    const top = legend ? 26 : 20;
    const bottom = 22;
    const pw = width - left - right;
    const ph = height - top - bottom;

    if (total === 0) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("no data yet", left + pw / 2, top + ph / 2);
      canvas.dataset.points = "0";
      return;
    }

    // y range and unit
    if (opts.includeZero) {
      ylo = Math.min(ylo, 0);
      yhi = Math.max(yhi, 0);
    }
    let scale = 1;
    let unit = "ppm";
    if (opts.kind === "time") {
      const mag = Math.max(Math.abs(ylo), Math.abs(yhi));
      const pick = TIME_UNITS.find(([f]) => mag >= f) || TIME_UNITS[TIME_UNITS.length - 1];
      [scale, unit] = pick;
    }
    let lo = ylo / scale;
    let hi = yhi / scale;
    if (hi - lo < 1e-9) {
      const pad = Math.max(Math.abs(hi) * 0.1, opts.kind === "time" ? 1 : 0.001);
      lo -= pad;
      hi += pad;
    }
    const step = niceStep((hi - lo) / 4);
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    const dec = decimalsFor(step);
    const X = (t) => left + ((t - xmin) / (xmax - xmin)) * pw;
    const Y = (v) => top + ph - ((v / scale - lo) / (hi - lo)) * ph;

    // grid and y labels
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.fillStyle = muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = lo; v <= hi + step / 2; v += step) {
      const y = Math.round(top + ph - ((v - lo) / (hi - lo)) * ph) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + pw, y);
      ctx.stroke();
      const label = Math.abs(v) < step / 2 ? "0" : v.toFixed(dec);
      ctx.fillText(label, left - 6, y);
    }
    ctx.save();
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(unit, 4, 2);
    ctx.restore();

    // time axis
    const span = xmax - xmin;
    const tstep = TIME_STEPS_MS.find((s) => span / s <= 7) || 86400e3;
    const tz = new Date(xmax).getTimezoneOffset() * 60e3;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil((xmin - tz) / tstep) * tstep + tz; t <= xmax; t += tstep) {
      const x = Math.round(X(t)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + ph);
      ctx.stroke();
      if (x - left > 16 && left + pw - x > 12) { // no label squeezed against the ends
        ctx.fillText(clockTime(t, tstep < 60e3), x, top + ph + 5);
      }
    }
    ctx.strokeStyle = axis;
    ctx.beginPath();
    ctx.moveTo(left + 0.5, top);
    ctx.lineTo(left + 0.5, top + ph + 0.5);
    ctx.lineTo(left + pw, top + ph + 0.5);
    ctx.stroke();

    // series
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top - 3, pw + 3, ph + 6);
    ctx.clip();
    seriesList.forEach((s, k) => {
      const idx = visible[k];
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let prev = null;
      for (const i of idx) {
        const x = X(s.t[i]);
        const y = Y(s.v[i]);
        if (prev === null || s.t[i] - prev > opts.gapMs) {
          ctx.moveTo(x, y);
        } else {
          ctx.lineTo(x, y);
        }
        prev = s.t[i];
      }
      ctx.stroke();
      if (idx.length <= 120) {
        for (const i of idx) {
          ctx.beginPath();
          ctx.arc(X(s.t[i]), Y(s.v[i]), 2.2, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    });
    ctx.restore();

    // legend
    if (legend) {
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      let x = left;
      for (const s of seriesList) {
        ctx.fillStyle = s.color;
        ctx.fillRect(x, 6, 10, 10);
        ctx.fillStyle = fg;
        const label = s.name.length > 28 ? `${s.name.slice(0, 27)}…` : s.name;
        ctx.fillText(label, x + 14, 11);
        x += ctx.measureText(label).width + 30;
        if (x > width - 60) {
          break;
        }
      }
    }
    canvas.dataset.points = String(total);
  }

  function drawAll() {
    const sys = state.system;
    const sysGap = Math.max(4 * state.intervalMs, 60e3);
    const c1 = cssVar("--series-1");
    drawPlot(document.getElementById("plot-offset"),
      [{ name: "offset", color: c1, t: sys.t, v: sys.offset }],
      { kind: "time", includeZero: true, gapMs: sysGap });
    drawPlot(document.getElementById("plot-jitter"),
      [{ name: "jitter", color: c1, t: sys.t, v: sys.jitter }],
      { kind: "time", includeZero: true, gapMs: sysGap });
    drawPlot(document.getElementById("plot-frequency"),
      [{ name: "frequency", color: c1, t: sys.t, v: sys.freq }],
      { kind: "ppm", includeZero: false, gapMs: sysGap });
    const srcs = [...state.sources.entries()].sort((a, b) => a[0] - b[0]);
    const color = (k) => cssVar(`--series-${(k % 8) + 1}`);
    const srcGap = 3 * 1024e3;
    drawPlot(document.getElementById("plot-source-offset"),
      srcs.map(([, s], k) => ({ name: s.name, color: color(k), t: s.t, v: s.offset })),
      { kind: "time", includeZero: true, gapMs: srcGap, legend: true });
    drawPlot(document.getElementById("plot-source-delay"),
      srcs.map(([, s], k) => ({ name: s.name, color: color(k), t: s.t, v: s.delay })),
      { kind: "time", includeZero: true, gapMs: srcGap, legend: true });
  }

  // ---------------------------------------------------------------- start

  function setupRanges() {
    const buttons = document.querySelectorAll("#ranges button");
    for (const btn of buttons) {
      btn.addEventListener("click", () => {
        state.hours = Number(btn.dataset.hours);
        for (const b of buttons) {
          b.classList.toggle("active", b === btn);
        }
        drawAll();
      });
    }
  }

  let resizePending = false;
  window.addEventListener("resize", () => {
    if (!resizePending) {
      resizePending = true;
      requestAnimationFrame(() => {
        resizePending = false;
        drawAll();
      });
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    setupRanges();
    drawAll();
    every(STATUS_EVERY_MS, pollStatus);
    every(HISTORY_EVERY_MS, pollHistory);
  });
})();
