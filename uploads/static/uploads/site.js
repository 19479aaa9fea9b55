// Progressive enhancement of the upload form: drag and drop, paste, several files, previews.
// Without JavaScript the plain file input and submit button do the same job.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function init() {
    var form = document.querySelector("[data-upload-form]");
    if (!form) return;
    var input = form.querySelector('input[type="file"]');
    var zone = form.querySelector("[data-dropzone]");
    var list = form.querySelector("[data-previews]");
    var submit = form.querySelector("[data-submit]");
    var clientError = form.querySelector("[data-client-error]");
    var maxFiles = parseInt(form.getAttribute("data-max-files"), 10) || 10;
    var urls = [];
    if (!input || typeof DataTransfer === "undefined") return;

    function showError(message) {
      clientError.textContent = message;
      clientError.hidden = !message;
    }

    var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10) || 0;
    function megabytes(bytes) { return (bytes / 1000000).toFixed(1) + " MB"; }

    // Checked here before anything is sent (the server checks again): each skipped file is
    // named with its reason.
    function setFiles(files) {
      var transfer = new DataTransfer();
      var skipped = [];
      Array.prototype.forEach.call(files, function (file) {
        if (!file.type || file.type.indexOf("image/") !== 0) {
          skipped.push(file.name + " (not an image)");
        } else if (maxBytes && file.size > maxBytes) {
          skipped.push(file.name + " (" + megabytes(file.size) + ", over the " + megabytes(maxBytes) + " limit)");
        } else if (transfer.items.length >= maxFiles) {
          skipped.push(file.name + " (at most " + maxFiles + " files at once)");
        } else {
          transfer.items.add(file);
        }
      });
      input.files = transfer.files;
      showError(skipped.length ? "Skipped: " + skipped.join("; ") + "." : "");
      render();
    }

    function render() {
      urls.forEach(URL.revokeObjectURL);
      urls = [];
      list.textContent = "";
      Array.prototype.forEach.call(input.files, function (file, index) {
        var item = document.createElement("li");
        item.className = "preview";
        var img = document.createElement("img");
        var url = URL.createObjectURL(file);
        urls.push(url);
        img.src = url;
        img.alt = "";
        var name = document.createElement("span");
        name.className = "name";
        name.textContent = file.name;
        var remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "×";
        remove.setAttribute("aria-label", "Remove " + file.name);
        remove.addEventListener("click", function () {
          setFiles(Array.prototype.filter.call(input.files, function (_, i) { return i !== index; }));
          input.focus();
        });
        item.append(img, name, remove);
        if (window.imageEditor) item.appendChild(editButton(file, index));
        list.appendChild(item);
      });
    }

    // "Edit" opens the editor (editor.js) on one file; the edited file takes its place.
    function editButton(file, index) {
      var edit = document.createElement("button");
      edit.type = "button";
      edit.className = "preview-edit";
      edit.textContent = "Edit";
      edit.setAttribute("data-edit-index", String(index));
      edit.setAttribute("aria-label", "Rotate, crop or invert " + file.name);
      edit.addEventListener("click", function () { editFile(index, {}); });
      return edit;
    }

    function editFile(index, options) {
      window.imageEditor.open(input.files[index], options, function (edited) {
        if (edited) {
          var files = Array.from(input.files);
          files[index] = edited;
          setFiles(files);
        }
        var again = list.querySelector('[data-edit-index="' + index + '"]');
        if (again) again.focus();
      });
    }

    // A result page's "Invert it and classify again" link: /?edit=<its image>&invert=1 loads
    // that image (same site only) into the editor, inverted, ready to classify.
    function editFromLink() {
      var params = new URLSearchParams(window.location.search);
      var source = params.get("edit");
      if (!source) return;
      var url = new URL(source, window.location.href);
      if (url.origin !== window.location.origin) return;
      var select = form.querySelector('select[name="model"]');
      var model = params.get("model");
      if (select && model && select.querySelector('option[value="' + CSS.escape(model) + '"]')) {
        select.value = model;
        select.dispatchEvent(new Event("change", {bubbles: true}));
      }
      fetch(url.href, {credentials: "same-origin"}).then(function (response) {
        if (!response.ok) throw new Error(response.status);
        return response.blob();
      }).then(function (blob) {
        var name = params.get("name") || url.pathname.split("/").pop() || "image";
        setFiles([new File([blob], name, {type: blob.type})]);
        function openIt() { editFile(0, {invert: params.get("invert") === "1"}); }
        if (window.imageEditor) openIt();
        else document.addEventListener("image-editor-ready", openIt, {once: true});
      }).catch(function () {
        showError("That image could not be loaded here; choose it again.");
      });
    }

    input.addEventListener("change", function () { setFiles(input.files); });

    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.add("is-dragover");
      });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.remove("is-dragover");
      });
    });
    zone.addEventListener("drop", function (event) {
      if (event.dataTransfer && event.dataTransfer.files.length) {
        setFiles(Array.from(input.files).concat(Array.from(event.dataTransfer.files)));
      }
    });
    document.addEventListener("paste", function (event) {
      var files = event.clipboardData ? Array.from(event.clipboardData.files) : [];
      if (!files.length) return;
      event.preventDefault();
      setFiles(Array.from(input.files).concat(files));
    });

    form.addEventListener("submit", function (event) {
      if (!input.files.length) {
        event.preventDefault();
        showError("Choose an image to classify.");
        input.focus();
        return;
      }
      submit.disabled = true;
      submit.textContent = "Classifying…";
      form.setAttribute("aria-busy", "true");
    });
    document.addEventListener("image-editor-ready", render);
    editFromLink();
    // Coming back with the browser's back button: re-enable the form.
    window.addEventListener("pageshow", function () {
      submit.disabled = false;
      submit.textContent = "Classify";
      form.removeAttribute("aria-busy");
    });
  }

  // The saliency overlay: fetched on the first toggle only (it is computed on request).
  function initSaliency() {
    var toggle = document.querySelector("[data-saliency-toggle]");
    var overlay = document.querySelector("[data-saliency-image]");
    if (!toggle || !overlay) return;
    toggle.checked = false;
    toggle.addEventListener("change", function () {
      if (toggle.checked && !overlay.getAttribute("src")) {
        overlay.setAttribute("src", overlay.getAttribute("data-src"));
      }
      overlay.hidden = !toggle.checked;
    });
  }

  // "Copy share link": the link is already shown in a read-only input; the button copies it.
  function initShare() {
    var input = document.querySelector("[data-share-link]");
    var button = document.querySelector("[data-copy-share]");
    var status = document.querySelector("[data-copy-status]");
    if (!input || !button) return;
    button.hidden = false;
    input.addEventListener("focus", function () { input.select(); });
    button.addEventListener("click", function () {
      function copied() { status.textContent = "Link copied."; }
      function failed() { input.select(); status.textContent = "Press Ctrl+C (or Cmd+C) to copy the selected link."; }
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(input.value).then(copied, failed);
      } else {
        failed();
      }
    });
  }

  // After a vote the page comes back at #feedback-status: focus it, so a screen reader reads
  // the confirmation and the form is in view.
  function focusFeedbackStatus() {
    if (window.location.hash !== "#feedback-status") return;
    var status = document.getElementById("feedback-status");
    if (status) status.focus();
  }

  // Errors the server reports about a batch (files it could not classify) are announced and
  // focused, so they are seen even below the fold.
  function focusErrors() {
    var errors = document.querySelector("[data-focus-on-load]");
    if (errors) errors.focus();
  }

  function start() {
    focusErrors();
    focusFeedbackStatus();
    init();
    initSaliency();
    initShare();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
