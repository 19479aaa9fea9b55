"""A small, honest out-of-scope check set: images of none of the classes, made on this machine.

    python -m research.data out-of-scope --out /tmp/out-of-scope      # ~2 min, 2-core CPU

Five kinds, `count` each (seeded, so the same files every run on the same fonts and icons):
- `text`: words and sentences rendered with Pillow in the TrueType fonts under /usr/share/fonts,
  as a label, a paragraph or a page of a document (dark on light, some light on dark);
- `pages`: screenshots of generated web pages (headings, paragraphs, forms, tables, buttons)
  taken with headless Chromium, and the site's own favicon rasterised; skipped without Chromium;
- `icons`: the desktop's icon theme (PNG icons under /usr/share/icons) on a flat background;
- `shapes`: flat-coloured circles, rectangles and polygons on a flat background;
- `drawings`: line drawings (strokes, spirals, zigzags, scribbles) on paper-like backgrounds.

Nothing is drawn from any dataset, and no word is a class name of CIFAR-10 or Fashion-MNIST. It
is for measuring the "unknown" score (research.evaluation.out_of_scope), never for fitting it.
Pillow and NumPy only (Chromium as a subprocess).
"""

from __future__ import annotations

import html
import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from research import configs

KINDS = ("text", "pages", "icons", "shapes", "drawings")
SEED = 0
FONT_ROOT = Path("/usr/share/fonts")
ICON_ROOT = Path("/usr/share/icons")
FAVICON = Path(__file__).resolve().parents[2] / "uploads" / "static" / "uploads" / "favicon.svg"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_TIMEOUT_S = 60
# Words of the rendered texts: everyday words, none a class name of the shipped datasets.
_WORD_TEXT = (
    "the quick report meeting budget invoice total summary chapter notes agenda project "
    "update weather morning evening garden kitchen window letter market price order "
    "delivery account password settings welcome contact about privacy policy terms search "
    "results page home news sport music travel recipe coffee tea water paper pencil "
    "number table chart graph figure section review draft final version release monday "
    "friday january april october station ticket museum library school office "
    "hello world thank you please open close save cancel next previous"
)
WORDS = tuple(_WORD_TEXT.split(" "))


def generate(
    out: str | Path, *, count: int = 60, seed: int = SEED, kinds: Sequence[str] = KINDS
) -> dict[str, int]:
    """Writes `count` PNGs of each kind to out/<kind>/; returns how many each kind got."""
    out = Path(out)
    made = {}
    for offset, kind in enumerate(KINDS):
        if kind not in kinds:
            continue
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, offset])
        images = MAKERS[kind](rng, count)
        for index, image in enumerate(images):
            image.convert("RGB").save(folder / f"{kind}-{index:03d}.png", optimize=True)
        made[kind] = len(images)
    return made


def load(folder: str | Path) -> dict[str, list[Image.Image]]:
    """The images of a generated set, by kind, in file order."""
    folder = Path(folder)
    out = {}
    for kind in KINDS:
        files = sorted((folder / kind).glob("*.png"))
        if files:
            out[kind] = [_open(f) for f in files]
    if not out:
        raise FileNotFoundError(
            f"No out-of-scope images under {folder}: make them with "
            f"`python -m research.data out-of-scope --out {folder}`"
        )
    return out


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# ----------------------------------------------------------------------------- kinds


def _colour(rng: np.random.Generator, light: bool) -> tuple[int, int, int]:
    low, high = (200, 256) if light else (0, 70)
    return tuple(int(v) for v in rng.integers(low, high, 3))


def _any_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _fonts() -> list[Path]:
    return sorted(FONT_ROOT.rglob("*.ttf"))


def _sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(str(w) for w in rng.choice(WORDS, words)).capitalize()


