"""The live camera's answers per second: the classify page in headless Chromium, its camera
Chromium's fake one, against the production stack.

Starts nginx + gunicorn as benchmarks.serving.web --nginx does (production settings, batching
off, static files collected, SQLite in a temporary folder), opens the classify page in headless
Chromium with `--use-fake-device-for-media-stream --use-fake-ui-for-media-stream` (a synthetic
camera, allowed without a prompt), picks the model, starts Camera mode and, after the first
answers, counts the answers of `--seconds` seconds. The page sends one frame at a time (the
next once the answer is in, uploads/static/uploads/live.js), so answers/s is 1000 / round trip:
it prints answers/s and the round trip's p50/p95 from the page's own window.liveStats.

    python -m benchmarks.serving.camera                   # 10 s, models/cifar10
    python -m benchmarks.serving.camera --seconds 10 --workers 2 --threads 4

Needs nginx, Debian's chromium and chromium-driver, and selenium (the test extra). Chromium,
the server and this script share the machine's CPUs.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import browser
from benchmarks.serving import web

NAME = "cifar10"
WARM_ANSWERS = 5  # answers before counting (the first frames compile nothing, but warm caches)
FIRST_ANSWER_TIMEOUT_S = 90


def measure_camera(driver, url: str, seconds: float) -> dict:
    """Start the camera on the classify page; answers/s and round trips over `seconds`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(url)
    Select(driver.find_element(By.NAME, "model")).select_by_value(NAME)
    driver.find_element(By.CSS_SELECTOR, '[data-mode="camera"]').click()
    WebDriverWait(driver, FIRST_ANSWER_TIMEOUT_S).until(
        lambda d: d.execute_script("return window.liveStats.answers") >= WARM_ANSWERS
    )
    first = driver.execute_script("return window.liveStats.answers")
    start = time.perf_counter()
    time.sleep(seconds)
    stats = driver.execute_script("return window.liveStats")
    elapsed = time.perf_counter() - start
    trips = stats["roundTrips"][first:]
    error = driver.execute_script(
        "var e = document.querySelector('[data-live-error]'); return e ? e.textContent : ''"
    )
    return {
        "seconds": round(elapsed, 2),
        "answers": stats["answers"] - first,
        "answers_per_s": (stats["answers"] - first) / elapsed,
        "round_trip_p50_ms": web.percentile(trips, 50),
        "round_trip_p95_ms": web.percentile(trips, 95),
        "error_shown": error.strip(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=web.ROOT / "models" / NAME)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the count")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        parser.error(f"no model at {args.model_dir}; pass --model-dir PATH to an exported model")
    if not browser.available():
        parser.error(browser.MISSING)
    args.model, args.nginx, args.pages = NAME, True, True  # what web.start_server reads

    workdir = Path(tempfile.mkdtemp(prefix="bench-camera-"))
    workdir.chmod(0o755)  # nginx's workers (an unprivileged user under root) read static/ in it
    port = web.free_port()
    server = web.start_server(args, workdir, port, batching=False)
    try:
        web.wait_until_ready(port, server, args.workers)
        with browser.headless_chromium(fake_camera=True) as driver:
            result = measure_camera(driver, f"http://{web.HOST}:{port}/", args.seconds)
    finally:
        web.stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    result["server"] = (
        f"nginx -> gunicorn {args.workers} workers x {args.threads} threads, SQLite, loopback; "
        f"headless Chromium, fake camera, {NAME}"
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["server"])
        print(
            f"camera: {result['answers']} answers in {result['seconds']:.1f} s = "
            f"{result['answers_per_s']:.1f} answers/s; round trip p50 "
            f"{result['round_trip_p50_ms']:.1f} ms, p95 {result['round_trip_p95_ms']:.1f} ms"
            + (f"; page shows: {result['error_shown']}" if result["error_shown"] else "")
        )
    return result


if __name__ == "__main__":
    main()
