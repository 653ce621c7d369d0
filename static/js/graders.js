/* The grader form: "Form" / "Grader JSON" tabs and the per-type fieldsets. */
(function () {
  "use strict";

  function showTab(root, name) {
    root.querySelectorAll("[data-tab]").forEach(function (tab) {
      tab.classList.toggle("active", tab.dataset.tab === name);
      tab.setAttribute("aria-selected", tab.dataset.tab === name ? "true" : "false");
    });
    root.querySelectorAll("[data-pane]").forEach(function (pane) {
      pane.hidden = pane.dataset.pane !== name;
    });
  }

  function showType(root, type) {
    root.querySelectorAll(".type-fields").forEach(function (fieldset) {
      var on = fieldset.dataset.type === type;
      fieldset.hidden = !on;
      fieldset.disabled = !on;
    });
    root.querySelectorAll(".type-picker label").forEach(function (label) {
      var input = label.querySelector("input");
      label.classList.toggle("active", input && input.value === type);
    });
  }

  document.addEventListener("click", function (event) {
    var tab = event.target.closest("[data-grader-form] [data-tab]");
    if (tab) {
      showTab(tab.closest("[data-grader-form]"), tab.dataset.tab);
    }
  });

  document.addEventListener("change", function (event) {
    var radio = event.target.closest("[data-grader-form] .type-picker input[type=radio]");
    if (radio && radio.checked) {
      showType(radio.closest("[data-grader-form]"), radio.value);
    }
  });
})();
