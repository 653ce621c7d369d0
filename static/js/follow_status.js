// Pages of work a worker does (a readiness report, a grader audit): while it is queued or running,
// ask the API for its status now and then, and reload the page when the status changes, so the
// results appear without the user reloading.
(function () {
  "use strict";
  const node = document.querySelector("[data-follow-status]");
  if (!node) return;
  const url = node.dataset.followStatus;
  const shown = node.dataset.status;
  let waitMs = 2000;

  async function check() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const body = await response.json();
        if (body.status && body.status !== shown) {
          location.reload();
          return;
        }
      }
    } catch (error) {
      // The server is away for a moment: ask again later.
    }
    waitMs = Math.min(waitMs * 1.25, 10000);
    setTimeout(check, waitMs);
  }

  setTimeout(check, waitMs);
})();
