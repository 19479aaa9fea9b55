"""A first visit, step by step, at 390 and 1280 px: screenshots for docs/walkthrough.md.

    .venv/bin/python -m scripts.walkthrough [--out docs/img/walkthrough] [--port 8765]

Starts the site on a throw-away database and media folder (the development settings, debug off,
the shipped models), drives headless Chromium through it with Selenium (a fake camera, allowed
without a prompt) and saves one PNG per step and width, reduced to 256 colours. Needs Debian's
chromium and chromium-driver. About 3 minutes on a 2-core CPU, most of it the models' warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from benchmarks.browser import headless_chromium

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}
PHOTO = ROOT / "models" / "cifar10" / "examples" / "03-cat-1.png"
READY_TIMEOUT_S = 300
ANSWER_TIMEOUT_S = 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "walkthrough"))
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="walkthrough-") as tmp,
        serve(Path(tmp), args.port or free_port()) as url,
    ):
        images = make_inputs(Path(tmp))
        for name, size in WIDTHS.items():
            with browser(size) as driver:
                walk(driver, url, images, out, name)
    total = sum(p.stat().st_size for p in out.glob("*.png"))
    print(f"wrote {len(list(out.glob('*.png')))} screenshots to {out} ({total / 1e6:.1f} MB)")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(tmp: Path, port: int) -> Iterator[str]:
    """The development server on a fresh database and media folder, until the models are warm."""
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "classifier_site.settings.dev",
        "DJANGO_DEBUG": "0",
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
        "DJANGO_MEDIA_ROOT": str(tmp / "media"),
    }
    python = sys.executable
    subprocess.run(
        [python, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [python, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def wait_ready(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server stopped; see its log")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/readyz", timeout=5) as response,
        ):
            if response.status == 200:
                return
        time.sleep(2)
    raise TimeoutError(f"the site was not ready in {READY_TIMEOUT_S} s")


def make_inputs(tmp: Path) -> dict[str, Path]:
    """A photo (the shipped CIFAR-10 cat example) and a page of text (out of scope)."""
    photo = tmp / "cat.png"
    shutil.copy(PHOTO, photo)
    text = Image.new("RGB", (360, 240), "white")
    draw = ImageDraw.Draw(text)
    font = ImageFont.load_default(size=22)
    for row, line in enumerate(["Meeting notes", "Budget: agreed", "Next review: Friday"]):
        draw.text((20, 30 + row * 60), line, fill="black", font=font)
    notes = tmp / "notes.png"
    text.save(notes)
    return {"photo": photo, "notes": notes}


@contextlib.contextmanager
def browser(size: tuple[int, int]):
    """Headless Chromium at `size` with the fake camera, no scrollbars in the screenshots."""
    with headless_chromium(
        size=size, fake_camera=True, extra_flags=["--hide-scrollbars"]
    ) as driver:
        driver.set_window_size(*size)
        yield driver


def shot(driver, out: Path, step: str, width: str) -> None:
    """The viewport as a 256-colour PNG."""
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(
        out / f"{step}-{width}.png", optimize=True
    )
    print(f"  {step}-{width}.png")


def walk(driver, url: str, images: dict[str, Path], out: Path, width: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def find(css: str):
        return driver.find_element(By.CSS_SELECTOR, css)

    def wait_for(css: str, timeout: float = ANSWER_TIMEOUT_S):
        return WebDriverWait(driver, timeout).until(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css))
        )

    def scroll_to(css: str) -> None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", find(css))

    print(width)
    driver.get(url + "/")
    shot(driver, out, "01-home", width)

    find("input[name='images']").send_keys(str(images["photo"]))
    find("[data-previews] [data-edit-index='0']").click()
    wait_for("[data-editor]")
    # Turned a quarter, shown, and turned back: a 32-pixel photo keeps all its pixels (a crop
    # of one is enlarged by the model's resize, which makes it look unlike a photo).
    find("[data-editor-rotate='90']").click()
    scroll_to("[data-editor]")
    shot(driver, out, "02-edit", width)
    find("[data-editor-rotate='-90']").click()
    find("[data-editor-apply]").click()
    scroll_to("[data-dropzone]")
    shot(driver, out, "03-ready", width)

    find("[data-submit]").click()
    wait_for("[data-result-label]")
    shot(driver, out, "04-result", width)
    result_url = driver.current_url

    scroll_to("#feedback")
    find("#feedback button[value='right']").click()
    wait_for("#feedback-status")
    shot(driver, out, "05-feedback", width)

    scroll_to("[data-share]")
    if not driver.find_elements(By.CSS_SELECTOR, "[data-share-link]"):
        find("[data-share-actions] button[value='renew']").click()
        wait_for("[data-share-link]")
    share_url = find("[data-share-link]").get_attribute("value")
    model_url = find(".facts a").get_attribute("href")

    driver.get(url + "/")
    find("input[name='images']").send_keys(str(images["notes"]))
    find("[data-submit]").click()
    wait_for("[data-result-label]")
    shot(driver, out, "06-not-a-class", width)

    driver.get(url + "/history/")
    shot(driver, out, "07-history", width)
    driver.get(share_url)
    shot(driver, out, "08-share", width)
    driver.get(model_url)
    shot(driver, out, "09-model", width)

    driver.get(url + "/")
    Select(find("select[name='model']")).select_by_value("fashion_mnist")
    find("[data-mode='draw']").click()
    canvas = wait_for("[data-sketch]")
    scroll_to("[data-sketch]")
    side = canvas.rect["width"]
    strokes = ActionChains(driver).move_to_element_with_offset(canvas, -side * 0.3, -side * 0.35)
    strokes.click_and_hold()
    for dx, dy in ((0.6, 0), (0, 0.7), (-0.2, 0), (0, -0.45), (-0.2, 0), (0, 0.45), (-0.2, 0)):
        strokes.move_by_offset(dx * side, dy * side)
    strokes.move_by_offset(0, -0.7 * side).release().perform()
    WebDriverWait(driver, ANSWER_TIMEOUT_S).until(lambda d: find("[data-live-label]").text)
    shot(driver, out, "10-draw", width)

    driver.get(url + "/")
    Select(find("select[name='model']")).select_by_value("cifar10")
    find("[data-mode='camera']").click()
    WebDriverWait(driver, ANSWER_TIMEOUT_S).until(lambda d: find("[data-live-label]").text)
    time.sleep(1)
    shot(driver, out, "11-camera", width)
    find("[data-camera-stop]").click()
    driver.get(result_url)  # leave the camera off


if __name__ == "__main__":
    sys.exit(main())
