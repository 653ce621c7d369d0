// Live run events over the WebSocket: replay after the last seq we hold, then stream.
// Reconnects with ?after=<last seq> so nothing is lost; duplicates (seq <= last) are dropped.
(function () {
  const log = document.getElementById("event-log");
  if (!log) return;
  const runId = log.dataset.runId;
  const badge = document.getElementById("live-badge");
  const statusBadge = document.getElementById("run-status");
  let lastSeq = 0;
  let retryMs = 500;

  function setLive(live) {
    badge.textContent = live ? "live" : "stale";
    badge.className = "badge " + (live ? "live" : "stale");
  }

  function describe(event) {
    const p = event.payload || {};
    if (event.kind === "metrics") {
      const keys = Object.keys(p.metrics || {});
      const shown = keys.slice(0, 4).map((k) => `${k}=${Number(p.metrics[k]).toPrecision(4)}`).join("  ");
      return `step ${event.step}: ${shown}${keys.length > 4 ? ` (+${keys.length - 4} more)` : ""}`;
    }
    if (event.kind === "status") return `status → ${p.status}${p.error ? ": " + p.error : ""}`;
    if (event.kind === "log") return `[${p.level}] ${p.message}`;
    if (event.kind === "checkpoint") return `checkpoint at step ${event.step}`;
    return event.kind;
  }

  function append(events) {
    for (const event of events) {
      if (event.seq <= lastSeq) continue;
      lastSeq = event.seq;
      const line = document.createElement("div");
      line.dataset.seq = event.seq;
      line.textContent = `#${event.seq}  ${describe(event)}`;
      log.appendChild(line);
      if (event.kind === "status" && statusBadge) {
        statusBadge.textContent = event.payload.status;
        statusBadge.className = "badge " + event.payload.status;
      }
    }
    log.scrollTop = log.scrollHeight;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/runs/${runId}/?after=${lastSeq}`);
    socket.onopen = () => { setLive(true); retryMs = 500; };
    socket.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (frame.type === "events") append(frame.events);
    };
    socket.onclose = (closing) => {
      setLive(false);
      if (closing.code === 4403) { badge.textContent = "forbidden"; return; }
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    };
  }
  connect();
})();