def make_text(rng: np.random.Generator, count: int) -> list[Image.Image]:
    """Labels, paragraphs and document pages in the system's fonts."""
    fonts = _fonts()
    images = []
    for index in range(count):
        style = index % 3
        dark_on_light = rng.random() < 0.8
        background = _colour(rng, light=dark_on_light)
        ink = _colour(rng, light=not dark_on_light)
        size = [(320, 120), (320, 320), (240, 320)][style]
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        font_size = int([rng.integers(28, 56), rng.integers(14, 24), rng.integers(9, 14)][style])
        font = (
            ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), font_size)
            if fonts
            else ImageFont.load_default()
        )
        lines = [1, int(rng.integers(4, 9)), int(rng.integers(12, 22))][style]
        y = int(rng.integers(6, 20))
        for _ in range(lines):
            draw.text((10, y), _sentence(rng, int(rng.integers(2, 7))), fill=ink, font=font)
            y += int(font_size * 1.35)
        images.append(image)
    return images


def make_pages(rng: np.random.Generator, count: int) -> list[Image.Image]:
    """Screenshots of generated web pages in headless Chromium, and the favicon; [] without
    Chromium."""
    chromium = next((p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)
    if chromium is None:
        return []
    images = []
    with tempfile.TemporaryDirectory(prefix="out-of-scope-") as tmp:
        for index in range(count):
            source = Path(tmp) / f"page-{index}.html"
            if index == 0 and FAVICON.is_file():
                source = FAVICON
                size = (256, 256)
            else:
                source.write_text(_page_html(rng))
                size = (int(rng.integers(640, 1025)), int(rng.integers(480, 801)))
            shot = Path(tmp) / f"shot-{index}.png"
            _screenshot(chromium, source, shot, size)
            if shot.is_file():
                images.append(_open(shot))
    return images


def _screenshot(chromium: str, source: Path, shot: Path, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                f"--screenshot={shot}",
                source.as_uri(),
            ],
            check=False,
            capture_output=True,
            timeout=CHROMIUM_TIMEOUT_S,
        )


def _page_html(rng: np.random.Generator) -> str:
    """A plausible page: a header bar, a heading, then paragraphs, a form, a table or buttons."""
    accent = "#{:02x}{:02x}{:02x}".format(*_any_colour(rng))
    light = rng.random() < 0.75
    background, text = ("#ffffff", "#1d1d1f") if light else ("#16181d", "#e8e8ea")
    font = str(rng.choice(["sans-serif", "serif", "monospace"]))
    parts = [f"<h1>{html.escape(_sentence(rng, int(rng.integers(2, 5))))}</h1>"]
    for block in rng.choice(["text", "form", "table", "buttons", "list"], 3):
        if block == "text":
            parts.append(f"<p>{html.escape(_sentence(rng, int(rng.integers(20, 60))))}.</p>")
        elif block == "form":
            fields = "".join(
                f"<label>{html.escape(_sentence(rng, 1))}<input value=''></label><br>"
                for _ in range(int(rng.integers(2, 5)))
            )
            parts.append(f"<form>{fields}<button>{html.escape(_sentence(rng, 1))}</button></form>")
        elif block == "table":
            rows = "".join(
                "<tr>"
                + "".join(f"<td>{int(rng.integers(0, 9999))}</td>" for _ in range(4))
                + "</tr>"
                for _ in range(int(rng.integers(3, 8)))
            )
            parts.append(f"<table border=1 cellpadding=4>{rows}</table>")
        elif block == "buttons":
            parts.append(
                "".join(
                    f"<button style='margin:4px;padding:8px 16px;background:{accent};"
                    f"color:#fff;border:0;border-radius:6px'>{html.escape(_sentence(rng, 1))}"
                    "</button>"
                    for _ in range(int(rng.integers(2, 5)))
                )
            )
        else:
            items = "".join(
                f"<li>{html.escape(_sentence(rng, int(rng.integers(2, 6))))}</li>"
                for _ in range(int(rng.integers(3, 7)))
            )
            parts.append(f"<ul>{items}</ul>")
    nav = " · ".join(html.escape(_sentence(rng, 1)) for _ in range(4))
    return (
        "<!doctype html><html><head><meta charset=utf-8><style>"
        f"body{{margin:0;background:{background};color:{text};font-family:{font}}}"
        f"header{{background:{accent};color:#fff;padding:12px 20px;font-weight:bold}}"
        "main{padding:8px 24px}</style></head>"
        f"<body><header>{nav}</header><main>{''.join(parts)}</main></body></html>"
    )


