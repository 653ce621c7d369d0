// The run comparison page: overlaid curves (one chart per metric, one colour per run everywhere),
// tool-call distributions, the per-item table and one item's rollouts side by side.
// Curves come downsampled from the server (min, max and last per bucket of steps); a zoom asks
// again for the steps in view. Runs still training follow their WebSocket and grow with
// Plotly.extendTraces. The view's state (metrics, x axis, smoothing, band, item filters) lives in
// the URL, so the address bar is a shareable link to exactly this view.
// This script runs before Plotly (see compare.html): the curves are asked for at once, while the
// browser is still evaluating Plotly, and drawn when it is there.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("compare-config").textContent);
  const { smoothPoint } = window.RftSmoothing;
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const DEFAULT_KEYS = ["reward", "eval/reward", "eval/pass@1", "tools/calls_mean", "tools/calls_p95", "completions/mean_length", "kl", "loss", "step_time"];
  const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"], toImageButtonOptions: { format: "png", scale: 2 } };
  const FLUSH_MS = 100;
  // Deferred scripts run in order before DOMContentLoaded; Plotly's comes after this one.
  const plotlyReady = new Promise((resolve) => {
    if (window.Plotly) resolve();
    else document.addEventListener("DOMContentLoaded", resolve, { once: true });
  });

  const runs = config.runs;
  const runById = new Map(runs.map((run) => [String(run.id), run]));
  const params = new URLSearchParams(location.search);
  const state = {
    xAxis: params.get("x") || "step",
    smoothing: params.has("smoothing") ? Number(params.get("smoothing")) : 0.6,
    band: params.get("band") === "1",
    keys: (params.get("metrics") || "").split(",").filter((key) => config.metricKeys.includes(key)),
  };
  if (!params.has("metrics")) {
    state.keys = DEFAULT_KEYS.filter((key) => config.metricKeys.includes(key));
    if (!state.keys.length) state.keys = config.metricKeys.slice(0, 6);
  }
  const t0 = new Map(); // run id -> epoch seconds of its first point (relative time's origin)
  const lastSeq = new Map(runs.map((run) => [String(run.id), run.last_seq]));

  function saveState() {
    const query = new URLSearchParams(location.search);
    query.set("x", state.xAxis);
    query.set("smoothing", state.smoothing.toFixed(2));
    query.set("metrics", state.keys.join(","));
    if (state.band) query.set("band", "1"); else query.delete("band");
    history.replaceState(null, "", `${location.pathname}?${query}`);
  }

  function hexToRgba(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  function xFor(runId, step, isoTime) {
    const run = runById.get(runId);
    if (state.xAxis === "step") return step;
    if (state.xAxis === "samples") return step * run.samples_per_step;
    if (state.xAxis === "wall_time") return isoTime;
    const t = Date.parse(isoTime) / 1000;
    if (!t0.has(runId) || t0.get(runId) === null) t0.set(runId, t);
    return Math.round((t - t0.get(runId)) * 1000) / 1000;
  }

  function xNumber(x) {
    return typeof x === "string" ? Date.parse(x) : x;
  }

  // The running min and max of the raw values over a window of neighbouring points: the band.
  function envelope(values) {
    const half = Math.max(1, Math.round(values.length / 80));
    const low = [], high = [];
    for (let i = 0; i < values.length; i += 1) {
      let lo = Infinity, hi = -Infinity;
      for (let j = Math.max(0, i - half); j <= Math.min(values.length - 1, i + half); j += 1) {
        if (!Number.isFinite(values[j])) continue;
        lo = Math.min(lo, values[j]);
        hi = Math.max(hi, values[j]);
      }
      low.push(lo === Infinity ? null : lo);
      high.push(hi === -Infinity ? null : hi);
    }
    return { low, high };
  }

  async function fetchSeries(keys, range) {
    const query = new URLSearchParams({ runs: runs.map((run) => run.id).join(","), keys: keys.join(","), x: state.xAxis, max_points: "2000" });
    if (range) {
      query.set("step_min", String(range[0]));
      query.set("step_max", String(range[1]));
    }
    const response = await fetch(`${config.seriesUrl}?${query}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`series: HTTP ${response.status}`);
    const data = await response.json();
    for (const [runId, entry] of Object.entries(data.runs)) {
      if (!range) t0.set(runId, entry.t0);
      if (!range && entry.last_seq > (lastSeq.get(runId) || 0)) lastSeq.set(runId, entry.last_seq);
    }
    return data;
  }

  class CompareChart {
    constructor(key, container) {
      this.key = key;
      this.cell = document.createElement("div");
      this.cell.className = "chart-cell";
      this.cell.dataset.key = key;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "linklike remove-chart";
      remove.title = `Remove the ${key} chart`;
      remove.textContent = "×";
      remove.addEventListener("click", () => removeChart(key));
      this.el = document.createElement("div");
      this.el.className = "chart";
      this.el.id = `compare-chart-${key.replace(/[^a-z0-9]+/gi, "-")}`;
      this.cell.append(remove, this.el);
      container.appendChild(this.cell);
      this.series = new Map(); // run id -> {x, y, step}
      this.pending = new Map();
      this.timer = null;
      this.revision = 0;
      this.range = null; // [step_min, step_max] of the zoomed-in query, or null
      this.drawing = false;
    }

    load(runsData) {
      this.series.clear();
      for (const run of runs) {
        const entry = runsData[String(run.id)];
        const s = entry && entry.series[this.key];
        this.series.set(String(run.id), s ? { x: s.x.slice(), y: s.y.slice(), step: s.step.slice() } : { x: [], y: [], step: [] });
      }
    }

    // Traces per run: [band low, band high] when the band is on, then raw (faint), then smoothed.
    traces() {
      const traces = [];
      this.index = new Map();
      for (const run of runs) {
        const s = this.series.get(String(run.id));
        if (!s) continue;
        const entry = {};
        if (state.band) {
          const { low, high } = envelope(s.y);
          entry.low = traces.length;
          traces.push({ x: s.x.slice(), y: low, mode: "lines", line: { width: 0, color: run.color }, hoverinfo: "skip", showlegend: false, legendgroup: String(run.id), name: `${run.name} min` });
          entry.high = traces.length;
          traces.push({ x: s.x.slice(), y: high, mode: "lines", line: { width: 0, color: run.color }, fill: "tonexty", fillcolor: hexToRgba(run.color, 0.13), hoverinfo: "skip", showlegend: false, legendgroup: String(run.id), name: `${run.name} max` });
        }
        const sparse = s.y.length > 0 && s.y.length < 40;
        entry.raw = traces.length;
        traces.push({ x: s.x.slice(), y: s.y.slice(), mode: sparse ? "lines+markers" : "lines", line: { color: run.color, width: 1 }, marker: { size: 3, color: run.color }, opacity: state.smoothing > 0 ? 0.25 : 1, hoverinfo: "skip", showlegend: false, legendgroup: String(run.id), name: `${run.name} raw` });
        entry.smooth = traces.length;
        entry.state = { ema: 0, weight: 0 };
        const smoothed = s.y.map((y) => smoothPoint(entry.state, state.smoothing, y));
        traces.push({ x: s.x.slice(), y: smoothed, mode: sparse ? "lines+markers" : "lines", line: { color: run.color, width: 1.8 }, marker: { size: 4, color: run.color }, visible: state.smoothing > 0 ? true : "legendonly", showlegend: true, legendgroup: String(run.id), name: run.name });
        if (state.smoothing <= 0) {
          // Unsmoothed: the raw line is the curve, shown in the legend.
          traces[entry.raw].showlegend = true;
          traces[entry.raw].name = run.name;
          traces[entry.raw].hoverinfo = undefined;
          traces[entry.smooth].visible = false;
          traces[entry.smooth].showlegend = false;
        }
        this.index.set(String(run.id), entry);
      }
      return traces;
    }

    layout() {
      const points = [...this.series.values()].reduce((total, s) => total + s.y.length, 0);
      return {
        title: { text: this.key, font: { size: 13 }, x: 0.02, xanchor: "left" },
        height: 270,
        margin: { l: 48, r: 12, t: 34, b: 36 },
        uirevision: `${state.xAxis}-${this.revision}`,
        showlegend: true,
        legend: { orientation: "h", y: -0.2, font: { size: 11 } },
        xaxis: { type: state.xAxis === "wall_time" ? "date" : "linear", zeroline: false },
        yaxis: { zeroline: false, automargin: true },
        hovermode: "x unified",
        font: { family: "system-ui, sans-serif", size: 11 },
        annotations: points ? [] : [{ text: "no data in these runs", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#98a2b3", size: 13 } }],
        paper_bgcolor: "#fff",
        plot_bgcolor: "#fff",
      };
    }

    draw(keepLayout) {
      if (!window.Plotly) return; // not loaded yet: loadAll draws with the state of then
      const layout = this.layout();
      if (keepLayout && this.el.layout) {
        layout.xaxis = { ...this.el.layout.xaxis, type: layout.xaxis.type };
        layout.yaxis = { ...this.el.layout.yaxis };
      }
      this.drawing = true;
      RftFirstFrame.clear(this.el);
      Plotly.react(this.el, this.traces(), layout, PLOT_CONFIG).then(() => { this.drawing = false; });
      this.el.dataset.points = String([...this.series.values()].reduce((total, s) => total + s.y.length, 0));
      this.el.dataset.maxSeriesPoints = String(Math.max(0, ...[...this.series.values()].map((s) => s.y.length)));
      this.el.dataset.range = this.range ? this.range.join("-") : "";
      if (!this.listening) {
        this.listening = true;
        this.el.on("plotly_relayout", (event) => this.relayout(event));
      }
    }

    // The steps behind the x range in view: [last step before it (or the first in it), last step
    // in it (or the first after it)], over every run's loaded points.
    stepsFor(x0, x1) {
      let before = -Infinity, firstIn = Infinity, lastIn = -Infinity, after = Infinity;
      for (const s of this.series.values()) {
        for (let i = 0; i < s.x.length; i += 1) {
          const x = xNumber(s.x[i]);
          const step = s.step[i];
          if (x < x0) before = Math.max(before, step);
          else if (x > x1) after = Math.min(after, step);
          else { firstIn = Math.min(firstIn, step); lastIn = Math.max(lastIn, step); }
        }
      }
      const lo = before !== -Infinity ? before : firstIn;
      const hi = after !== Infinity ? after : lastIn;
      return [lo === Infinity ? null : lo, hi === -Infinity ? null : hi];
    }

    async relayout(event) {
      if (this.drawing) return;
      if (event["xaxis.autorange"]) {
        if (!this.range) return;
        this.range = null;
        const data = await fetchSeries([this.key]);
        this.load(data.runs);
        this.draw(true);
        return;
      }
      const x0 = event["xaxis.range[0]"] ?? (event["xaxis.range"] || [])[0];
      const x1 = event["xaxis.range[1]"] ?? (event["xaxis.range"] || [])[1];
      if (x0 === undefined || x1 === undefined) return;
      const [stepMin, stepMax] = this.stepsFor(xNumber(x0), xNumber(x1));
      if (stepMin === null || stepMax === null) return;
      this.range = [stepMin, stepMax];
      const data = await fetchSeries([this.key], this.range);
      this.load(data.runs);
      this.draw(true);
    }

    // Live: one step of one run.
    append(runId, step, time, value) {
      const s = this.series.get(runId);
      const entry = this.index && this.index.get(runId);
      if (!s || !entry) return;
      if (s.step.length && step <= s.step[s.step.length - 1]) return;
      const x = xFor(runId, step, time);
      s.x.push(x);
      s.y.push(value);
      s.step.push(step);
      const smoothed = smoothPoint(entry.state, state.smoothing, value);
      const add = (index, y) => {
        if (index === undefined) return;
        if (!this.pending.has(index)) this.pending.set(index, { x: [], y: [] });
        this.pending.get(index).x.push(x);
        this.pending.get(index).y.push(y);
      };
      add(entry.low, value);
      add(entry.high, value);
      add(entry.raw, value);
      add(entry.smooth, smoothed);
      if (this.timer === null) this.timer = setTimeout(() => this.flush(), FLUSH_MS);
    }

    flush() {
      this.timer = null;
      if (!this.pending.size) return;
      const indices = [], xs = [], ys = [];
      for (const [index, points] of this.pending) { indices.push(index); xs.push(points.x); ys.push(points.y); }
      this.pending.clear();
      Plotly.extendTraces(this.el, { x: xs, y: ys }, indices);
      this.el.dataset.points = String([...this.series.values()].reduce((total, s) => total + s.y.length, 0));
    }
  }

  // ---- charts ------------------------------------------------------------------------------
  const container = document.getElementById("compare-charts");
  const charts = new Map();
  const addSelect = document.getElementById("add-metric");

  function refreshAddOptions() {
    for (const option of addSelect.options) option.disabled = option.value !== "" && charts.has(option.value);
  }

  async function loadAll() {
    if (!state.keys.length) return;
    const data = await fetchSeries(state.keys);
    if (!window.Plotly) {
      // Plotly is still being evaluated: the charts in the window as still frames meanwhile.
      for (const chart of charts.values()) {
        if (!onScreen(chart.el)) continue;
        chart.load(data.runs);
        RftFirstFrame.draw(chart.el, chart.traces(), chart.layout());
      }
    }
    await plotlyReady;
    // The charts in the window first, in one task; each of the others in a task of its own, after a paint.
    const ordered = [...charts.values()].sort((a, b) => onScreen(b.el) - onScreen(a.el));
    for (const [index, chart] of ordered.entries()) {
      if (index > 0 && !onScreen(chart.el)) await new Promise((resolve) => setTimeout(resolve, 0));
      chart.range = null;
      chart.revision += 1;
      chart.load(data.runs);
      chart.draw(false);
    }
  }

  function onScreen(element) {
    const box = element.getBoundingClientRect();
    return Number(box.bottom > 0 && box.top < window.innerHeight);
  }

  async function addChart(key) {
    if (charts.has(key)) return;
    const chart = new CompareChart(key, container);
    charts.set(key, chart);
    if (!state.keys.includes(key)) state.keys.push(key);
    refreshAddOptions();
    saveState();
    const data = await fetchSeries([key]);
    await plotlyReady;
    chart.load(data.runs);
    chart.draw(false);
  }

  function removeChart(key) {
    const chart = charts.get(key);
    if (!chart) return;
    Plotly.purge(chart.el);
    chart.cell.remove();
    charts.delete(key);
    state.keys = state.keys.filter((k) => k !== key);
    refreshAddOptions();
    saveState();
  }

  for (const key of state.keys) {
    const chart = new CompareChart(key, container);
    charts.set(key, chart);
  }
  refreshAddOptions();

  addSelect.addEventListener("change", () => {
    const key = addSelect.value;
    addSelect.value = "";
    if (key) addChart(key);
  });

  const xSelect = document.getElementById("x-axis");
  xSelect.value = state.xAxis;
  xSelect.addEventListener("change", async () => {
    state.xAxis = xSelect.value;
    t0.clear();
    saveState();
    await loadAll();
    container.dataset.xAxis = state.xAxis;
  });

  const smoothing = document.getElementById("smoothing");
  const smoothingValue = document.getElementById("smoothing-value");
  smoothing.value = String(state.smoothing);
  smoothingValue.textContent = state.smoothing.toFixed(2);
  smoothing.addEventListener("input", () => {
    state.smoothing = Number(smoothing.value);
    smoothingValue.textContent = state.smoothing.toFixed(2);
    for (const chart of charts.values()) chart.draw(true);
    saveState();
  });

  const band = document.getElementById("minmax-band");
  band.checked = state.band;
  band.addEventListener("change", () => {
    state.band = band.checked;
    for (const chart of charts.values()) chart.draw(true);
    saveState();
  });

  // ---- live updates ------------------------------------------------------------------------
  function follow(run) {
    const runId = String(run.id);
    let retryMs = 500;
    const dot = document.querySelector(`[data-live-run="${runId}"]`);
    function connect() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const socket = new WebSocket(`${scheme}://${location.host}/ws/runs/${runId}/?after=${lastSeq.get(runId) || 0}`);
      socket.onopen = () => { retryMs = 500; if (dot) dot.hidden = false; };
      socket.onmessage = (message) => {
        const frame = JSON.parse(message.data);
        if (frame.type !== "events") return;
        for (const event of frame.events) {
          if (event.seq <= (lastSeq.get(runId) || 0)) continue;
          lastSeq.set(runId, event.seq);
          if (event.kind === "metrics") {
            const metrics = (event.payload && event.payload.metrics) || {};
            for (const [key, value] of Object.entries(metrics)) {
              if (!config.metricKeys.includes(key)) {
                config.metricKeys.push(key);
                addSelect.appendChild(new Option(key, key));
              }
              const chart = charts.get(key);
              if (chart && !chart.range) chart.append(runId, event.step, event.time, value);
            }
          } else if (event.kind === "status") {
            const status = event.payload.status;
            const badge = document.querySelector(`.run-chip[data-run="${runId}"] .badge`);
            if (badge) { badge.textContent = status.charAt(0).toUpperCase() + status.slice(1); badge.className = `badge ${status}`; }
            if (TERMINAL.includes(status)) { run.status = status; socket.close(1000); }
          }
        }
      };
      socket.onclose = (closing) => {
        if (dot) dot.hidden = true;
        if (TERMINAL.includes(run.status) || closing.code === 4403) return;
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 10000);
      };
    }
    connect();
  }

  // The tool-call charts are further down: drawn after the curves. `data-ready`: all drawn.
  loadAll()
    .catch((error) => console.error(error))
    .finally(() => {
      for (const run of runs) if (!TERMINAL.includes(run.status)) follow(run);
      plotlyReady.then(drawToolCalls).catch((error) => console.error(error)).finally(() => { container.dataset.ready = "1"; });
    });

  // ---- tool-call distributions -------------------------------------------------------------
  function drawToolCalls() {
    const data = JSON.parse(document.getElementById("tool-call-data").textContent);
    const xs = Array.from({ length: data.max_calls + 1 }, (_, i) => i);
    const font = { family: "system-ui, sans-serif", size: 11 };
    const empty = [{ text: "no eval rollouts", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#98a2b3", size: 13 } }];
    const histogram = data.parts.map((part) => ({
      type: "bar", name: `${part.label} (${part.rollouts})`, x: xs, marker: { color: part.color },
      y: xs.map((x) => (part.histogram[String(x)] || 0) / Math.max(1, part.rollouts)),
      customdata: xs.map((x) => part.histogram[String(x)] || 0),
      hovertemplate: "%{x} calls: %{customdata} rollouts (%{y:.0%})<extra>" + part.label + "</extra>",
    }));
    Plotly.react("tool-call-histogram", histogram, {
      title: { text: "Tool calls per rollout", font: { size: 13 }, x: 0.02, xanchor: "left" },
      height: 300, margin: { l: 48, r: 12, t: 34, b: 40 }, barmode: "group", bargap: 0.15, font,
      xaxis: { title: { text: "tool calls in the rollout" }, dtick: 1 }, yaxis: { title: { text: "share of rollouts" }, tickformat: ".0%" },
      legend: { orientation: "h", y: -0.25 }, annotations: histogram.length ? [] : empty,
    }, PLOT_CONFIG);
    const perTool = data.parts.map((part) => ({
      type: "bar", name: part.label, x: data.tools, marker: { color: part.color },
      y: data.tools.map((tool) => part.per_tool[tool] || 0),
      hovertemplate: "%{x}: %{y:.2f} calls per rollout<extra>" + part.label + "</extra>",
    }));
    Plotly.react("per-tool-calls", perTool, {
      title: { text: "Calls per rollout, by tool", font: { size: 13 }, x: 0.02, xanchor: "left" },
      height: 300, margin: { l: 48, r: 12, t: 34, b: 40 }, barmode: "group", bargap: 0.2, font,
      yaxis: { title: { text: "calls per rollout" } }, legend: { orientation: "h", y: -0.25 },
      annotations: data.tools.length ? [] : [{ ...empty[0], text: "no tool calls" }],
    }, PLOT_CONFIG);
  }

  // ---- baseline, config diff ---------------------------------------------------------------
  document.getElementById("baseline-select").addEventListener("change", (change) => {
    const query = new URLSearchParams(location.search);
    query.set("baseline", change.target.value);
    query.delete("against");
    location.search = query.toString();
  });

  const differencesOnly = document.getElementById("differences-only");
  differencesOnly.addEventListener("change", () => {
    document.getElementById("config-diff").classList.toggle("differences-only", differencesOnly.checked);
    const query = new URLSearchParams(location.search);
    if (differencesOnly.checked) query.delete("config"); else query.set("config", "all");
    history.replaceState(null, "", `${location.pathname}?${query}`);
  });

  // ---- per-item table ----------------------------------------------------------------------
  const itemsBox = document.getElementById("items");
  const detail = document.getElementById("item-detail");
  const selectionQuery = `runs=${runs.map((run) => run.id).join(",")}&baseline=${config.baseline}`;

  async function loadItems(query) {
    const response = await fetch(`${config.itemsUrl}?${query}`, { credentials: "same-origin" });
    if (!response.ok) return;
    itemsBox.innerHTML = await response.text();
    // Keep the page's own parameters (charts) and take the table's.
    const page = new URLSearchParams(location.search);
    for (const [key, value] of new URLSearchParams(query)) page.set(key, value);
    if (!new URLSearchParams(query).has("status")) page.delete("status");
    history.replaceState(null, "", `${location.pathname}?${page}`);
  }

  function itemsQuery(changes) {
    const controls = itemsBox.querySelector("[data-items-query]");
    const query = new URLSearchParams(controls.dataset.itemsQuery);
    for (const [key, value] of Object.entries(changes)) {
      if (value === "" || value === null) query.delete(key); else query.set(key, value);
    }
    return query.toString();
  }

  itemsBox.addEventListener("click", (click) => {
    const link = click.target.closest("[data-items-link]");
    if (link) {
      click.preventDefault();
      loadItems(link.dataset.itemsLink);
      return;
    }
    const row = click.target.closest("tr.item-row");
    if (row) openItem(row);
  });
  itemsBox.addEventListener("keydown", (key) => {
    const row = key.target.closest("tr.item-row");
    if (row && key.key === "Enter") openItem(row);
  });
  itemsBox.addEventListener("change", (change) => {
    if (change.target.id === "items-against") loadItems(itemsQuery({ against: change.target.value }));
    if (change.target.id === "items-tolerance") loadItems(itemsQuery({ tolerance: change.target.value }));
  });

  async function openItem(row) {
    for (const other of itemsBox.querySelectorAll("tr.item-row.open")) other.classList.remove("open");
    row.classList.add("open");
    const response = await fetch(`${config.itemUrl}${row.dataset.item}/?${selectionQuery}`, { credentials: "same-origin" });
    detail.innerHTML = response.ok ? await response.text() : '<div class="error-box">Could not load this item.</div>';
    detail.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  detail.addEventListener("click", (click) => {
    if (click.target.closest("[data-close-item]")) {
      detail.innerHTML = "";
      for (const row of itemsBox.querySelectorAll("tr.item-row.open")) row.classList.remove("open");
    }
  });

  // Only the tracked set of parameters in the URL; the first load writes the chart state.
  saveState();
})();
