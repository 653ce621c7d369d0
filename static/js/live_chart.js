// A Plotly line chart that loads its history once and then grows point by point.
// New points are buffered and drawn with Plotly.extendTraces; `uirevision` keeps the user's zoom
// and extendTraces never touches the layout. Each trace remembers its last step and drops anything
// at or before it: replays after a reconnect never draw a point twice.
//
// A fast run must not flood the browser: every redraw of every chart costs main-thread time, and
// while the thread draws, new WebSocket frames wait. So the charts of a page share one draw queue
// that redraws at most every FLUSH_MS and, when drawing gets expensive, spaces the rounds so that
// drawing takes at most about a third of the time; each chart draws in its own task, so frames
// are handled between charts; and a chart scrolled out of view keeps its points buffered and
// draws them when it comes back into view.
(function (global) {
  "use strict";

  const FLUSH_MS = 100;
  const DRAW_SHARE = 1 / 3; // the most of the main thread's time the live redraws may take
  const VIEW_MARGIN = "200px 0px"; // start drawing a chart just before it scrolls into view

  const drawQueue = {
    charts: new Set(),
    timer: null,
    lastCost: 0, // ms the last round of redraws took
    request(chart) {
      this.charts.add(chart);
      if (this.timer !== null) return;
      const wait = Math.max(FLUSH_MS, this.lastCost / DRAW_SHARE - this.lastCost);
      this.timer = setTimeout(() => this.drain(), wait);
    },
    drain() {
      const charts = [...this.charts];
      this.charts.clear();
      let cost = 0;
      const next = () => {
        const chart = charts.shift();
        if (chart) {
          const started = performance.now();
          chart.flush();
          cost += performance.now() - started;
        }
        if (charts.length) {
          setTimeout(next, 0); // let frames that arrived meanwhile in before the next chart
        } else {
          this.lastCost = cost;
          this.timer = null;
          if (this.charts.size) this.request([...this.charts][0]);
        }
      };
      next();
    },
  };
  const SPARSE_POINTS = 40; // below this many points a trace shows its markers
  const COLORS = ["#3b5bdb", "#e67700", "#2b8a3e", "#c92a2a", "#7048e8", "#0b7285", "#d6336c", "#5c940d"];
  const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function label(key) {
    return key.replace(/^eval\//, "eval ").replace(/^timing\//, "").replace(/^tools\//, "").replace(/^grader_errors\//, "");
  }

  // The value of `steps`/`values` at the last step <= step (series downsampled separately may not
  // share steps); undefined when there is none.
  function valueAtOrBefore(steps, values, step, from) {
    let i = from;
    while (i + 1 < steps.length && steps[i + 1] <= step) i += 1;
    return { index: i, value: i >= 0 && steps[i] <= step ? values[i] : undefined };
  }

  // Exponential moving average with debias (as TensorBoard / W&B): early points are not pulled
  // toward 0. `state` carries the running sums so appended points continue the same curve.
  // The app's one smoothing: every chart uses it, and the server returns points as stored.
  function smoothPoint(state, alpha, y) {
    if (!Number.isFinite(y) || alpha <= 0) return y;
    state.ema = alpha * state.ema + (1 - alpha) * y;
    state.weight = alpha * state.weight + (1 - alpha);
    return state.ema / state.weight;
  }

  class LiveChart {
    constructor(element, spec, options) {
      this.el = element;
      this.spec = spec;
      this.options = options || {};
      this.keys = new Map(); // metric key -> {index, lastStep}
      this.pending = new Map(); // trace index -> {x: [], y: []}
      this.band = spec.band || null;
      this.smoothing = this.options.smoothing || 0;
      this.raw = []; // per trace: the points as stored, before smoothing
      this.smoothState = [];
      this.lastStd = undefined;
      this.drawn = false;
      // Drawn live unless known to be out of view (an observer's first report comes after a frame).
      this.visible = true;
      if ("IntersectionObserver" in global) {
        new IntersectionObserver((entries) => {
          this.visible = entries[entries.length - 1].isIntersecting;
          if (this.visible && this.pending.size) drawQueue.request(this);
        }, { rootMargin: VIEW_MARGIN }).observe(element);
      }
    }

    wants(key) {
      if (this.band) return key === this.band.mean || key === this.band.std;
      if ((this.spec.keys || []).includes(key)) return true;
      return (this.spec.prefix || []).some((prefix) => key.startsWith(prefix));
    }

    layout() {
      const xAxis = this.options.xAxis || "step";
      return {
        title: { text: this.spec.title, font: { size: 13 }, x: 0.02, xanchor: "left" },
        height: 250,
        margin: { l: 48, r: 12, t: 34, b: 36 },
        uirevision: "keep",
        showlegend: true,
        legend: { orientation: "h", y: -0.22, font: { size: 11 } },
        xaxis: { title: { text: "" }, type: xAxis === "wall_time" ? "date" : "linear", zeroline: false },
        yaxis: { zeroline: false, automargin: true },
        hovermode: "x unified",
        annotations: [],
        font: { family: "system-ui, sans-serif", size: 11 },
        paper_bgcolor: "#fff",
        plot_bgcolor: "#fff",
      };
    }

    // Draw from the series endpoint's {key: {x, y, step}}; replaces whatever was drawn.
    reset(series, xAxis) {
      if (!global.Plotly && global.RftFirstFrame) {
        // Plotly could not be loaded (blocked, offline cache): the still chart at least.
        this.preview(series, xAxis);
        return;
      }
      const { traces, layout } = this.build(series, xAxis);
      if (global.RftFirstFrame) global.RftFirstFrame.clear(this.el);
      Plotly.react(this.el, traces, layout, PLOT_CONFIG);
      this.drawn = true;
      this.el.dataset.points = String(this.pointCount());
    }

    // The same chart as a still first frame (first_frame.js), while Plotly is not there yet; reset
    // draws over it.
    preview(series, xAxis) {
      const { traces, layout } = this.build(series, xAxis);
      global.RftFirstFrame.draw(this.el, traces, layout);
    }

    // The traces and layout for a history; sets the chart's state (keys, raw points, smoothing).
    build(series, xAxis) {
      this.options.xAxis = xAxis;
      this.keys.clear();
      this.pending.clear();
      const traces = [];
      if (this.band) {
        const mean = series[this.band.mean] || { x: [], y: [], step: [] };
        const std = series[this.band.std] || { x: [], y: [], step: [] };
        const upper = [], lower = [];
        let cursor = -1;
        for (let i = 0; i < mean.step.length; i += 1) {
          const found = valueAtOrBefore(std.step, std.y, mean.step[i], cursor);
          cursor = found.index;
          const s = found.value === undefined ? 0 : found.value;
          upper.push(mean.y[i] + s);
          lower.push(mean.y[i] - s);
        }
        if (std.y.length) this.lastStd = std.y[std.y.length - 1];
        const fill = "rgba(59, 91, 219, 0.15)";
        traces.push({ x: mean.x.slice(), y: upper, mode: "lines", line: { width: 0 }, name: "+1 std", hoverinfo: "skip", showlegend: false });
        traces.push({ x: mean.x.slice(), y: lower, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: fill, name: "± std", hoverinfo: "skip" });
        traces.push({ x: mean.x, y: mean.y, mode: mean.y.length < SPARSE_POINTS ? "lines+markers" : "lines", line: { color: COLORS[0], width: 1.8 }, marker: { color: COLORS[0], size: 5 }, name: "reward" });
        const last = mean.step.length ? mean.step[mean.step.length - 1] : -Infinity;
        this.keys.set(this.band.mean, { index: 2, lastStep: last });
      } else {
        // A per-rule or per-error-type series that is all zeros says nothing and only adds a legend
        // row: it gets its trace when it first leaves zero (see append).
        const keys = Object.keys(series).filter((key) => this.wants(key) && !this.silent(key, series[key].y)).sort((a, b) => {
          const order = this.spec.keys || [];
          const ia = order.indexOf(a), ib = order.indexOf(b);
          return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b, undefined, { numeric: true });
        });
        for (const key of keys) {
          const s = series[key];
          this.keys.set(key, { index: traces.length, lastStep: s.step.length ? s.step[s.step.length - 1] : -Infinity });
          traces.push(this.traceFor(key, traces.length, s.x, s.y));
        }
      }
      this.raw = traces.map((trace) => ({ x: trace.x.slice(), y: trace.y.slice() }));
      this.smoothState = traces.map(() => ({ ema: 0, weight: 0 }));
      traces.forEach((trace, i) => { trace.y = this.smoothed(i); });
      const layout = this.layout();
      this.hasPoints = traces.some((trace) => trace.y.length);
      if (!this.hasPoints) {
        // An empty chart says so, without made-up axes (Plotly draws -1..6 for no data).
        layout.annotations = [this.emptyNote()];
        layout.xaxis.visible = false;
        layout.yaxis.visible = false;
      }
      this.fitLegend(layout, traces);
      return { traces, layout };
    }

    silent(key, values) {
      const fixed = (this.spec.keys || []).includes(key);
      return !fixed && values.every((value) => value === 0);
    }

    // A horizontal legend under the plot takes rows; grow the chart by them instead of shrinking
    // the plot (the watch chart has a trace per rule). A single trace needs no legend at all.
    fitLegend(layout, traces) {
      const named = traces.filter((trace) => trace.showlegend !== false);
      if (named.length <= 1) { layout.showlegend = false; layout.margin.b = 30; return; }
      const width = this.el.clientWidth || 360;
      const perRow = Math.max(1, Math.floor(width / 130));
      const rows = Math.ceil(named.length / perRow);
      layout.height = 230 + 20 * rows;
      layout.legend = { orientation: "h", yanchor: "top", y: -0.2, font: { size: 11 } };
      layout.margin.b = 30 + 20 * rows;
    }

    traceFor(key, index, x, y) {
      const color = COLORS[index % COLORS.length];
      // Sparse series (evals every few steps, rare error types) and young ones need markers: a
      // lone point drawn as a line is invisible. Dense ones lose them as they grow (see flush).
      const mode = this.spec.markers || (y || []).length < SPARSE_POINTS ? "lines+markers" : "lines";
      return { x: x || [], y: y || [], mode, name: label(key), line: { color, width: 1.6 }, marker: { color, size: 4 } };
    }

    emptyNote() {
      return { text: this.options.finished ? "no data in this run" : "no data yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#98a2b3", size: 13 } };
    }

    pointCount() {
      const data = this.el.data || [];
      const index = this.band ? 2 : null;
      return data.reduce((total, trace, i) => (index === null || i === index ? total + trace.y.length : total), 0);
    }

    // Trace `index` from its raw points, smoothed with the current factor (state reset first).
    smoothed(index) {
      const state = (this.smoothState[index] = { ema: 0, weight: 0 });
      return this.raw[index].y.map((y) => smoothPoint(state, this.smoothing, y));
    }

    // A new smoothing factor redraws every trace from its raw points; uirevision keeps the zoom.
    setSmoothing(alpha) {
      this.smoothing = alpha;
      if (!this.drawn) return;
      this.flush();
      const data = this.el.data.map((trace, i) => ({ ...trace, y: this.smoothed(i) }));
      Plotly.react(this.el, data, this.el.layout, PLOT_CONFIG);
    }

    queue(index, x, y) {
      this.raw[index].x.push(x);
      this.raw[index].y.push(y);
      if (!this.pending.has(index)) this.pending.set(index, { x: [], y: [] });
      const p = this.pending.get(index);
      p.x.push(x);
      p.y.push(smoothPoint(this.smoothState[index], this.smoothing, y));
    }

    // One step's metrics arrived: buffer the points this chart draws, then flush soon.
    append(step, x, metrics) {
      if (!this.drawn) return;
      if (this.band) {
        const mean = metrics[this.band.mean];
        if (metrics[this.band.std] !== undefined) this.lastStd = metrics[this.band.std];
        const known = this.keys.get(this.band.mean);
        if (mean === undefined || step <= known.lastStep) return;
        known.lastStep = step;
        const s = this.lastStd === undefined ? 0 : this.lastStd;
        this.queue(0, x, mean + s);
        this.queue(1, x, mean - s);
        this.queue(2, x, mean);
      } else {
        for (const key of Object.keys(metrics)) {
          if (!this.wants(key)) continue;
          let known = this.keys.get(key);
          if (!known && this.silent(key, [metrics[key]])) continue;
          if (!known) {
            // A key that first appears now (a new grader error type, pass@k): add its trace.
            known = { index: this.el.data.length, lastStep: -Infinity };
            this.keys.set(key, known);
            this.raw.push({ x: [], y: [] });
            this.smoothState.push({ ema: 0, weight: 0 });
            Plotly.addTraces(this.el, this.traceFor(key, known.index, [], []));
          }
          if (step <= known.lastStep) continue;
          known.lastStep = step;
          this.queue(known.index, x, metrics[key]);
        }
      }
      if (this.pending.size && this.visible) drawQueue.request(this);
    }

    flush() {
      if (!this.pending.size) return;
      const indices = [], xs = [], ys = [];
      for (const [index, points] of this.pending) {
        indices.push(index);
        xs.push(points.x);
        ys.push(points.y);
      }
      this.pending.clear();
      Plotly.extendTraces(this.el, { x: xs, y: ys }, indices);
      if (!this.spec.markers) {
        const grown = indices.filter((i) => this.el.data[i].mode === "lines+markers" && this.el.data[i].y.length >= SPARSE_POINTS);
        if (grown.length) Plotly.restyle(this.el, { mode: "lines" }, grown);
      }
      if (!this.hasPoints) {
        this.hasPoints = true;
        Plotly.relayout(this.el, { annotations: [], "xaxis.visible": true, "yaxis.visible": true });
      }
      this.el.dataset.points = String(this.pointCount());
    }
  }

  // A whole series smoothed from the start (the same formula as smoothPoint, fresh state).
  function smoothSeries(values, alpha) {
    const state = { ema: 0, weight: 0 };
    return values.map((y) => smoothPoint(state, alpha, y));
  }

  global.RftLiveChart = LiveChart;
  // Shared with other pages' charts (the run comparison) so there is one smoothing formula.
  global.RftSmoothing = { smoothPoint, smoothSeries };
})(window);
