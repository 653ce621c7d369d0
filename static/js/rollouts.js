// The rollout table's filters apply as soon as a choice changes. A new split has other steps:
// its latest step is chosen by the server, so the old step is dropped.
(function () {
  "use strict";
  const form = document.getElementById("rollout-filters");
  if (!form) return;
  for (const field of form.querySelectorAll("select, input[name=step]")) {
    field.addEventListener("change", () => {
      if (field.name === "split") form.elements.step.disabled = true;
      form.requestSubmit();
    });
  }
  // Empty fields stay out of the URL, so shared links are short and the server's defaults apply.
  form.addEventListener("formdata", (event) => {
    for (const [name, value] of [...event.formData.entries()]) {
      if (value === "" && name !== "step") event.formData.delete(name);
    }
  });
})();
