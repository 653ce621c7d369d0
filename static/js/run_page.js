// The run page: load the charts' history from the series endpoint, then follow the run's WebSocket.
// This script runs before Plotly (see run_page.html): the history is asked for at once, while the
// browser is still evaluating Plotly's 1.2 MB, and drawn when Plotly is there.
// The series answer carries the `last_seq` it was read at; the socket asks for `after=<that seq>`,
// and every reconnect asks for `after=<the last seq we hold>`, so the server fills any gap and
// nothing is drawn twice (each chart trace also drops steps it already has).
(function () {
  "use strict";

  const configNode = document.getElementById("run-page-config");
  if (!configNode) return;
  const config = JSON.parse(configNode.textContent);
  const TERMINAL = ["succeeded", "failed", "cancelled", "paused"];
  const PING_MS = 10000;
  const STALE_MS = 25000;

  const badge = document.getElementById("live-badge");
  const statusBadge = document.getElementById("run-status");
  const errorBox = document.getElementById("run-error");
  const log = document.getElementById("event-log");
  const progress = {
    step: document.getElementById("progress-step"),
    total: document.getElementById("progress-total"),
    totalWrap: document.getElementById("progress-total-wrap"),
    percent: document.getElementById("progress-percent"),
    fill: document.getElementById("progress-fill"),
    eta: document.getElementById("progress-eta"),
  };

  const knownKeys = new Set(config.metricKeys); // grows as new keys arrive live
  let status = config.status;
  let lastSeq = config.lastSeq;
  let xAxis = "step";
  let t0 = null; // epoch seconds of the run's first point (relative time's origin)
  let reloading = null; // events that arrive while the history reloads
  let socket = null;
  let lastFrameAt = 0;
  let retryMs = 500;
  const stepTimes = [];
  let totalSteps = Number(progress.total && progress.total.textContent) || 0;

  // Deferred scripts run in order before DOMContentLoaded; Plotly's comes after this one.
  const plotlyReady = new Promise((resolve) => {
    if (window.Plotly) resolve();
    else document.addEventListener("DOMContentLoaded", resolve, { once: true });
  });

  const charts = config.charts.map((spec) => new RftLiveChart(document.getElementById(`chart-${spec.id}`), spec, { xAxis, smoothing: 0, finished: TERMINAL.includes(config.status) && config.status !== "paused" }));

  // ---- x axis ------------------------------------------------------------------------------
  function xFor(step, isoTime) {
    if (xAxis === "step") return step;
    if (xAxis === "samples") return step * config.samplesPerStep;
    if (xAxis === "wall_time") return isoTime;
    const t = Date.parse(isoTime) / 1000;
    if (t0 === null) t0 = t;
    return Math.round((t - t0) * 1000) / 1000;
  }

  // ---- history -----------------------------------------------------------------------------
  async function loadHistory() {
    reloading = [];
    // Ask only for what the charts draw (a run also stores per-tool and per-error-type counts).
    const keys = [...knownKeys].filter((key) => charts.some((chart) => chart.wants(key)));
    if (!keys.length) {
      await plotlyReady;
      for (const chart of charts) chart.reset({}, xAxis);
      flushBuffered();
      return;
    }
    const params = new URLSearchParams({ x: xAxis, max_points: "2000", keys: keys.join(",") });
    const response = await fetch(`${config.seriesUrl}?${params}`, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) throw new Error(`series: HTTP ${response.status}`);
    const data = await response.json();
    for (const key of data.keys || []) knownKeys.add(key);
    t0 = data.t0 === undefined ? t0 : data.t0;
    if (!window.Plotly) previewInView(data.series);
    await plotlyReady;
    await resetInViewFirst(data.series);
    flushBuffered();
  }

  // The charts in the window are drawn first, in one task, and painted before the others (each
  // of those in a task of its own, nearest first), so the page shows curves before all the charts
  // are done. Live events wait in `reloading` meanwhile.
  function inView(element) {
    const box = element.getBoundingClientRect();
    return box.bottom > 0 && box.top < window.innerHeight;
  }
  // Before Plotly is there, the charts in view are drawn as still frames at once (first_frame.js).
  function previewInView(series) {
    for (const chart of charts) if (inView(chart.el)) chart.preview(series, xAxis);
  }
  const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));
  async function resetInViewFirst(series) {
    const later = [];
    for (const chart of charts) {
      if (inView(chart.el)) chart.reset(series, xAxis);
      else later.push(chart);
    }
    for (const chart of later) {
      await nextTask();
      chart.reset(series, xAxis);
    }
  }

  function flushBuffered() {
    const buffered = reloading || [];
    reloading = null;
    for (const event of buffered) applyMetrics(event);
  }

  // ---- live events -------------------------------------------------------------------------
  function setBadge(state) {
    badge.textContent = state;
    badge.className = "badge " + (state === "live" ? "live" : "stale");
  }

  function applyMetrics(event) {
    if (reloading) { reloading.push(event); return; }
    const metrics = (event.payload && event.payload.metrics) || {};
    for (const key of Object.keys(metrics)) knownKeys.add(key);
    const x = xFor(event.step, event.time);
    for (const chart of charts) chart.append(event.step, x, metrics);
  }

  function formatDuration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "—";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function median(values) {
    const sorted = values.slice().sort((a, b) => a - b);
    return sorted.length ? sorted[Math.floor(sorted.length / 2)] : NaN;
  }

  function updateProgress(step, total) {
    if (total) totalSteps = total;
    // Steps only move forward (a late eval or a replayed event carries an older step).
    const current = Math.max(Number(progress.step.textContent) || 0, step || 0);
    progress.step.textContent = current;
    if (totalSteps) {
      progress.totalWrap.hidden = false;
      progress.total.textContent = totalSteps;
      const percent = Math.min(100, (100 * current) / totalSteps);
      progress.percent.textContent = `${percent.toFixed(1)} %`;
      progress.fill.style.width = `${percent}%`;
    }
    if (TERMINAL.includes(status)) return;
    const perStep = stepTimes.length ? median(stepTimes) : Number(progress.eta.dataset.secondsPerStep);
    if (totalSteps && perStep > 0) progress.eta.textContent = `ETA ${formatDuration(perStep * (totalSteps - current))}`;
  }

  const phase = document.getElementById("progress-phase");
  function showPhase(message) {
    if (!phase) return;
    phase.hidden = !message;
    if (message) phase.textContent = message.charAt(0).toUpperCase() + message.slice(1);
  }

  function appendLog(event, text) {
    // The page was rendered with the log up to some event; the socket may replay it: once is enough.
    if (log.querySelector(`[data-seq="${event.seq}"]`)) return;
    const line = document.createElement("div");
    line.dataset.seq = event.seq;
    line.className = `log-${event.kind}${event.payload && event.payload.level ? " log-" + event.payload.level : ""}`;
    if (event.time) {
      const time = document.createElement("time");
      time.dateTime = event.time;
      time.textContent = window.RftClock ? window.RftClock.time(new Date(event.time)) : event.time;
      line.append(time);
    }
    line.append(`  ${text}`);
    log.appendChild(line);
    log.scrollTop = log.scrollHeight;
  }

  // The reward-hacking watch: the flagged counter follows the steps; a pause shows its banner.
  const watchPanel = {
    counter: document.getElementById("watch-flagged"),
    rollouts: document.getElementById("watch-rollouts"),
    banner: document.getElementById("paused-banner"),
    stepArrived(metrics) {
      if (!this.counter || metrics["watch/flagged"] === undefined) return;
      const flagged = Number(this.counter.textContent) + metrics["watch/flagged"];
      this.counter.textContent = flagged;
      this.counter.classList.toggle("has-flags", flagged > 0);
      if (this.rollouts && metrics["watch/rollouts"] !== undefined) {
        this.rollouts.textContent = Number(this.rollouts.textContent) + metrics["watch/rollouts"];
      }
    },
    statusChanged(payload) {
      if (!this.banner) return;
      this.banner.classList.toggle("hidden", payload.status !== "paused");
      if (payload.status === "paused") document.getElementById("paused-detail").textContent = payload.error || "";
    },
  };

  // The action bar (Cancel, Resume, downloads, checkpoints) is rendered by the server; fetch it
  // again when the run's status changes or a checkpoint lands, keeping the checkpoint list open
  // if the user opened it.
  let actionsTimer = null;
  function refreshActions() {
    if (actionsTimer !== null) return;
    actionsTimer = setTimeout(async () => {
      actionsTimer = null;
      const current = document.getElementById("run-actions");
      if (!current) return;
      try {
        const response = await fetch(config.actionsUrl, { credentials: "same-origin" });
        if (!response.ok) return;
        const wasOpen = Boolean(current.querySelector("details[open]"));
        const holder = document.createElement("div");
        holder.innerHTML = (await response.text()).trim();
        const fresh = holder.firstElementChild;
        if (!fresh) return;
        const details = fresh.querySelector("details");
        if (details && wasOpen) details.open = true;
        current.replaceWith(fresh);
        if (window.htmx) window.htmx.process(fresh);
      } catch (error) {
        console.warn("could not refresh the run's actions", error);
      }
    }, 300);
  }

  function onEvent(event) {
    if (event.seq <= lastSeq) return;
    lastSeq = event.seq;
    const p = event.payload || {};
    if (event.kind === "metrics") {
      applyMetrics(event);
      const m = p.metrics || {};
      if (m.step_time !== undefined) {
        stepTimes.push(m.step_time);
        if (stepTimes.length > 20) stepTimes.shift();
      }
      updateProgress(event.step, m["progress/total_steps"]);
      showPhase(null);
      if (p.rollouts && p.rollouts.count) histogram.stepArrived(event.step, p.rollouts.splits || []);
      watchPanel.stepArrived(m);
    } else if (event.kind === "status") {
      status = p.status;
      statusBadge.textContent = p.status.charAt(0).toUpperCase() + p.status.slice(1);
      statusBadge.className = "badge " + p.status;
      progress.fill.className = "progress-fill " + p.status;
      errorBox.textContent = p.error || "";
      // Only a failure is an error; a cancel or a finished run's note is a plain notice.
      errorBox.className = p.status === "failed" ? "error-box" : "notice-box";
      errorBox.classList.toggle("hidden", !p.error || p.status === "paused");
      // "Cancel requested" and the like were about the state now replaced: drop them.
      if (TERMINAL.includes(p.status)) {
        for (const note of document.querySelectorAll(".messages .msg-run-pending")) note.remove();
        for (const list of document.querySelectorAll("ul.messages")) if (!list.children.length) list.remove();
      }
      watchPanel.statusChanged(p);
      if (p.attempt !== undefined) document.getElementById("run-attempt").textContent = p.attempt;
      updateProgress(p.current_step, p.total_steps);
      if (TERMINAL.includes(p.status)) { progress.eta.textContent = statusBadge.textContent; showPhase(null); }
      appendLog(event, `status → ${p.status}${p.error ? ": " + p.error : ""}`);
      refreshActions();
    } else if (event.kind === "log") {
      appendLog(event, `[${p.level}] ${p.message}`);
      // The eval in progress, while the charts have nothing new to show (see selectors/run_state).
      if (/^(baseline eval|eval at step \d+): evaluating/.test(p.message || "")) showPhase(p.message);
    } else if (event.kind === "checkpoint") {
      appendLog(event, `checkpoint at step ${event.step}`);
      refreshActions();
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${config.socketPath}?after=${lastSeq}`);
    socket.onopen = () => { retryMs = 500; lastFrameAt = Date.now(); setBadge("live"); };
    socket.onmessage = (message) => {
      lastFrameAt = Date.now();
      if (badge.textContent !== "live") setBadge("live");
      const frame = JSON.parse(message.data);
      if (frame.type === "events") frame.events.forEach(onEvent);
    };
    socket.onclose = (closing) => {
      socket = null;
      setBadge("stale");
      if (closing.code === 4403) { badge.textContent = "forbidden"; return; }
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    };
  }

  // A socket can die silently (a sleeping laptop, a proxy): ping, and call it stale when quiet.
  setInterval(() => {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    if (Date.now() - lastFrameAt > STALE_MS) { setBadge("stale"); socket.close(); return; }
    socket.send(JSON.stringify({ type: "ping" }));
  }, PING_MS);

  // ---- tool-call histogram -------------------------------------------------------------------
  const histogram = (function () {
    const node = document.getElementById("tool-call-histogram");
    const stepInput = document.getElementById("histogram-step"); // empty: the latest step
    let refreshTimer = null;

    // Every trace gets every count from 0 to the largest seen, so grouped bars line up.
    function bars(part, name, color, xs) {
      const counts = part.counts;
      const total = Object.values(counts).reduce((a, b) => a + b, 0);
      return {
        type: "bar", name: `${name} (step ${part.step}, ${total} rollouts)`, x: xs,
        y: xs.map((x) => (counts[x] || 0) / total), customdata: xs.map((x) => counts[x] || 0),
        hovertemplate: "%{x} calls: %{customdata} rollouts (%{y:.0%})<extra></extra>", marker: { color },
      };
    }

    async function load() {
      const params = new URLSearchParams({ split: "train" });
      if (stepInput.value) params.set("step", stepInput.value);
      const response = await fetch(`${config.histogramUrl}?${params}`, { credentials: "same-origin" });
      if (!response.ok) return;
      const data = await response.json();
      const parts = [];
      const seen = new Set();
      for (const [part, name, color] of [[data.baseline, "baseline", "#adb5bd"], [data.latest, "latest", "#3b5bdb"], [data.chosen, "chosen", "#e67700"]]) {
        if (!part || seen.has(part.step)) continue;
        seen.add(part.step);
        parts.push([part, name, color]);
      }
      const most = Math.max(0, ...parts.flatMap(([part]) => Object.keys(part.counts).map(Number)));
      const xs = Array.from({ length: most + 1 }, (_, i) => i);
      const traces = parts.map(([part, name, color]) => bars(part, name, color, xs));
      const layout = {
        height: 260, margin: { l: 48, r: 12, t: 10, b: 40 }, barmode: "group", bargap: 0.15,
        xaxis: { title: { text: "tool calls in the rollout" }, dtick: 1 },
        yaxis: { title: { text: "share of rollouts" }, tickformat: ".0%" },
        legend: { orientation: "h", y: 1.12 }, font: { family: "system-ui, sans-serif", size: 11 },
        annotations: traces.length ? [] : [{ text: "no rollouts yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#98a2b3", size: 13 } }],
      };
      if (!traces.length) { layout.xaxis.visible = false; layout.yaxis.visible = false; }
      if (stepInput.value && !data.chosen && traces.length) {
        layout.annotations.push({ text: `no train rollouts at step ${stepInput.value}`, showarrow: false, xref: "paper", yref: "paper", x: 1, y: 1, xanchor: "right", font: { color: "#b54708", size: 12 } });
      }
      await plotlyReady;
      if (!window.Plotly) return; // Plotly did not load: the page keeps its still frames, no histogram
      Plotly.react(node, traces, layout, { responsive: true, displaylogo: false });
      node.dataset.steps = traces.map((t) => t.name).join("; ");
    }

    function stepArrived(step, splits) {
      if (splits.includes("train")) {
        if (!stepInput.min) stepInput.min = String(step);
        if (!(Number(stepInput.max) >= step)) stepInput.max = String(step);
      }
      if (refreshTimer === null) refreshTimer = setTimeout(() => { refreshTimer = null; load(); }, 3000);
    }

    stepInput.addEventListener("change", load);
    return { load, stepArrived };
  })();

  const smoothing = document.getElementById("smoothing");
  smoothing.addEventListener("input", () => {
    const alpha = Number(smoothing.value);
    document.getElementById("smoothing-value").textContent = alpha.toFixed(2);
    for (const chart of charts) chart.setSmoothing(alpha);
  });

  document.getElementById("x-axis").addEventListener("change", async (change) => {
    xAxis = change.target.value;
    t0 = null;
    await loadHistory();
  });

  loadHistory()
    .catch(async (error) => {
      console.error(error);
      await plotlyReady;
      for (const chart of charts) chart.reset({}, xAxis);
      flushBuffered();
    })
    .finally(() => { connect(); histogram.load(); });
  updateProgress();
})();
