"""Headless Chromium driven by Selenium, defined once for the browser tests (tests/web), the
camera benchmark (benchmarks.serving.camera) and the walkthrough (scripts/walkthrough.py).

Needs Debian's chromium and chromium-driver and selenium (the test extra). Each browser gets a
throw-away profile; `fake_camera` gives it Chromium's fake camera, allowed without a prompt.
(`python -m research.data out-of-scope` runs Chromium's own --screenshot, without Selenium, and
keeps its flags: research imports nothing from here.)
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
FAKE_CAMERA_FLAGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
PAGE_LOAD_TIMEOUT_S = 60


def available() -> bool:
    """Whether Chromium and its driver are installed."""
    return bool(CHROMIUM and CHROMEDRIVER)


@contextlib.contextmanager
def headless_chromium(
    *,
    size: tuple[int, int] = (1280, 900),
    fake_camera: bool = False,
    extra_flags: Sequence[str] = (),
) -> Iterator:
    """A Selenium driver of a headless Chromium at `size`, quit and its profile removed after."""
    if not available():
        raise RuntimeError(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = [*FLAGS, *(FAKE_CAMERA_FLAGS if fake_camera else ()), *extra_flags]
    for flag in [*flags, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