def make_icons(rng: np.random.Generator, count: int) -> list[Image.Image]:
    """PNG icons of the desktop theme (the larger sizes), each on a flat background."""
    files = sorted(
        p
        for p in ICON_ROOT.rglob("*.png")
        if any(size in p.parts for size in ("512x512", "256x256", "96x96"))
    )
    if not files:
        return []
    picked = rng.choice(len(files), min(count, len(files)), replace=False)
    images = []
    for index in picked:
        with Image.open(files[int(index)]) as icon:
            icon = icon.convert("RGBA")
        light = rng.random() < 0.7
        canvas = Image.new("RGBA", icon.size, _colour(rng, light=light) + (255,))
        canvas.alpha_composite(icon)
        images.append(canvas.convert("RGB"))
    return images


def make_shapes(rng: np.random.Generator, count: int) -> list[Image.Image]:
    """One to six flat-coloured circles, rectangles or polygons on a flat background."""
    images = []
    for _ in range(count):
        side = int(rng.integers(96, 257))
        image = Image.new("RGB", (side, side), _any_colour(rng))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 7))):
            x0, y0 = (int(v) for v in rng.integers(0, side * 3 // 4, 2))
            w, h = (int(v) for v in rng.integers(side // 8, side // 2, 2))
            shape = rng.integers(3)
            if shape == 0:
                draw.ellipse((x0, y0, x0 + w, y0 + h), fill=_any_colour(rng))
            elif shape == 1:
                draw.rectangle((x0, y0, x0 + w, y0 + h), fill=_any_colour(rng))
            else:
                points = [
                    tuple(int(v) for v in rng.integers(0, side, 2))
                    for _ in range(3 + int(rng.integers(3)))
                ]
                draw.polygon(points, fill=_any_colour(rng))
        images.append(image)
    return images


def make_drawings(rng: np.random.Generator, count: int) -> list[Image.Image]:
    """Line drawings: polylines, spirals, zigzags and scribbles in dark ink on light paper."""
    images = []
    for index in range(count):
        side = int(rng.integers(128, 257))
        image = Image.new("RGB", (side, side), _colour(rng, light=True))
        draw = ImageDraw.Draw(image)
        ink = _colour(rng, light=False)
        width = int(rng.integers(1, 5))
        kind = index % 4
        if kind == 0:  # polylines
            for _ in range(int(rng.integers(2, 6))):
                points = [
                    tuple(int(v) for v in rng.integers(0, side, 2))
                    for _ in range(int(rng.integers(3, 8)))
                ]
                draw.line(points, fill=ink, width=width)
        elif kind == 1:  # a spiral
            cx, cy = (int(v) for v in rng.integers(side // 3, 2 * side // 3, 2))
            turns = float(rng.uniform(2, 6))
            steps = np.linspace(0, turns * 2 * math.pi, 300)
            radius = steps / steps[-1] * side * 0.45
            points = [
                (cx + r * math.cos(t), cy + r * math.sin(t))
                for r, t in zip(radius, steps, strict=True)
            ]
            draw.line(points, fill=ink, width=width)
        elif kind == 2:  # zigzags
            for row in range(int(rng.integers(2, 6))):
                y = (row + 1) * side / 7
                points = [
                    (x, y + (12 if i % 2 else -12))
                    for i, x in enumerate(range(8, side - 8, side // 10))
                ]
                draw.line(points, fill=ink, width=width)
        else:  # a scribble: a random walk
            steps = rng.normal(0, side / 25, (200, 2)).cumsum(axis=0) + side / 2
            draw.line([tuple(p) for p in np.clip(steps, 4, side - 4)], fill=ink, width=width)
        images.append(image)
    return images


MAKERS: dict[str, Callable[[np.random.Generator, int], list[Image.Image]]] = {
    "text": make_text,
    "pages": make_pages,
    "icons": make_icons,
    "shapes": make_shapes,
    "drawings": make_drawings,
}


def class_words() -> set[str]:
    """Every word of the shipped datasets' class names (WORDS avoids them; a test checks)."""
    words = set()
    for name in ("cifar10", "fashion_mnist"):
        for class_name in configs.DATASETS[name].class_names:
            words |= set(class_name.lower().replace("/", " ").replace("-", " ").split())
    return words
