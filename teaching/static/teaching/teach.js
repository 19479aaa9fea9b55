// The teach page: live training progress (polling the JSON status), adding examples by drag
// and drop, the camera or a drawing (as the classify page's camera and drawing do). Without
// JavaScript the forms post and the page shows the status when reloaded.
(function () {
  "use strict";
  var POLL_MS = 1000;
  var SIDE = 280;  // the canvas; a drawing's stroke is about 2 pixels of a 28-pixel input
  var STROKE_WIDTH = 22;
  var CHUNK = 5;  // images per request when adding many

  function init() {
    var panel = document.querySelector("[data-teach]");
    if (!panel) return;
    var statusUrl = panel.getAttribute("data-status-url");
    if (statusUrl && panel.querySelector("[data-cancel-form]:not([hidden])")) poll(panel, statusUrl);
    Array.prototype.forEach.call(document.querySelectorAll("[data-add-examples]"), setUpAdding);
  }

  function poll(panel, url) {
    var box = panel.querySelector("[data-job-status]");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          var job = data.job;
          if (!job) return;
          var label = box.querySelector("[data-job-label]");
          var phase = box.querySelector("[data-job-phase]");
          var bar = box.querySelector("[data-job-progress]");
          var left = box.querySelector("[data-job-left]");
          if (label) label.textContent = job.status_label;
          if (phase) phase.textContent = !job.active ? "" : job.phase + (job.steps ? " (step " + job.step + " of " + job.steps + ")" : "");
          if (bar && job.steps) { bar.max = job.steps; bar.value = job.step; }
          if (left) left.textContent = job.seconds_left !== null ? "About " + job.seconds_left + " s left" : "";
          if (job.active) { setTimeout(tick, POLL_MS); } else { window.location.reload(); }
        }, function () { setTimeout(tick, 5 * POLL_MS); });
    }
    setTimeout(tick, POLL_MS);
  }

  function setUpAdding(form) {
    var error = form.querySelector("[data-add-error]");
    var input = form.querySelector('input[type="file"]');
    var zone = form.querySelector("[data-dropzone]");
    var token = form.querySelector('input[name="csrfmiddlewaretoken"]').value;

    function send(files, source) {
      var data = new FormData();
      data.append("source", source);
      files.forEach(function (f, i) { data.append("images", f, f.name || ("example-" + i + ".png")); });
      error.hidden = true;
      return fetch(form.action, {
        method: "POST", body: data, credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": token }
      }).then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body.error || "The examples were not added.");
          return body;
        });
      }).catch(function (e) { error.textContent = e.message; error.hidden = false; error.focus(); throw e; });
    }

    // Many photos go a few at a time: each request stays within the server's pixel budget.
    function sendAll(files) {
      var chain = Promise.resolve();
      for (var i = 0; i < files.length; i += CHUNK) {
        (function (part) { chain = chain.then(function () { return send(part, "upload"); }); })(files.slice(i, i + CHUNK));
      }
      return chain.then(function () { window.location.reload(); }, function () {});
    }
    form.addEventListener("submit", function (e) {
      var files = Array.prototype.slice.call(input.files);
      if (!files.length || !window.fetch) return;  // the browser says "choose a file"
      e.preventDefault();
      sendAll(files);
    });
    zone.addEventListener("dragover", function (e) { e.preventDefault(); zone.classList.add("dragging"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("dragging"); });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      zone.classList.remove("dragging");
      var files = Array.prototype.slice.call(e.dataTransfer.files);
      if (files.length) sendAll(files);
    });

    var live = form.querySelector("[data-live]");
    var video = form.querySelector("[data-video]");
    var canvas = form.querySelector("[data-canvas]");
    var clear = form.querySelector("[data-clear]");
    var added = 0, stream = null, mode = null;
    var cameraButton = form.querySelector("[data-camera-button]");
    var drawButton = form.querySelector("[data-draw-button]");
    if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) cameraButton.hidden = false;

    function open(which) {
      mode = which;
      live.hidden = false;
      video.hidden = which !== "camera";
      canvas.hidden = which !== "drawing";
      clear.hidden = which !== "drawing";
      if (which === "drawing") wipe();
      live.querySelector("[data-capture]").focus();
    }
    function close() {
      if (stream) { stream.getTracks().forEach(function (t) { t.stop(); }); stream = null; }
      live.hidden = true;
      if (added) window.location.reload();
    }
    function wipe() {
      var ctx = canvas.getContext("2d");
      ctx.fillStyle = "#000"; ctx.fillRect(0, 0, SIDE, SIDE);
    }
    cameraButton.addEventListener("click", function () {
      navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false })
        .then(function (s) { stream = s; video.srcObject = s; video.play(); open("camera"); },
          function () { error.textContent = "The camera is blocked or missing; upload images instead."; error.hidden = false; });
    });
    if (drawButton) drawButton.addEventListener("click", function () { open("drawing"); });
    clear.addEventListener("click", wipe);
    live.querySelector("[data-close]").addEventListener("click", close);
    live.querySelector("[data-capture]").addEventListener("click", function () {
      var source = mode === "camera" ? video : canvas;
      var out = document.createElement("canvas");
      var w = mode === "camera" ? video.videoWidth : SIDE, h = mode === "camera" ? video.videoHeight : SIDE;
      if (!w || !h) return;
      var scale = Math.min(1, 640 / Math.max(w, h));
      out.width = Math.round(w * scale); out.height = Math.round(h * scale);
      out.getContext("2d").drawImage(source, 0, 0, out.width, out.height);
      out.toBlob(function (blob) {
        blob.name = mode + ".png";
        send([new File([blob], mode + ".png", { type: "image/png" })], mode).then(function (body) {
          added += 1;
          var count = form.closest("[data-class]").querySelector("[data-count]");
          if (count) count.textContent = body.count + " examples";
          if (mode === "drawing") wipe();
        }, function () {});
      }, "image/png");
    });

    // Drawing: white strokes on black, as the dark-background datasets are.
    var drawing = false;
    function point(e) {
      var r = canvas.getBoundingClientRect();
      return [(e.clientX - r.left) * SIDE / r.width, (e.clientY - r.top) * SIDE / r.height];
    }
    canvas.addEventListener("pointerdown", function (e) {
      drawing = true; canvas.setPointerCapture(e.pointerId);
      var ctx = canvas.getContext("2d"), p = point(e);
      ctx.strokeStyle = "#fff"; ctx.lineWidth = STROKE_WIDTH; ctx.lineCap = "round"; ctx.lineJoin = "round";
      ctx.beginPath(); ctx.moveTo(p[0], p[1]);
    });
    canvas.addEventListener("pointermove", function (e) {
      if (!drawing) return;
      var ctx = canvas.getContext("2d"), p = point(e);
      ctx.lineTo(p[0], p[1]); ctx.stroke();
    });
    canvas.addEventListener("pointerup", function () { drawing = false; });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
