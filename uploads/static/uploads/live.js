// Live modes of the classify page: the camera, drawing, and one-click examples.
// Every answer comes from POST /api/classify (nothing stored); "Capture" / "Keep this drawing"
// store the image through POST /api/predict like an upload. Never more than one request in
// flight. Without JavaScript (or a camera) the upload form does the same job.
(function () {
  "use strict";

  var CAMERA_SCALE = 4;  // frames go as JPEGs of 4x the model's input size: the server resizes
  var CAMERA_MAX_SIDE = 128;
  var CAPTURE_MAX_SIDE = 640;
  var DRAW_DEBOUNCE_MS = 120;
  var STROKE_WIDTH = 22;  // on the 280-pixel canvas: about 2 pixels of the 28-pixel input

  function init() {
    var form = document.querySelector("[data-upload-form]");
    var modelsScript = document.getElementById("live-models");
    if (!form || !modelsScript || !window.fetch || !window.FormData) return;
    var models = {};
    JSON.parse(modelsScript.textContent).forEach(function (m) { models[m.name] = m; });
    var select = form.querySelector('select[name="model"]');
    var modes = form.querySelector("[data-modes]");
    var errorBox = form.querySelector("[data-live-error]");
    var result = form.querySelector("[data-live-result]");
    var resultLabel = form.querySelector("[data-live-label]");
    var resultHeading = form.querySelector("[data-live-heading]");
    var bars = form.querySelector("[data-live-bars]");
    var timing = form.querySelector("[data-live-timing]");
    var saved = form.querySelector("[data-live-saved]");
    var classifyUrl = form.getAttribute("data-classify-url");
    var predictUrl = form.getAttribute("data-predict-url");
    var detailUrl = form.getAttribute("data-detail-url");
    // The camera paces its frames to the server's rate for /api/classify rather than running
    // into it: at least this many ms from one frame's start to the next.
    var frameIntervalMs = parseInt(form.getAttribute("data-live-interval-ms"), 10) || 0;
    var workspace = form.querySelector("[data-workspace]");
    var mode = "upload";
    var camera = null;
    var sketch = null;
    // Round trips (ms) of the answers so far, for the page and for measurements.
    var stats = { answers: 0, roundTrips: [], started: 0 };
    window.liveStats = stats;

    function model() { return models[select.value] || null; }

    // An error stays until the mode that showed it succeeds, or the mode changes.
    var errorOwner = null;
    function showError(message, owner) {
      if (!message && owner && errorOwner !== owner) return;
      errorOwner = message ? owner || null : null;
      errorBox.textContent = message || "";
      errorBox.hidden = !message;
    }

    // --- Modes ---------------------------------------------------------------------------------
    var modeButtons = Array.prototype.slice.call(modes.querySelectorAll("[data-mode]"));
    var panels = Array.prototype.slice.call(form.querySelectorAll("[data-mode-panel]"));
    function button(name) { return modes.querySelector('[data-mode="' + name + '"]'); }

    function setMode(name) {
      if (name !== "camera" && camera) camera.stop();
      mode = name;
      modeButtons.forEach(function (b) {
        b.setAttribute("aria-pressed", String(b.getAttribute("data-mode") === name));
      });
      panels.forEach(function (p) { p.hidden = p.getAttribute("data-mode-panel") !== name; });
      // Camera and drawing keep a column for the answer, so the canvas never moves mid-stroke.
      workspace.classList.toggle("is-live", name !== "upload");
      showError("");
      saved.hidden = true;
      showResult(false);
      if (name === "camera") {
        startCamera();
        // On a phone the camera sits below the form: bring it to the top of the screen.
        if (window.matchMedia && window.matchMedia("(max-width: 859px)").matches) {
          form.querySelector('[data-mode-panel="camera"]').scrollIntoView({ block: "start" });
        }
      }
      if (name === "draw") { sketch = sketch || createSketch(); sketch.redraw(); }
    }

    function refreshModel() {
      var m = model();
      button("draw").hidden = !(m && m.draw);
      if (mode === "draw" && button("draw").hidden) setMode("upload");
      Array.prototype.forEach.call(form.querySelectorAll("[data-examples-for]"), function (strip) {
        strip.hidden = !m || strip.getAttribute("data-examples-for") !== m.name;
      });
      showResult(false);
      if (sketch && mode === "draw") sketch.changed();
    }

    modes.hidden = false;
    if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) button("camera").hidden = false;
    modeButtons.forEach(function (b) {
      b.addEventListener("click", function () { setMode(b.getAttribute("data-mode")); });
    });
    select.addEventListener("change", refreshModel);
    refreshModel();

    // --- Answers -------------------------------------------------------------------------------
    function post(url, blob, filename) {
      var body = new FormData();
      body.append("image", blob, filename);
      body.append("model", select.value);
      return fetch(url, { method: "POST", body: body, credentials: "same-origin" }).then(
        function (response) {
          return response.json().catch(function () { return {}; }).then(function (data) {
            if (!response.ok) {
              var error = new Error(data.error || "The server answered " + response.status + ".");
              error.retryAfter = parseInt(response.headers.get("Retry-After"), 10) || 0;
              throw error;
            }
            return data;
          });
        });
    }

    function showResult(visible) {
      result.hidden = !visible;
      workspace.classList.toggle("has-answer", visible);
    }

    // began: when the frame was taken (performance.now()), so the round trip counts encoding too.
    // wanted (optional): asked when the answer arrives; false drops it (the image is gone).
    function classify(blob, heading, continuous, began, wanted) {
      began = began || performance.now();
      return post(classifyUrl, blob, "frame." + (blob.type === "image/png" ? "png" : "jpg")).then(
        function (answer) {
          if (wanted && !wanted()) return answer;
          var ms = performance.now() - began;
          stats.answers += 1;
          stats.roundTrips.push(ms);
          if (!stats.started) stats.started = began;
          showAnswer(answer, heading, ms, continuous);
          return answer;
        });
    }

    function showAnswer(answer, heading, ms, continuous) {
      showResult(true);
      resultHeading.textContent = heading || "The model sees";
      // The answer in words (the API's answer.headline): "cat", "probably cat", "cat or dog",
      // "Not sure", "None of the classes I know"; a number only beside a sure single answer.
      var words = answer.answer || { verdict: answer.unknown ? "unknown" : "sure", headline: answer.label };
      resultLabel.textContent = words.verdict === "sure"
        ? words.headline + " · " + percent(answer.confidence)
        : words.headline;
      resultLabel.setAttribute("data-verdict", words.verdict);
      bars.textContent = "";
      answer.top_k.slice(0, 3).forEach(function (item, index) {
        var li = document.createElement("li");
        li.className = "bar" + (index === 0 ? " bar-top" : "");
        var label = document.createElement("span");
        label.className = "bar-label";
        label.textContent = item.label;
        var meter = document.createElement("meter");
        meter.className = "bar-meter";
        meter.min = 0;
        meter.max = 1;
        meter.value = item.probability;
        meter.setAttribute("aria-label", item.label + ": " + percent(item.probability));
        var value = document.createElement("span");
        value.className = "bar-value";
        value.textContent = percent(item.probability);
        li.appendChild(label);
        li.appendChild(meter);
        li.appendChild(value);
        bars.appendChild(li);
      });
      timing.textContent = "Round trip " + Math.round(ms) + " ms";
      if (continuous) {
        var recent = stats.roundTrips.slice(-20);
        var mean = recent.reduce(function (a, b) { return a + b; }, 0) / recent.length;
        timing.textContent += " (mean of the last " +
          recent.length + ": " + Math.round(mean) + " ms, " + (1000 / mean).toFixed(1) + " answers/s)";
      }
    }

    function percent(p) { return (100 * p).toFixed(1) + "%"; }

    // Store an image through the API like an upload and link to its result page.
    function keep(blob, filename, trigger) {
      trigger.disabled = true;
      post(predictUrl, blob, filename).then(function (prediction) {
        var link = document.createElement("a");
        link.href = detailUrl.replace("/0/", "/" + prediction.id + "/");
        link.textContent = "Saved: " + prediction.label + " (" + percent(prediction.confidence) + "). Open the result →";
        link.setAttribute("data-saved-link", "");
        saved.textContent = "";
        saved.appendChild(link);
        saved.hidden = false;
      }, function (error) { showError(error.message); }).then(function () { trigger.disabled = false; });
    }

    // --- Camera --------------------------------------------------------------------------------
    var video = form.querySelector("[data-camera]");
    var frameCanvas = document.createElement("canvas");

    function grabFrame(maxSide, type, quality) {
      var w = video.videoWidth;
      var h = video.videoHeight;
      if (!w || !h) return Promise.resolve(null);
      var m = model();
      var side = Math.min(w, h);  // the centre square: the models were trained on squares
      var out = Math.min(maxSide, side);
      if (maxSide === CAMERA_MAX_SIDE && m) out = Math.min(out, Math.max(m.width, m.height) * CAMERA_SCALE);
      frameCanvas.width = out;
      frameCanvas.height = out;
      var context = frameCanvas.getContext("2d");
      context.imageSmoothingQuality = "high";
      context.drawImage(video, (w - side) / 2, (h - side) / 2, side, side, 0, 0, out, out);
      return new Promise(function (resolve) { frameCanvas.toBlob(resolve, type, quality); });
    }

    function startCamera() {
      if (camera) { camera.resume(); return; }
      showError("");
      navigator.mediaDevices.getUserMedia({
        video: { facingMode: "environment", width: { ideal: 640 }, height: { ideal: 480 } },
        audio: false,
      }).then(function (stream) {
        camera = createCamera(stream);
        if (mode === "camera") camera.resume(); else camera.stop();
      }, function (error) {
        var denied = error && (error.name === "NotAllowedError" || error.name === "SecurityError");
        setMode("upload");
        showError(denied
          ? "The camera is blocked for this page. Allow it in the browser's site settings, or upload a photo instead."
          : "No camera was found. Upload a photo instead.");
      });
    }

    function createCamera(stream) {
      var running = false;
      var inFlight = false;
      var timer = null;
      video.srcObject = stream;

      function loop() {
        timer = null;
        if (!running || inFlight) return;
        inFlight = true;
        var began = performance.now();
        grabFrame(CAMERA_MAX_SIDE, "image/jpeg", 0.85).then(function (blob) {
          if (!blob) return null;
          // After "Stop camera" (or a change of mode) an answer on its way is dropped.
          return classify(blob, "The camera sees", true, began, function () { return running; });
        }).then(function () {
          inFlight = false;
          showError("", "camera");
          var pause = Math.max(0, frameIntervalMs - (performance.now() - began));
          if (running) timer = window.setTimeout(loop, pause);
        }, function (error) {
          inFlight = false;
          var wait = error.retryAfter ? error.retryAfter * 1000 : 1000;
          showError(error.retryAfter
            ? "Paused: too many requests from this address. The camera resumes in " + error.retryAfter + " s."
            : error.message, "camera");
          if (running) timer = window.setTimeout(loop, wait);
        });
      }

      return {
        resume: function () {
          if (running) return;
          running = true;
          video.play().catch(function () {});
          if (video.readyState >= 2) loop();
          else video.addEventListener("loadeddata", function () { if (!timer && !inFlight) loop(); }, { once: true });
        },
        stop: function () {
          running = false;
          if (timer) window.clearTimeout(timer);
          timer = null;
          stream.getTracks().forEach(function (track) { track.stop(); });
          camera = null;
        },
      };
    }

    Array.prototype.forEach.call(form.querySelectorAll('[data-mode-panel="camera"] [data-capture]'), function (b) {
      b.addEventListener("click", function () {
        grabFrame(CAPTURE_MAX_SIDE, "image/jpeg", 0.9).then(function (blob) {
          if (blob) keep(blob, "camera-" + new Date().toISOString().slice(0, 19).replace(/:/g, "-") + ".jpg", b);
        });
      });
    });
    form.querySelector("[data-camera-stop]").addEventListener("click", function () { setMode("upload"); });
    window.addEventListener("pagehide", function () { if (camera) camera.stop(); });

    // --- Drawing -------------------------------------------------------------------------------
    function createSketch() {
      var canvas = form.querySelector("[data-sketch]");
      var context = canvas.getContext("2d");
      var strokes = [];
      var current = null;
      var inFlight = false;
      var dirty = false;
      var timer = null;

      function redraw() {
        context.fillStyle = "#000";
        context.fillRect(0, 0, canvas.width, canvas.height);
        context.strokeStyle = "#fff";
        context.fillStyle = "#fff";
        context.lineWidth = STROKE_WIDTH;
        context.lineCap = "round";
        context.lineJoin = "round";
        strokes.forEach(function (points) {
          context.beginPath();
          context.moveTo(points[0][0], points[0][1]);
          points.forEach(function (p) { context.lineTo(p[0], p[1]); });
          if (points.length === 1) context.lineTo(points[0][0] + 0.1, points[0][1]);
          context.stroke();
        });
      }

      function point(event) {
        var box = canvas.getBoundingClientRect();
        return [(event.clientX - box.left) * canvas.width / box.width,
                (event.clientY - box.top) * canvas.height / box.height];
      }

      function changed() {
        if (!strokes.length) { showResult(false); return; }
        dirty = true;
        if (!timer) timer = window.setTimeout(send, DRAW_DEBOUNCE_MS);
      }

      function send() {
        timer = null;
        if (inFlight || !dirty) return;
        dirty = false;
        inFlight = true;
        new Promise(function (resolve) { canvas.toBlob(resolve, "image/png"); }).then(function (blob) {
          // Undo or Clear may empty the canvas while this is on its way: then no answer shows.
          return classify(blob, "Your drawing looks like", false, null,
            function () { return strokes.length > 0; });
        }).then(function () { showError("", "draw"); }, function (error) { showError(error.message, "draw"); }).then(function () {
          inFlight = false;
          if (dirty) changed();
        });
      }

      canvas.addEventListener("pointerdown", function (event) {
        event.preventDefault();
        canvas.setPointerCapture(event.pointerId);
        current = [point(event)];
        strokes.push(current);
        redraw();
        changed();
      });
      canvas.addEventListener("pointermove", function (event) {
        if (!current) return;
        current.push(point(event));
        redraw();
        changed();
      });
      function end() { if (current) { current = null; changed(); } }
      canvas.addEventListener("pointerup", end);
      canvas.addEventListener("pointercancel", end);

      form.querySelector("[data-sketch-undo]").addEventListener("click", function () {
        strokes.pop();
        redraw();
        changed();
      });
      form.querySelector("[data-sketch-clear]").addEventListener("click", function () {
        strokes = [];
        redraw();
        changed();
      });
      form.querySelector('[data-mode-panel="draw"] [data-capture]').addEventListener("click", function (event) {
        var trigger = event.currentTarget;
        if (!strokes.length) { showError("Draw something first."); return; }
        canvas.toBlob(function (blob) { keep(blob, "drawing.png", trigger); }, "image/png");
      });
      return { redraw: redraw, changed: changed };
    }

    // --- Examples ------------------------------------------------------------------------------
    Array.prototype.forEach.call(form.querySelectorAll("[data-example]"), function (b) {
      b.addEventListener("click", function () {
        if (b.disabled) return;
        b.disabled = true;
        Array.prototype.forEach.call(form.querySelectorAll("[data-example]"), function (other) {
          other.setAttribute("aria-pressed", String(other === b));
        });
        fetch(b.getAttribute("data-example")).then(function (response) { return response.blob(); })
          .then(function (blob) {
            return classify(blob, "Example (" + b.getAttribute("data-example-label") + "): the model sees");
          })
          .then(function () { showError("", "example"); }, function (error) { showError(error.message, "example"); })
          .then(function () { b.disabled = false; });
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
