// Dataset upload: drag and drop onto the drop zone, a progress bar from XMLHttpRequest upload
// events, and the server's answer (a redirect to the dataset page, or field errors) shown in place.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = form.querySelector("input[type=file]");
  const zone = document.getElementById("dropzone");
  const title = document.getElementById("drop-title");
  const detail = document.getElementById("drop-detail");
  const progress = document.getElementById("progress");
  const bar = document.getElementById("progress-bar");
  const label = document.getElementById("progress-label");
  const numbers = document.getElementById("progress-numbers");
  const button = document.getElementById("upload-button");
  const nameInput = form.querySelector("input[name=name]");
  const maxBytes = Number(form.dataset.maxBytes);

  function human(bytes) {
    const units = ["bytes", "KB", "MB", "GB"];
    let value = bytes, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return unit === 0 ? value + " bytes" : value.toFixed(1) + " " + units[unit];
  }

  function showErrors(errors) {
    form.querySelectorAll("[data-errors-for]").forEach((list) => { list.innerHTML = ""; });
    Object.entries(errors || {}).forEach(([field, messages]) => {
      const list = form.querySelector(`[data-errors-for="${field}"]`) || form.querySelector('[data-errors-for="__all__"]');
      messages.forEach((message) => {
        const item = document.createElement("li");
        item.textContent = typeof message === "string" ? message : message.message;
        list.appendChild(item);
      });
    });
  }

  function fileChosen() {
    const file = input.files[0];
    zone.classList.toggle("has-file", Boolean(file));
    if (!file) return;
    title.textContent = file.name;
    detail.textContent = human(file.size) + " · click or drop to choose another file";
    if (nameInput && !nameInput.value) nameInput.placeholder = file.name.replace(/\.jsonl?$/i, "");
    showErrors(file.size > maxBytes ? { file: [`The file is larger than the upload limit of ${human(maxBytes)}.`] } : {});
  }

  input.addEventListener("change", fileChosen);
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("dragover")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      fileChosen();
    }
  });

  // The carve options only apply to a train file, and only one of fraction / count is used.
  const carve = form.querySelector("input[name=carve_eval]");
  const carveBox = document.getElementById("carve-box");
  function syncCarve() {
    const split = form.querySelector("input[name=split]:checked");
    const isTrain = !split || split.value === "train";
    carveBox.classList.toggle("disabled", !isTrain);
    carve.disabled = !isTrain;
    const mode = (form.querySelector("input[name=eval_mode]:checked") || {}).value || "fraction";
    form.querySelectorAll("#carve-options [data-mode]").forEach((node) => {
      node.hidden = node.dataset.mode !== mode;
    });
    form.querySelectorAll("#carve-options input").forEach((node) => { node.disabled = !isTrain || !carve.checked; });
  }
  form.addEventListener("change", syncCarve);
  syncCarve();

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) { showErrors({ file: ["Choose a JSONL file first."] }); return; }
    if (file.size > maxBytes) { fileChosen(); return; }
    showErrors({});
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", form.querySelector("input[name=csrfmiddlewaretoken]").value);
    progress.hidden = false;
    button.disabled = true;
    bar.value = 0;
    label.textContent = "Uploading…";
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      bar.value = (100 * e.loaded) / e.total;
      numbers.textContent = `${human(e.loaded)} of ${human(e.total)} (${Math.floor(bar.value)} %)`;
    });
    xhr.upload.addEventListener("load", () => {
      bar.removeAttribute("value"); // indeterminate while the server checks every line
      label.textContent = "Uploaded. Checking every line…";
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = { errors: { __all__: [`The server answered ${xhr.status}.`] } }; }
      if (body.redirect) { window.location.assign(body.redirect); return; }
      progress.hidden = true;
      button.disabled = false;
      const errors = body.errors || { __all__: [`The server answered ${xhr.status}.`] };
      showErrors(errors);
      if (body.existing_url) {
        const list = form.querySelector('[data-errors-for="file"]');
        const item = document.createElement("li");
        const link = document.createElement("a");
        link.href = body.existing_url;
        link.textContent = "Open the existing dataset";
        item.appendChild(link);
        list.appendChild(item);
      }
    });
    xhr.addEventListener("error", () => {
      progress.hidden = true;
      button.disabled = false;
      showErrors({ __all__: ["The upload failed (connection lost). Try again."] });
    });
    xhr.send(new FormData(form));
  });
})();
