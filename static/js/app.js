// Every page: the collapsible main menu on narrow screens, one confirmation before a destructive
// form is sent (`data-confirm` on the form), and times shown in the reader's clock, 24-hour
// (`<time datetime=... data-local="time">`), the same way the live updates write them.
(function () {
  "use strict";

  const toggle = document.getElementById("menu-toggle");
  if (toggle) {
    const bar = toggle.closest(".topbar");
    toggle.addEventListener("click", () => {
      const open = bar.classList.toggle("open");
      toggle.setAttribute("aria-expanded", String(open));
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && bar.classList.contains("open")) {
        bar.classList.remove("open");
        toggle.setAttribute("aria-expanded", "false");
        toggle.focus();
      }
    });
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    const question = form.dataset && form.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);

  // A region that scrolls (a table sideways on a phone, a long list in a bounded box) must be
  // reachable by keyboard.
  function markScrollers() {
    for (const node of document.querySelectorAll("main table, main pre, .table-scroll, .scroll-x, .eventlog")) {
      const style = getComputedStyle(node);
      const scrolls = (node.scrollWidth > node.clientWidth && style.overflowX !== "visible")
        || (node.scrollHeight > node.clientHeight && style.overflowY !== "visible");
      if (scrolls && !node.hasAttribute("tabindex")) {
        node.setAttribute("tabindex", "0");
        node.dataset.scrollFocus = "1";
      } else if (!scrolls && node.dataset.scrollFocus) {
        node.removeAttribute("tabindex");
        delete node.dataset.scrollFocus;
      }
    }
  }
  let scrollTimer = null;
  function soon() {
    if (scrollTimer === null) scrollTimer = setTimeout(() => { scrollTimer = null; markScrollers(); }, 100);
  }
  markScrollers();
  window.addEventListener("resize", soon);
  window.addEventListener("load", markScrollers); // after web fonts and late styles settled
  const main = document.querySelector("main");
  if (main && "MutationObserver" in window) new MutationObserver(soon).observe(main, { childList: true, subtree: true });

  function clockTime(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  }
  window.RftClock = { time: clockTime };
  for (const node of document.querySelectorAll("time[data-local='time']")) {
    const date = new Date(node.getAttribute("datetime"));
    if (!Number.isNaN(date.getTime())) node.textContent = clockTime(date);
  }
})();
