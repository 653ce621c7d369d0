// Readiness report charts: best-of-k curve, learning signal per item, tool calls per rollout.
// This script runs before Plotly (see readiness_detail.html): the charts are drawn at once as still
// first frames (first_frame.js), then by Plotly when it has been evaluated.
(function () {
  "use strict";
  const source = document.getElementById("readiness-data");
  if (!source) return;
  const drawn = [];
  function plot(id, traces, layout, config) {
    const element = document.getElementById(id);
    if (!element) return;
    if (window.Plotly) {
      RftFirstFrame.clear(element);
      Plotly.newPlot(element, traces, layout, config);
    } else {
      RftFirstFrame.draw(element, traces, layout);
      drawn.push([element, traces, layout, config]);
    }
  }
  if (!window.Plotly) {
    // Deferred scripts run in order before DOMContentLoaded; Plotly's comes after this one.
    document.addEventListener("DOMContentLoaded", () => {
      for (const [element, traces, layout, config] of drawn.splice(0)) plot(element.id, traces, layout, config);
    }, { once: true });
  }
  const data = JSON.parse(source.textContent);
  const layout = (extra) =>
    Object.assign(
      { margin: { l: 54, r: 12, t: 8, b: 44 }, height: 240, showlegend: false, font: { size: 11 } },
      extra
    );
  const config = { displayModeBar: false, responsive: true };

  const curve = data.bestOfK || [];
  plot(
    "chart-best-of-k",
    [
      {
        x: curve.map((p) => p.k),
        y: curve.map((p) => p.value),
        mode: "lines+markers",
        line: { color: "#3b5bdb" },
        hovertemplate: "best-of-%{x}: %{y:.3f}<extra></extra>",
      },
    ],
    layout({ xaxis: { title: { text: "k (samples)" }, dtick: 1 }, yaxis: { title: { text: "expected best reward" }, rangemode: "tozero" } }),
    config
  );

  // Absent when the report could not measure variance (k = 1): the page says so instead of a chart.
  const zero = data.zeroVariance;
  if (zero) drawSignal(zero);

  function drawSignal(zero) {
  const varies = Math.max(0, 1 - (zero.total || 0));
  const labels = ["varies", "always 0", "always 1", "other constant"];
  const values = [varies, zero.always_0 || 0, zero.always_1 || 0, zero.other || 0];
  plot(
    "chart-zero-variance",
    [
      {
        x: labels,
        y: values,
        type: "bar",
        marker: { color: ["#2f9e44", "#e03131", "#f08c00", "#868e96"] },
        text: values.map((v) => Math.round(v * 100) + "%"),
        textposition: "auto",
        hovertemplate: "%{x}: %{y:.0%}<extra></extra>",
      },
    ],
    layout({ yaxis: { title: { text: "share of items" }, tickformat: ".0%", range: [0, 1] } }),
    config
  );
  }

  const histogram = data.toolCalls || [];
  plot(
    "chart-tool-calls",
    [
      {
        x: histogram.map((h) => h.calls),
        y: histogram.map((h) => h.rollouts),
        type: "bar",
        marker: { color: "#5c7cfa" },
        hovertemplate: "%{x} calls: %{y} rollouts<extra></extra>",
      },
    ],
    layout({ xaxis: { title: { text: "tool calls per rollout" }, dtick: 1 }, yaxis: { title: { text: "rollouts" } } }),
    config
  );
})();
