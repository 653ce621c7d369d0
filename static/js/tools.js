/* JSON textareas (a "Format" button and live syntax messages) and the headers editor.
   The JSON editor is shared with the grader pages, which load this file too. */
(function () {
  "use strict";

  function lineAndColumn(text, position) {
    var before = text.slice(0, position);
    var lines = before.split("\n");
    return { line: lines.length, column: lines[lines.length - 1].length + 1 };
  }

  // The browser's message, with "position N" turned into a line and column people can find.
  function describeError(text, error) {
    var message = String(error && error.message ? error.message : error);
    var match = /position (\d+)/.exec(message);
    if (match) {
      var where = lineAndColumn(text, Number(match[1]));
      message = message.replace(/\s*\(line \d+ column \d+\)/, "");
      return message + " (line " + where.line + ", column " + where.column + ")";
    }
    return message;
  }

  function check(textarea, status) {
    var text = textarea.value.trim();
    if (!text) {
      status.textContent = "";
      status.className = "json-status";
      textarea.classList.remove("json-bad");
      return null;
    }
    try {
      var value = JSON.parse(text);
      status.textContent = "✓ valid JSON";
      status.className = "json-status ok";
      textarea.classList.remove("json-bad");
      return value;
    } catch (error) {
      status.textContent = "✗ " + describeError(text, error);
      status.className = "json-status bad";
      textarea.classList.add("json-bad");
      return undefined;
    }
  }

  function initJsonEditor(textarea) {
    if (textarea.dataset.jsonReady) return;
    textarea.dataset.jsonReady = "1";
    var bar = document.createElement("div");
    bar.className = "json-toolbar";
    var button = document.createElement("button");
    button.type = "button";
    button.className = "small";
    button.textContent = "Format";
    button.title = "Check the JSON and indent it";
    var status = document.createElement("span");
    status.className = "json-status";
    status.setAttribute("aria-live", "polite");
    bar.appendChild(button);
    bar.appendChild(status);
    textarea.parentNode.insertBefore(bar, textarea);

    button.addEventListener("click", function () {
      var value = check(textarea, status);
      if (value !== undefined && value !== null) {
        textarea.value = JSON.stringify(value, null, 2);
        // Let listeners (the live schema check) see the new text.
        textarea.dispatchEvent(new Event("input", { bubbles: true }));
      }
    });
    var timer = null;
    textarea.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { check(textarea, status); }, 250);
    });
    // Tab inserts two spaces instead of leaving the editor.
    textarea.addEventListener("keydown", function (event) {
      if (event.key === "Tab" && !event.shiftKey && !event.ctrlKey && !event.metaKey) {
        event.preventDefault();
        var start = textarea.selectionStart;
        textarea.setRangeText("  ", start, textarea.selectionEnd, "end");
      }
    });
    if (textarea.value.trim()) check(textarea, status);
  }

  function init(root) {
    (root || document).querySelectorAll("textarea[data-json-editor]").forEach(initJsonEditor);
  }

  document.addEventListener("click", function (event) {
    var add = event.target.closest("[data-add-header]");
    if (add) {
      var rows = add.closest(".headers-editor").querySelector(".header-rows");
      var template = rows.querySelector(".header-row");
      var row = template.cloneNode(true);
      row.querySelectorAll("input").forEach(function (input) {
        input.value = "";
        if (input.name === "header_value") input.placeholder = "value";
      });
      rows.appendChild(row);
      row.querySelector("input").focus();
      return;
    }
    var remove = event.target.closest("[data-remove-header]");
    if (remove) {
      var row2 = remove.closest(".header-row");
      var all = row2.parentNode.querySelectorAll(".header-row");
      if (all.length > 1) {
        row2.remove();
      } else {
        row2.querySelectorAll("input").forEach(function (input) {
          input.value = "";
          if (input.name === "header_value") input.placeholder = "value";
        });
      }
    }
  });

  window.rftJsonEditors = { init: init };
  if (window.htmx) {
    window.htmx.onLoad(init);
  } else {
    document.addEventListener("DOMContentLoaded", function () { init(document); });
  }
})();
