// The first frame of a chart, drawn from the same traces and layout that go to Plotly, before
// Plotly is there.
//
// On a first visit Plotly's 1.2 MB is downloaded, compiled and run before it can draw anything: on a
// 2-core machine that is 300-450 ms after the page's own scripts have its data (bench/README.md,
// bench_first_load.py). Meanwhile this draws the charts in view as plain SVG (axes, grid, lines,
// bands, markers, bars, legend), so the curves are on screen when the page is. Plotly's drawing
// replaces it (clear) and brings hover, zoom and live updates; nothing here is interactive.
//
// It reads the subset of Plotly's trace and layout attributes that the app's charts use: scatter
// (lines, markers, fill "tonexty", line width 0), bar (one color or one per bar), visible /
// showlegend, layout height, margin, title, annotations, axis titles, ranges, rangemode "tozero",
// tickformat ".0%" and date axes.
(function (global) {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const COLORWAY = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const MARKER_LIMIT = 400; // markers beyond this many points would only blur the line

  function node(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    if (parent) parent.appendChild(element);
    return element;
  }

  function text(content, attributes, parent) {
    const element = node("text", attributes, parent);
    element.textContent = content;
    return element;
  }

  function titleOf(value) {
    if (!value) return "";
    return typeof value === "string" ? value : value.text || "";
  }

  // 1-2-5 steps giving about `count` ticks over [low, high].
  function ticks(low, high, count) {
    if (!(high > low)) return [low];
    const raw = (high - low) / Math.max(1, count);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || 10 * power;
    const values = [];
    for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) values.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return values;
  }

  // A tick label with as many decimals as the ticks' step needs (0.095, 0.1, 0.105: not 0.1 thrice).
  function formatNumber(value, format, step) {
    if (format === ".0%") return `${Math.round(value * 100)}%`;
    const size = Math.abs(value);
    if (size >= 1e6) return `${+(value / 1e6).toPrecision(3)}M`;
    if (size >= 1e4) return `${+(value / 1e3).toPrecision(3)}k`;
    const decimals = step > 0 ? Math.min(10, Math.max(0, -Math.floor(Math.log10(step) + 1e-9))) : 3;
    return String(+value.toFixed(decimals));
  }

  function stepOf(values) {
    return values.length > 1 ? values[1] - values[0] : 0;
  }

  function formatDate(ms, span) {
    const date = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    if (span < 2 * 86400e3) return `${pad(date.getHours())}:${pad(date.getMinutes())}`;
    return `${date.toLocaleString("en", { month: "short" })} ${date.getDate()}`;
  }

  function colorOf(trace, index) {
    if (trace.line && trace.line.color) return trace.line.color;
    if (trace.marker && typeof trace.marker.color === "string") return trace.marker.color;
    return COLORWAY[index % COLORWAY.length];
  }

  function shown(trace) {
    return trace.visible === undefined || trace.visible === true;
  }

  // An axis: numbers, dates (ms) or categories, with its range and where each value goes.
  function axisFor(values, spec, isBar) {
    const kind = spec.type === "date" ? "date" : values.some((v) => typeof v === "string" && Number.isNaN(Number(v))) ? "category" : "linear";
    if (kind === "category") {
      const categories = [...new Set(values.map(String))];
      return { kind, categories, position: (v) => categories.indexOf(String(v)), low: -0.5, high: categories.length - 0.5 };
    }
    const toNumber = kind === "date" ? (v) => (typeof v === "number" ? v : Date.parse(v)) : Number;
    const numbers = values.map(toNumber).filter(Number.isFinite);
    let low = numbers.length ? Math.min(...numbers) : 0;
    let high = numbers.length ? Math.max(...numbers) : 1;
    if (spec.rangemode === "tozero" || isBar) { low = Math.min(0, low); high = Math.max(0, high); }
    if (Array.isArray(spec.range) && spec.range.length === 2) [low, high] = spec.range.map(toNumber);
    else if (high === low) { low -= 1; high += 1; }
    else if (isBar) high += (high - low) * 0.05;
    return { kind, position: toNumber, low, high };
  }

  function draw(element, traces, layout) {
    clear(element);
    layout = layout || {};
    const width = element.clientWidth || 360;
    const height = layout.height || element.clientHeight || 250;
    const margin = Object.assign({ l: 48, r: 12, t: 34, b: 36 }, layout.margin || {});
    const font = (layout.font && layout.font.family) || "system-ui, sans-serif";
    const svg = node("svg", { class: "first-frame", width, height, viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true", "font-family": font, "font-size": 11 });
    svg.style.display = "block";
    node("rect", { width, height, fill: layout.paper_bgcolor || "#fff" }, svg);

    const visible = (traces || []).filter(shown);
    const named = visible.filter((trace) => trace.showlegend !== false && trace.name);
    const legend = layout.showlegend !== false && named.length > 1;
    const title = titleOf(layout.title);
    if (title) text(title, { x: 8, y: 20, "font-size": 13, fill: "#2a3f5f" }, svg);

    const points = visible.reduce((total, trace) => total + (trace.y || []).length, 0);
    const plot = { left: margin.l, top: margin.t, right: width - margin.r, bottom: height - margin.b };
    if (!points) {
      const note = (layout.annotations || [])[0];
      if (note && note.text) text(note.text, { x: width / 2, y: height / 2, "text-anchor": "middle", fill: "#98a2b3", "font-size": 13 }, svg);
      element.appendChild(svg);
      return svg;
    }

    const isBar = visible.some((trace) => trace.type === "bar");
    const xSpec = layout.xaxis || {};
    const ySpec = layout.yaxis || {};
    const x = axisFor(visible.flatMap((trace) => trace.x || []), xSpec, false);
    if (isBar && x.kind === "linear") {
      // Bars are centred on their x: half a gap of room on each side.
      const sorted = [...new Set(visible.flatMap((trace) => (trace.x || []).map(Number)))].sort((a, b) => a - b);
      const gaps = sorted.slice(1).map((v, i) => v - sorted[i]);
      x.gap = gaps.length ? Math.min(...gaps) : 1;
      x.low -= x.gap / 2;
      x.high += x.gap / 2;
    }
    const y = axisFor(visible.flatMap((trace) => trace.y || []), ySpec, isBar);
    const sx = (v) => plot.left + ((x.position(v) - x.low) / (x.high - x.low || 1)) * (plot.right - plot.left);
    const sy = (v) => plot.bottom - ((y.position(v) - y.low) / (y.high - y.low || 1)) * (plot.bottom - plot.top);

    // Grid and tick labels.
    const grid = node("g", { stroke: "#eef0f4", "stroke-width": 1 }, svg);
    const labels = node("g", { fill: "#506784" }, svg);
    const yTicks = ticks(y.low, y.high, Math.max(2, Math.floor((plot.bottom - plot.top) / 40)));
    for (const v of yTicks) {
      const py = sy(v);
      node("line", { x1: plot.left, x2: plot.right, y1: py, y2: py }, grid);
      text(formatNumber(v, ySpec.tickformat, stepOf(yTicks)), { x: plot.left - 6, y: py + 4, "text-anchor": "end" }, labels);
    }
    const xCount = Math.max(2, Math.floor((plot.right - plot.left) / 80));
    if (x.kind === "category") {
      x.categories.forEach((category, i) => text(category, { x: sx(category), y: plot.bottom + 14, "text-anchor": "middle" }, labels));
    } else {
      const step = xSpec.dtick && x.kind === "linear" ? Number(xSpec.dtick) : 0;
      const values = step && (x.high - x.low) / step <= 2 * xCount ? ticks(x.low, x.high, Math.round((x.high - x.low) / step)) : ticks(x.low, x.high, xCount);
      for (const v of values) {
        const label = x.kind === "date" ? formatDate(v, x.high - x.low) : formatNumber(v, xSpec.tickformat, stepOf(values));
        text(label, { x: sx(v), y: plot.bottom + 14, "text-anchor": "middle" }, labels);
        node("line", { x1: sx(v), x2: sx(v), y1: plot.top, y2: plot.bottom }, grid);
      }
    }
    const xTitle = titleOf(xSpec.title);
    if (xTitle) text(xTitle, { x: (plot.left + plot.right) / 2, y: plot.bottom + 30, "text-anchor": "middle", fill: "#2a3f5f" }, svg);
    const yTitle = titleOf(ySpec.title);
    if (yTitle) text(yTitle, { x: 12, y: (plot.top + plot.bottom) / 2, "text-anchor": "middle", fill: "#2a3f5f", transform: `rotate(-90 12 ${(plot.top + plot.bottom) / 2})` }, svg);

    // Traces, in order; a "tonexty" fill closes against the previous trace.
    const body = node("g", {}, svg);
    let previous = null;
    visible.forEach((trace, index) => {
      const color = colorOf(trace, index);
      const xs = trace.x || [];
      const ys = trace.y || [];
      if (trace.type === "bar") {
        const slots = x.kind === "category" ? x.categories.length : (x.high - x.low) / (x.gap || 1);
        const barWidth = ((plot.right - plot.left) / Math.max(1, slots)) * 0.8;
        xs.forEach((xv, i) => {
          const top = sy(Math.max(0, ys[i])), base = sy(Math.min(0, ys[i]));
          const fill = Array.isArray(trace.marker && trace.marker.color) ? trace.marker.color[i] : color;
          node("rect", { x: sx(xv) - barWidth / 2, y: top, width: barWidth, height: Math.max(0, base - top), fill }, body);
          const label = Array.isArray(trace.text) ? trace.text[i] : undefined;
          if (label !== undefined && base - top > 16) text(String(label), { x: sx(xv), y: top + 13, "text-anchor": "middle", fill: "#fff" }, body);
        });
        previous = null;
        return;
      }
      const coordinates = [];
      xs.forEach((xv, i) => {
        if (ys[i] === null || ys[i] === undefined || !Number.isFinite(Number(ys[i]))) return;
        coordinates.push([sx(xv), sy(ys[i])]);
      });
      if (trace.fill === "tonexty" && previous && previous.length) {
        const outline = coordinates.concat(previous.slice().reverse());
        node("polygon", { points: outline.map((p) => p.join(",")).join(" "), fill: trace.fillcolor || "rgba(59, 91, 219, 0.15)", stroke: "none" }, body);
      }
      const mode = trace.mode || "lines";
      const lineWidth = trace.line && trace.line.width !== undefined ? trace.line.width : 2;
      const opacity = trace.opacity === undefined ? 1 : trace.opacity;
      if (mode.includes("lines") && lineWidth > 0 && coordinates.length) {
        node("polyline", { points: coordinates.map((p) => p.join(",")).join(" "), fill: "none", stroke: color, "stroke-width": lineWidth, "stroke-linejoin": "round", opacity }, body);
      }
      if ((mode.includes("markers") || coordinates.length === 1) && coordinates.length <= MARKER_LIMIT) {
        const radius = ((trace.marker && trace.marker.size) || 6) / 2;
        for (const [px, py] of coordinates) node("circle", { cx: px, cy: py, r: radius, fill: color, opacity }, body);
      }
      previous = coordinates;
    });
    node("line", { x1: plot.left, x2: plot.right, y1: plot.bottom, y2: plot.bottom, stroke: "#c8ced8" }, svg);

    if (legend) {
      const row = node("g", {}, svg);
      let at = plot.left;
      let line = plot.bottom + 30;
      named.forEach((trace) => {
        const color = (trace.fill && trace.fillcolor) || colorOf(trace, visible.indexOf(trace));
        const label = String(trace.name);
        const room = 30 + label.length * 6.5;
        if (at + room > width - margin.r && at > plot.left) { at = plot.left; line += 18; }
        node("line", { x1: at, x2: at + 20, y1: line - 4, y2: line - 4, stroke: color, "stroke-width": 2 }, row);
        text(label, { x: at + 25, y: line }, row);
        at += room;
      });
    }
    element.appendChild(svg);
    return svg;
  }

  function clear(element) {
    for (const frame of element.querySelectorAll(":scope > svg.first-frame")) frame.remove();
  }

  global.RftFirstFrame = { draw, clear };
})(window);
