"""Drawing for research.evaluate and research.calibrate: the confusion-matrix, reliability and
risk-coverage PNGs. Pillow only, no JAX.

The numbers come from research.evaluate (or train.evaluate_model); this module only lays them
out, so evaluation can be read and tested without the drawing, and the drawing without a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Cell side (pixels) and font size for up to CLASSES_AT_FULL_SIZE classes; shrunk beyond.
PNG_CELL = 44
PNG_FONT_SIZE = 14
CLASSES_AT_FULL_SIZE = 20
# Cells narrower than this show only their shade, not their count.
MIN_LABELLED_CELL = 24
NAVY = (8, 48, 107)  # the colour of a cell holding its whole row
GRID = (220, 220, 220)


def _sizes(num_classes: int) -> tuple[int, int]:
    """(cell side, font size): full size up to 20 classes, then shrunk to keep the image small."""
    if num_classes <= CLASSES_AT_FULL_SIZE:
        return PNG_CELL, PNG_FONT_SIZE
    cell = max(8, PNG_CELL * CLASSES_AT_FULL_SIZE // num_classes)
    font_size = max(8, PNG_FONT_SIZE * CLASSES_AT_FULL_SIZE // num_classes + 2)
    return cell, font_size


def _fonts(font_size: int) -> tuple[ImageFont.FreeTypeFont, ImageFont.FreeTypeFont]:
    """Pillow's bundled font (no system fonts needed): for labels, and smaller for counts."""
    return ImageFont.load_default(size=font_size), ImageFont.load_default(
        size=max(8, font_size - 3)
    )


def _shade(share: float) -> tuple[int, int, int]:
    """White for an empty cell to navy for one holding its whole row."""
    return tuple(int(255 - share * (255 - c)) for c in NAVY)


