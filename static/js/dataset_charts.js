// Dataset page: message-count and length histograms from the precomputed bins (Plotly, vendored).
(function () {
  "use strict";
  const source = document.getElementById("dataset-charts");
  if (!source || !window.Plotly) return;
  const charts = JSON.parse(source.textContent);
  const draw = (elementId, chart, xTitle, color) => {
    const element = document.getElementById(elementId);
    if (!element) return;
    const trace = {
      type: "bar",
      x: chart.x,
      y: chart.y,
      width: chart.x.map(() => chart.width * 0.92),
      marker: { color },
      hovertemplate: chart.width === 1 ? "%{x:.0f}: %{y} items<extra></extra>"
        : `%{x} ± ${chart.width / 2}: %{y} items<extra></extra>`,
    };
    const layout = {
      title: { text: chart.title, font: { size: 14 } },
      margin: { l: 50, r: 16, t: 40, b: 44 },
      xaxis: { title: { text: xTitle }, rangemode: "tozero" },
      yaxis: { title: { text: "items" }, rangemode: "tozero" },
      bargap: 0,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
    };
    window.Plotly.newPlot(element, [trace], layout, { displaylogo: false, responsive: true });
  };
  draw("chart-messages", charts.messages, "messages in the item", "#3b5bdb");
  draw("chart-chars", charts.chars, "characters of message text", "#2b8a3e");
})();
