// The new-run form: the model path box only when "Another model…" is chosen, and a field with an
// error inside a closed section opens that section.
(function () {
  "use strict";
  const choice = document.getElementById("id_base_model_choice");
  const custom = document.querySelector('[data-field="base_model_custom"]');
  if (choice && custom) {
    const input = custom.querySelector("input");
    const update = () => {
      const shown = choice.value === "custom";
      custom.hidden = !shown;
      if (input) input.required = shown;
    };
    choice.addEventListener("change", () => { update(); if (choice.value === "custom" && input) input.focus(); });
    update();
  }
  for (const field of document.querySelectorAll("#run-form details .has-error")) field.closest("details").open = true;
})();