def render_confusion(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Image.Image:
    """A confusion-matrix image: rows are true classes, columns predicted ones, each cell
    shaded by its share of the row and labelled with its count."""
    confusion = np.asarray(confusion)
    n = len(class_names)
    cell, font_size = _sizes(n)
    font, small = _fonts(font_size)
    label_w = int(max(font.getlength(name) for name in class_names)) + 12
    top, margin = label_w + 2 * font_size + 28, font_size + 12
    left = label_w + margin
    size = (max(left + n * cell, int(font.getlength(title)) + 8) + 10, top + n * cell + margin)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black", font=font)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    for i in range(n):
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            draw.rectangle(
                [x, y, x + cell - 1, y + cell - 1], fill=_shade(shares[i, j]), outline=GRID
            )
            if cell >= MIN_LABELLED_CELL and confusion[i, j]:
                fill = "white" if shares[i, j] > 0.5 else "black"
                center = (x + cell / 2, y + cell / 2)
                draw.text(center, str(confusion[i, j]), fill=fill, font=small, anchor="mm")
    for k, name in enumerate(class_names):  # row labels, then column labels rotated
        y = top + k * cell + cell / 2
        draw.text((left - 6, y), name, fill="black", font=font, anchor="rm")
        text = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(text).text((6, cell / 2), name, fill="black", font=font, anchor="lm")
        image.paste(text.rotate(90, expand=True), (left + k * cell, top - label_w))
    draw.text(
        (left + n * cell / 2, top - label_w - 4), "predicted", fill="black", font=font, anchor="mb"
    )
    axis = Image.new("RGB", (n * cell, margin), "white")
    ImageDraw.Draw(axis).text(
        (n * cell / 2, margin / 2), "true", fill="black", font=font, anchor="mm"
    )
    image.paste(axis.rotate(90, expand=True), (4, top))
    return image


# Reliability diagram: plot side (pixels), and the colours of the bars before and after.
RELIABILITY_SIDE = 320
BEFORE = (230, 120, 60)
AFTER = (8, 48, 107)


def render_reliability(
    before: dict[str, Sequence], after: dict[str, Sequence], title: str, *, temperature: float
) -> Image.Image:
    """A reliability diagram: per equal-width confidence bin (research.serving.calibration's
    reliability_bins: edges, count, confidence, accuracy), the bin's accuracy as a bar, before
    (T=1, left panel) and after temperature scaling (right), against the diagonal a
    calibrated model follows. Each bar is labelled with its image count (a bin of a few images
    is noise, however far from the diagonal). Empty bins have no bar."""
    font, small = _fonts(PNG_FONT_SIZE)
    side, margin, top = RELIABILITY_SIDE, 48, 56
    width = 2 * (side + margin) + margin
    image = Image.new("RGB", (width, top + side + margin + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black", font=font)
    panels = ((before, "T = 1 (uncalibrated)", BEFORE), (after, f"T = {temperature:.3f}", AFTER))
    for k, (table, label, colour) in enumerate(panels):
        left = margin + k * (side + margin)
        x0, y0, x1, y1 = left, top, left + side, top + side
        draw.text((left, top - 22), label, fill="black", font=font)
        edges = np.asarray(table["edges"], np.float64)
        for edge, accuracy, count in zip(
            edges[:-1], table["accuracy"], table["count"], strict=True
        ):
            if not count or accuracy is None:
                continue
            bar_w = side * (edges[1] - edges[0])
            bx = x0 + side * edge
            bar_top = y1 - side * float(accuracy)
            draw.rectangle([bx + 1, bar_top, bx + bar_w - 1, y1], fill=colour)
            label = Image.new("RGB", (40, 12), "white")
            ImageDraw.Draw(label).text(
                (1, 6), str(int(count)), fill="black", font=_fonts(9)[0], anchor="lm"
            )
            label = label.rotate(90, expand=True).crop((0, 0, 12, 40))
            text_h = 4 + int(ImageFont.load_default(size=9).getlength(str(int(count))))
            label = label.crop((0, 40 - text_h, 12, 40))
            image.paste(label, (int(bx + bar_w / 2 - 6), int(max(bar_top - text_h - 2, y0 + 1))))
        draw.line([x0, y1, x1, y0], fill=(160, 160, 160), width=1)  # perfect calibration
        draw.rectangle([x0, y0, x1, y1], outline="black")
        for tick in (0.0, 0.5, 1.0):
            draw.text(
                (x0 + side * tick, y1 + 4), f"{tick:g}", fill="black", font=small, anchor="mt"
            )
            draw.text(
                (x0 - 4, y1 - side * tick), f"{tick:g}", fill="black", font=small, anchor="rm"
            )
        draw.text((x0 + side / 2, y1 + 20), "confidence", fill="black", font=small, anchor="mt")
        axis = Image.new("RGB", (side, 14), "white")
        ImageDraw.Draw(axis).text((side / 2, 7), "accuracy", fill="black", font=small, anchor="mm")
        image.paste(axis.rotate(90, expand=True), (x0 - margin + 2, y0))
    return image


RISK_COVERAGE_SIZE = (360, 240)


def render_risk_coverage(curve: dict[str, Sequence[float]], title: str) -> Image.Image:
    """A risk-coverage curve: the accuracy of the answers kept (y) when the model answers only
    the most confident share of images (x), from research.serving.conformal.risk_coverage."""
    font, small = _fonts(PNG_FONT_SIZE)
    pw, ph = RISK_COVERAGE_SIZE
    margin, top = 56, 40
    image = Image.new("RGB", (pw + 2 * margin, top + ph + margin + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black", font=font)
    kept = np.asarray(curve["kept"], np.float64)
    accuracy = np.asarray(curve["accuracy"], np.float64)
    lo = float(min(np.floor(accuracy.min() * 20) / 20, 0.95)) if len(accuracy) else 0.0
    x0, y0, x1, y1 = margin, top, margin + pw, top + ph
    xy = [(x0 + pw * k, y1 - ph * (a - lo) / (1 - lo)) for k, a in zip(kept, accuracy, strict=True)]
    if len(xy) > 1:
        draw.line(xy, fill=AFTER, width=2)
    draw.rectangle([x0, y0, x1, y1], outline="black")
    for tick in (lo, (lo + 1) / 2, 1.0):
        y = y1 - ph * (tick - lo) / (1 - lo)
        draw.text((x0 - 4, y), f"{tick:.0%}", fill="black", font=small, anchor="rm")
    for tick in (0.0, 0.5, 1.0):
        draw.text((x0 + pw * tick, y1 + 4), f"{tick:.0%}", fill="black", font=small, anchor="mt")
    draw.text(
        (x0 + pw / 2, y1 + 22), "share of images answered", fill="black", font=small, anchor="mt"
    )
    axis = Image.new("RGB", (ph, 14), "white")
    ImageDraw.Draw(axis).text(
        (ph / 2, 7), "accuracy of those answers", fill="black", font=small, anchor="mm"
    )
    image.paste(axis.rotate(90, expand=True), (4, y0))
    return image


# Training curves: panel size (pixels) and the colours of the training and evaluation lines.
CURVES_PANEL = (320, 200)
TRAIN = (230, 120, 60)
EVAL = (8, 48, 107)


def render_curves(points: Sequence[dict], title: str) -> Image.Image:
    """Training curves: loss (left panel) and accuracy (right) per evaluation, for the
    training batches since the previous evaluation and for the evaluation split, against
    the epoch (else the step). `points` are research.model_report.read_curves' rows: step,
    epoch, train_loss, train_accuracy, eval_loss, eval_accuracy (any may be None)."""
    font, small = _fonts(PNG_FONT_SIZE)
    pw, ph = CURVES_PANEL
    margin, top = 52, 72
    width = 2 * (pw + margin) + margin
    image = Image.new("RGB", (width, top + ph + margin + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black", font=font)
    by_epoch = all(p.get("epoch") is not None for p in points)
    xs = np.array([p["epoch"] if by_epoch else p["step"] for p in points], np.float64)
    x_lo, x_hi = 0.0, float(xs.max()) if len(xs) and xs.max() > 0 else 1.0
    for k, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
        left = margin + k * (pw + margin)
        x0, y0, x1, y1 = left, top, left + pw, top + ph
        series = [
            (np.array([_nan(p.get(f"{kind}_{metric}")) for p in points]), colour, kind)
            for kind, colour in (("train", TRAIN), ("eval", EVAL))
        ]
        values = np.concatenate([s for s, _, _ in series])
        values = values[np.isfinite(values)]
        if metric == "accuracy":
            lo = float(np.floor(values.min() * 10) / 10) if len(values) else 0.0
            hi = 1.0
        else:
            lo, hi = 0.0, float(values.max() * 1.1) if len(values) else 1.0
        hi = hi if hi > lo else lo + 1.0
        draw.text((left, top - 40), label, fill="black", font=font)
        for ys, colour, _ in series:
            xy = [
                (x0 + pw * (x - x_lo) / (x_hi - x_lo), y1 - ph * (y - lo) / (hi - lo))
                for x, y in zip(xs, ys, strict=True)
                if np.isfinite(y)
            ]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        draw.rectangle([x0, y0, x1, y1], outline="black")
        for tick in (lo, (lo + hi) / 2, hi):
            y = y1 - ph * (tick - lo) / (hi - lo)
            draw.text((x0 - 4, y), f"{tick:.2f}", fill="black", font=small, anchor="rm")
        for tick in (x_lo, (x_lo + x_hi) / 2, x_hi):
            x = x0 + pw * (tick - x_lo) / (x_hi - x_lo)
            draw.text((x, y1 + 4), f"{tick:g}", fill="black", font=small, anchor="mt")
        axis = "epoch" if by_epoch else "step"
        draw.text((x0 + pw / 2, y1 + 20), axis, fill="black", font=small, anchor="mt")
        lx = x0 + 70
        for _, colour, kind in series:  # legend above the panel
            draw.line([lx, top - 12, lx + 18, top - 12], fill=colour, width=3)
            draw.text((lx + 22, top - 12), kind, fill="black", font=small, anchor="lm")
            lx += 80
    return image


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
