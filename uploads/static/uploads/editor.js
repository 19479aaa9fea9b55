// Rotate, crop and invert one chosen image before it is sent (a canvas, in the browser). The
// edited pixels replace the file in the form, so what is classified is what the editor shows.
// Keyboard: every action is a button, the crop is four number inputs; a pointer (mouse, pen,
// finger) can also drag the crop rectangle on the picture.
(function () {
  "use strict";

  var VIEW_SIDE = 360; // the picture's longer side on screen, in canvas pixels
  var MAX_OUTPUT_SIDE = 2048; // larger edits are scaled down (the server keeps 1024 at most)
  var JPEG_QUALITY = 0.92;

  function clamp(value, low, high) { return Math.min(Math.max(value, low), high); }

  function createEditor(root) {
    var canvas = root.querySelector("[data-editor-canvas]");
    var context = canvas.getContext("2d");
    var title = root.querySelector("[data-editor-name]");
    var heading = root.querySelector("[data-editor-heading]");
    var status = root.querySelector("[data-editor-status]");
    var invertButton = root.querySelector("[data-editor-invert]");
    var inputs = {};
    ["x", "y", "width", "height"].forEach(function (key) {
      inputs[key] = root.querySelector('[data-crop="' + key + '"]');
    });
    var state = null; // {file, image, rotation, inverted, crop: {x, y, width, height}, done}
    var drag = null;
    var scale = 1;

    function rotatedSize() {
      var w = state.image.naturalWidth, h = state.image.naturalHeight;
      return state.rotation % 180 === 0 ? {width: w, height: h} : {width: h, height: w};
    }

    // Draws the source turned clockwise by state.rotation into a rotatedSize() box at `factor`.
    function drawRotated(ctx, factor) {
      var size = rotatedSize();
      ctx.save();
      ctx.scale(factor, factor);
      if (state.rotation === 90) { ctx.translate(size.width, 0); ctx.rotate(Math.PI / 2); }
      else if (state.rotation === 180) { ctx.translate(size.width, size.height); ctx.rotate(Math.PI); }
      else if (state.rotation === 270) { ctx.translate(0, size.height); ctx.rotate(-Math.PI / 2); }
      ctx.drawImage(state.image, 0, 0);
      ctx.restore();
    }

    function invertPixels(ctx, width, height) {
      var data = ctx.getImageData(0, 0, width, height);
      var pixels = data.data;
      for (var i = 0; i < pixels.length; i += 4) {
        pixels[i] = 255 - pixels[i];
        pixels[i + 1] = 255 - pixels[i + 1];
        pixels[i + 2] = 255 - pixels[i + 2];
      }
      ctx.putImageData(data, 0, 0);
    }

    function describe() {
      var parts = [state.crop.width + " × " + state.crop.height + " pixels"];
      if (state.rotation) parts.push("turned " + state.rotation + "° clockwise");
      if (state.inverted) parts.push("colours inverted");
      return "The image to classify: " + parts.join(", ") + ".";
    }

    function draw() {
      var size = rotatedSize();
      scale = VIEW_SIDE / Math.max(size.width, size.height);
      canvas.width = Math.max(1, Math.round(size.width * scale));
      canvas.height = Math.max(1, Math.round(size.height * scale));
      context.imageSmoothingEnabled = scale < 1;
      drawRotated(context, scale);
      if (state.inverted) invertPixels(context, canvas.width, canvas.height);
      var c = state.crop;
      var x = c.x * scale, y = c.y * scale, w = c.width * scale, h = c.height * scale;
      context.fillStyle = "rgba(0, 0, 0, 0.55)";
      context.fillRect(0, 0, canvas.width, y);
      context.fillRect(0, y + h, canvas.width, canvas.height - y - h);
      context.fillRect(0, y, x, h);
      context.fillRect(x + w, y, canvas.width - x - w, h);
      context.lineWidth = 2;
      context.strokeStyle = "#fff";
      context.setLineDash([6, 4]);
      context.strokeRect(x + 1, y + 1, Math.max(0, w - 2), Math.max(0, h - 2));
      context.setLineDash([]);
      canvas.setAttribute("aria-label", describe());
      status.textContent = describe();
    }

    function showCrop() {
      var size = rotatedSize();
      inputs.x.max = size.width - 1;
      inputs.y.max = size.height - 1;
      inputs.width.max = size.width;
      inputs.height.max = size.height;
      ["x", "y", "width", "height"].forEach(function (key) { inputs[key].value = state.crop[key]; });
    }

    function setCrop(crop) {
      var size = rotatedSize();
      var x = clamp(Math.round(crop.x) || 0, 0, size.width - 1);
      var y = clamp(Math.round(crop.y) || 0, 0, size.height - 1);
      state.crop = {
        x: x,
        y: y,
        width: clamp(Math.round(crop.width) || 1, 1, size.width - x),
        height: clamp(Math.round(crop.height) || 1, 1, size.height - y),
      };
      showCrop();
      draw();
    }

    function wholeImage() {
      var size = rotatedSize();
      setCrop({x: 0, y: 0, width: size.width, height: size.height});
    }

    function rotate(degrees) {
      state.rotation = (state.rotation + degrees + 360) % 360;
      wholeImage(); // a crop drawn on the old orientation means nothing on the new one
    }

    function setInverted(inverted) {
      state.inverted = inverted;
      invertButton.setAttribute("aria-pressed", String(inverted));
      draw();
    }

    // The picture's pixel under a pointer event, in the rotated image's coordinates.
    function pointAt(event) {
      var box = canvas.getBoundingClientRect();
      var size = rotatedSize();
      return {
        x: clamp(((event.clientX - box.left) / box.width) * size.width, 0, size.width),
        y: clamp(((event.clientY - box.top) / box.height) * size.height, 0, size.height),
      };
    }

    canvas.addEventListener("pointerdown", function (event) {
      if (!state) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      drag = pointAt(event);
    });
    canvas.addEventListener("pointermove", function (event) {
      if (!drag) return;
      var point = pointAt(event);
      var x0 = Math.floor(Math.min(drag.x, point.x)), y0 = Math.floor(Math.min(drag.y, point.y));
      var x1 = Math.ceil(Math.max(drag.x, point.x)), y1 = Math.ceil(Math.max(drag.y, point.y));
      if (x1 - x0 >= 1 && y1 - y0 >= 1) setCrop({x: x0, y: y0, width: x1 - x0, height: y1 - y0});
    });
    function endDrag() { drag = null; }
    canvas.addEventListener("pointerup", endDrag);
    canvas.addEventListener("pointercancel", endDrag);

    Object.keys(inputs).forEach(function (key) {
      inputs[key].addEventListener("change", function () {
        var crop = {};
        Object.keys(inputs).forEach(function (k) { crop[k] = parseFloat(inputs[k].value); });
        setCrop(crop);
      });
    });
    root.querySelectorAll("[data-editor-rotate]").forEach(function (button) {
      button.addEventListener("click", function () {
        rotate(parseInt(button.getAttribute("data-editor-rotate"), 10));
      });
    });
    invertButton.addEventListener("click", function () { setInverted(!state.inverted); });
    root.querySelector("[data-editor-reset]").addEventListener("click", wholeImage);
    root.querySelector("[data-editor-cancel]").addEventListener("click", function () { close(null); });
    root.querySelector("[data-editor-apply]").addEventListener("click", function () {
      exportFile().then(close, function () {
        status.textContent = "The edited image could not be made; the original is kept.";
      });
    });
    root.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && state) { event.preventDefault(); close(null); }
    });

    // The crop of the rotated (and inverted) image at full resolution, as a file like the original.
    function exportFile() {
      var c = state.crop;
      var factor = Math.min(1, MAX_OUTPUT_SIDE / Math.max(c.width, c.height));
      var out = document.createElement("canvas");
      out.width = Math.max(1, Math.round(c.width * factor));
      out.height = Math.max(1, Math.round(c.height * factor));
      var ctx = out.getContext("2d");
      ctx.imageSmoothingEnabled = factor < 1;
      ctx.scale(factor, factor);
      ctx.translate(-c.x, -c.y);
      drawRotated(ctx, 1);
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      if (state.inverted) invertPixels(ctx, out.width, out.height);
      var jpeg = state.file.type === "image/jpeg";
      var type = jpeg ? "image/jpeg" : "image/png";
      var stem = state.file.name.replace(/\.[^.]*$/, "") || "image";
      var name = stem + "-edited." + (jpeg ? "jpg" : "png");
      return new Promise(function (resolve, reject) {
        out.toBlob(function (blob) {
          if (blob) resolve(new File([blob], name, {type: type}));
          else reject(new Error("toBlob gave nothing"));
        }, type, JPEG_QUALITY);
      });
    }

    function close(edited) {
      var done = state && state.done;
      if (state) URL.revokeObjectURL(state.image.src);
      state = null;
      drag = null;
      root.hidden = true;
      if (done) done(edited);
    }

    // Opens the editor on `file`; `done(file)` gets the edited file, or null when cancelled.
    function open(file, options, done) {
      if (state) close(null);
      var image = new Image();
      image.onload = function () {
        state = {file: file, image: image, rotation: 0, inverted: false, done: done};
        title.textContent = file.name;
        root.hidden = false;
        wholeImage();
        setInverted(Boolean(options && options.invert));
        heading.focus();
        root.scrollIntoView({block: "start"});
      };
      image.onerror = function () {
        URL.revokeObjectURL(image.src);
        if (done) done(null);
      };
      image.src = URL.createObjectURL(file);
    }

    return {open: open, close: function () { close(null); }};
  }

  function start() {
    var root = document.querySelector("[data-editor]");
    if (root && root.querySelector("[data-editor-canvas]").getContext) {
      window.imageEditor = createEditor(root);
      document.dispatchEvent(new CustomEvent("image-editor-ready"));
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
