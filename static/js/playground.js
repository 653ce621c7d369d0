// Playground session page: follows /ws/playground/<id>/ and draws both sides as their tokens arrive.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("playground-config").textContent);
  const badge = document.getElementById("playground-status");
  const stopButton = document.getElementById("playground-stop");
  const errorBox = document.getElementById("playground-error");
  const FINISHED = ["succeeded", "stopped", "failed"];
  // Generation-to-page latency of each token (ms), read by bench/bench_playground.py.
  window.playgroundLatencies = [];
  let socket = null;

  const sides = {};
  for (const element of document.querySelectorAll(".pg-side")) {
    sides[element.dataset.side] = {
      element,
      transcript: element.querySelector("[data-transcript]"),
      score: element.querySelector("[data-score]"),
      footer: element.querySelector("[data-footer]"),
      current: null,
      currentText: null,
      tokens: 0,
    };
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(status, error) {
    badge.textContent = status.charAt(0).toUpperCase() + status.slice(1);
    badge.className = "badge " + status;
    document.body.dataset.playgroundStatus = status;
    if (FINISHED.includes(status)) {
      stopButton.closest("form").style.display = "none";  // a button's display beats [hidden]
      for (const side of Object.values(sides)) side.current && side.current.classList.remove("pg-cursor");
    }
    if (error) {
      errorBox.textContent = error;
      errorBox.style.display = "";
    }
  }

  function newTurn(side, label) {
    const turn = el("div", "pg-turn");
    turn.appendChild(el("span", "label", label));
    const text = el("pre", "pg-cursor");
    turn.appendChild(text);
    if (side.current) side.current.classList.remove("pg-cursor");
    side.transcript.appendChild(turn);
    side.current = text;
    side.currentText = text.appendChild(document.createTextNode(""));
  }

  // Scrolling reads the layout: once per frame, not once per token (a forced layout per token made
  // each token of a burst wait for the ones before it).
  let scrollScheduled = false;
  function scrollToEnd() {
    if (scrollScheduled) return;
    scrollScheduled = true;
    requestAnimationFrame(() => {
      scrollScheduled = false;
      for (const side of Object.values(sides)) side.transcript.scrollTop = side.transcript.scrollHeight;
    });
  }

  function showScore(side, score, error) {
    if (score === null || score === undefined) {
      side.score.textContent = error ? "grader error" : "not graded";
      side.score.title = error || "";
      return;
    }
    side.score.textContent = "score " + Number(score).toFixed(3);
    side.score.className = "pg-score" + (score >= 1 ? " full" : score <= 0 ? " zero" : "");
    side.element.dataset.score = String(score);
  }

  function apply(event) {
    if (event.side === "session") {
      if (event.kind === "status") setStatus(event.status, event.error);
      return;
    }
    const side = sides[event.side];
    if (!side) return;
    switch (event.kind) {
      case "loaded":
        side.footer.textContent = "model loaded in " + event.seconds + " s";
        break;
      case "turn":
        newTurn(side, "assistant · turn " + event.turn);
        break;
      case "token": {
        if (!side.current) newTurn(side, "assistant");
        side.currentText.appendData(event.text);  // appends; `textContent +=` rewrote the whole turn
        side.tokens += 1;
        side.element.dataset.tokens = String(side.tokens);
        scrollToEnd();
        window.playgroundLatencies.push(performance.timeOrigin + performance.now() - event.t * 1000);
        break;
      }
      case "tool_call": {
        const box = el("div", "pg-tool");
        box.dataset.callId = event.call_id;
        box.dataset.toolCall = event.name;
        box.appendChild(el("span", "label", "tool call · " + event.name));
        box.appendChild(el("pre", "", event.arguments));
        side.transcript.appendChild(box);
        if (side.current) side.current.classList.remove("pg-cursor");
        side.current = null;
        break;
      }
      case "tool_result": {
        const box = side.transcript.querySelector(`.pg-tool[data-call-id="${CSS.escape(event.call_id)}"]`) || el("div", "pg-tool");
        if (!event.ok) box.classList.add("failed");
        box.appendChild(el("span", "label", event.ok ? "result" : "error (" + (event.error_type || "failed") + ")"));
        const output = el("pre", "pg-tool-output", event.output);
        box.appendChild(output);
        box.dataset.done = "1";
        if (!box.parentNode) side.transcript.appendChild(box);
        break;
      }
      case "graded":
        showScore(side, event.score, event.error);
        break;
      case "done":
        side.element.dataset.finished = event.finish_reason;
        side.footer.textContent = "ended: " + event.finish_reason + " · " + event.tool_calls + " tool call(s)";
        if (side.current) side.current.classList.remove("pg-cursor");
        break;
      case "stopped":
        side.element.dataset.finished = "stopped";
        side.footer.textContent = "stopped";
        if (side.current) side.current.classList.remove("pg-cursor");
        break;
      case "error":
        side.element.dataset.finished = "error";
        side.footer.textContent = "error: " + event.error;
        break;
    }
  }

  function renderResult(result) {
    for (const [name, side] of Object.entries(sides)) {
      const played = (result || {})[name];
      if (!played) {
        side.footer.textContent = "nothing generated";
        continue;
      }
      for (const message of played.messages || []) {
        if (message.role === "system" || message.role === "user") continue;
        if (message.role === "tool") {
          const box = el("div", "pg-tool");
          box.appendChild(el("span", "label", "result"));
          box.appendChild(el("pre", "pg-tool-output", message.content));
          side.transcript.appendChild(box);
        } else {
          newTurn(side, "assistant");
          side.current.textContent = message.raw || message.content || "";
          side.current.classList.remove("pg-cursor");
        }
      }
      showScore(side, played.score, played.grade && played.grade.error);
      side.element.dataset.finished = played.finish_reason || "";
      side.footer.textContent = "ended: " + (played.finish_reason || "—");
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${config.socketPath}`);
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "events") data.events.forEach(apply);
      else if (data.type === "snapshot") {
        renderResult(data.result);
        setStatus(data.status, data.error);
      } else if (data.type === "joined") setStatus(data.status);
      else if (data.type === "stopping") badge.textContent = "Stopping…";
    };
    socket.onclose = () => {
      if (!FINISHED.includes(document.body.dataset.playgroundStatus || "")) {
        errorBox.textContent = "The live connection closed; reload the page to see the result.";
        errorBox.style.display = "";
      }
    };
  }

  document.getElementById("stop-form").addEventListener("submit", (event) => {
    if (socket && socket.readyState === WebSocket.OPEN) {
      event.preventDefault();
      socket.send(JSON.stringify({ type: "stop" }));
    }
  });

  if (FINISHED.includes(config.status)) {
    renderResult(config.result);
    setStatus(config.status);
  } else {
    connect();
  }
})();
