"""The classify page's live modes in headless Chromium (a fake camera), the example files they
use, and the 390-pixel phone layout of the main pages."""

import itertools
import json
import time
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image

from benchmarks import browser as browser_tools
from research.serving import artifacts, model_dir
from tests.web.test_browser import needs_chromium
from uploads.models import Prediction

PHONE = (390, 844)


@pytest.fixture(scope="module")
def live_browser():
    """A headless Chromium whose camera is Chromium's fake one, allowed without a prompt."""
    with browser_tools.headless_chromium(fake_camera=True) as driver:
        yield driver


@pytest.fixture(scope="session")
def shipped_examples(model_dirs) -> dict[str, list[model_dir.Example]]:
    """Example files in the tiny models' directories, as research.examples writes them."""
    written = {}
    for name, directory in model_dirs.items():
        folder = model_dir.examples_dir(directory)
        folder.mkdir(exist_ok=True)
        entries = []
        for index, (label, colour) in enumerate(
            [("airplane", (90, 140, 220)), ("cat", (200, 120, 60))]
        ):
            file = f"{index:02d}-{label}-1.png"
            Image.new("RGB", (32, 32), colour).save(folder / file)
            entries.append({"file": file, "label": label})
        (folder / artifacts.EXAMPLES_INDEX_FILE).write_text(json.dumps({"examples": entries}))
        written[name] = model_dir.read_examples(directory)
    return written


def open_classify(browser, live_server, model: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(live_server.url + reverse("uploads:classify"))
    Select(browser.find_element(By.NAME, "model")).select_by_value(model)


def wait_for_answer(browser, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    label = browser.find_element(By.CSS_SELECTOR, "[data-live-label]")
    WebDriverWait(browser, timeout).until(lambda driver: label.is_displayed() and label.text)
    return label.text


# Counts the requests in flight to /api/classify, and the most at once.
COUNT_IN_FLIGHT = """
window.inFlight = {now: 0, most: 0};
const realFetch = window.fetch;
window.fetch = function (url, options) {
  if (!String(url).includes("/api/classify")) return realFetch(url, options);
  inFlight.now += 1; inFlight.most = Math.max(inFlight.most, inFlight.now);
  return realFetch(url, options).finally(() => { inFlight.now -= 1; });
};
"""


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_camera_answers_continuously_one_frame_at_a_time_and_capture_stores_one(
    live_browser, live_server
):
    """The fake camera's frames get answers with one request in flight at most, none stored;
    Capture stores exactly one upload and links to its result page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_classify(live_browser, live_server, "cifar10")
    live_browser.execute_script(COUNT_IN_FLIGHT)
    live_browser.find_element(By.CSS_SELECTOR, '[data-mode="camera"]').click()
    WebDriverWait(live_browser, 90).until(
        lambda driver: driver.execute_script("return window.liveStats.answers") >= 3
    )
    assert live_browser.execute_script("return window.inFlight.most") == 1
    assert len(live_browser.find_elements(By.CSS_SELECTOR, "[data-live-bars] li")) == 3
    assert "Round trip" in live_browser.find_element(By.CSS_SELECTOR, "[data-live-timing]").text
    assert Prediction.objects.count() == 0

    live_browser.find_element(By.CSS_SELECTOR, '[data-mode-panel="camera"] [data-capture]').click()
    link = WebDriverWait(live_browser, 60).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "[data-saved-link]")
    )[0]
    prediction = Prediction.objects.get()
    assert link.get_attribute("href") == live_server.url + prediction.get_absolute_url()
    assert prediction.upload.original_name.startswith("camera-")
    link.click()  # the result page is the capturer's own
    WebDriverWait(live_browser, 30).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "[data-result-label]")
    )


# Records when each /api/classify request is sent (ms, performance.now()).
RECORD_SENDS = """
window.sends = [];
const sendFetch = window.fetch;
window.fetch = function (url, options) {
  if (String(url).includes("/api/classify")) window.sends.push(performance.now());
  return sendFetch(url, options);
};
"""


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_the_camera_paces_its_frames_to_the_servers_rate_instead_of_being_refused(
    live_browser, live_server, monkeypatch
):
    """At 120 frames a minute the page sends a frame every 500 ms at most, so the rate never
    refuses it and the camera never pauses (unpaced, it sent one every ~20-80 ms and ran into
    the limit's 429 after a few seconds)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from classifier_site.middleware import LiveRateThrottle

    monkeypatch.setattr(LiveRateThrottle, "THROTTLE_RATES", {"live": "120/min"})
    open_classify(live_browser, live_server, "cifar10")
    form = live_browser.find_element(By.CSS_SELECTOR, "[data-upload-form]")
    assert form.get_attribute("data-live-interval-ms") == "500"
    live_browser.execute_script(RECORD_SENDS)
    live_browser.find_element(By.CSS_SELECTOR, '[data-mode="camera"]').click()
    WebDriverWait(live_browser, 90).until(
        lambda driver: driver.execute_script("return window.liveStats.answers") >= 5
    )
    sends = live_browser.execute_script("return window.sends")
    gaps = [later - earlier for earlier, later in itertools.pairwise(sends)]
    assert len(gaps) >= 4 and min(gaps) >= 495, gaps
    assert not live_browser.find_element(By.CSS_SELECTOR, "[data-live-error]").is_displayed()


def test_the_classify_page_states_the_cameras_frame_interval_from_the_live_rate(
    client, monkeypatch
):
    from classifier_site.middleware import LiveRateThrottle

    monkeypatch.setattr(LiveRateThrottle, "THROTTLE_RATES", {"live": "900/min"})
    assert b'data-live-interval-ms="67"' in client.get(reverse("uploads:classify")).content
    monkeypatch.setattr(LiveRateThrottle, "THROTTLE_RATES", {"live": None})
    assert b'data-live-interval-ms="0"' in client.get(reverse("uploads:classify")).content


# Holds every /api/classify answer until window.release() is called.
HOLD_ANSWERS = """
window.held = [];
window.release = () => { window.held.splice(0).forEach((go) => go()); };
const passFetch = window.fetch;
window.fetch = function (url, options) {
  if (!String(url).includes("/api/classify")) return passFetch(url, options);
  return passFetch(url, options).then((response) => new Promise((resolve) => {
    window.held.push(() => resolve(response));
  }));
};
"""


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_an_answer_arriving_after_stop_camera_is_dropped(live_browser, live_server):
    """A frame sent before "Stop camera" whose answer comes back after it shows nothing: the
    page stays in Upload mode with no answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_classify(live_browser, live_server, "cifar10")
    live_browser.execute_script(HOLD_ANSWERS)
    live_browser.find_element(By.CSS_SELECTOR, '[data-mode="camera"]').click()
    WebDriverWait(live_browser, 90).until(
        lambda driver: driver.execute_script("return window.held.length") >= 1
    )
    live_browser.find_element(By.CSS_SELECTOR, "[data-camera-stop]").click()
    live_browser.execute_script("window.release()")
    WebDriverWait(live_browser, 10).until(
        lambda driver: driver.execute_script("return window.held.length") == 0
    )
    time.sleep(0.5)  # the released answer's promise chain runs
    assert live_browser.execute_script("return window.liveStats.answers") == 0
    result = live_browser.find_element(By.CSS_SELECTOR, "[data-live-result]")
    assert not result.is_displayed()
    pressed = live_browser.find_element(By.CSS_SELECTOR, '[data-mode="upload"]')
    assert pressed.get_attribute("aria-pressed") == "true"


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_on_a_phone_the_camera_answer_is_on_screen_with_the_video(live_browser, live_server):
    """At 390x844 the running camera's video and its answer are both within the screen."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    live_browser.set_window_size(*PHONE)
    try:
        open_classify(live_browser, live_server, "cifar10")
        live_browser.find_element(By.CSS_SELECTOR, '[data-mode="camera"]').click()
        WebDriverWait(live_browser, 90).until(
            lambda driver: driver.execute_script("return window.liveStats.answers") >= 1
        )
        time.sleep(0.3)
        video, label, height = live_browser.execute_script(
            """
            const box = (s) => document.querySelector(s).getBoundingClientRect().toJSON();
            return [box("[data-camera]"), box("[data-live-label]"), window.innerHeight];
            """
        )
        assert video["top"] >= 0 and video["top"] < height / 2
        assert label["top"] >= 0 and label["bottom"] <= height
    finally:
        live_browser.find_element(By.CSS_SELECTOR, "[data-camera-stop]").click()
        live_browser.set_window_size(1280, 900)


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_without_camera_permission_the_page_says_so_and_shows_the_upload_form(
    live_browser, live_server
):
    """A refused camera gives a clear message and the upload form, nothing else."""
    from selenium.webdriver.common.by import By

    open_classify(live_browser, live_server, "cifar10")
    live_browser.execute_script(
        "navigator.mediaDevices.getUserMedia = () => Promise.reject("
        "new DOMException('denied', 'NotAllowedError'));"
    )
    live_browser.find_element(By.CSS_SELECTOR, '[data-mode="camera"]').click()
    error = live_browser.find_element(By.CSS_SELECTOR, "[data-live-error]")
    assert error.is_displayed() and "camera is blocked" in error.text
    assert live_browser.find_element(By.CSS_SELECTOR, "[data-dropzone]").is_displayed()
    assert live_browser.find_element(By.CSS_SELECTOR, "[data-submit]").is_displayed()


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_a_drawn_stroke_on_the_fashion_mnist_canvas_gets_an_answer(live_browser, live_server):
    """Draw is offered for Fashion-MNIST only; a pointer stroke gets an answer, nothing is stored,
    and undoing the only stroke clears the answer."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    open_classify(live_browser, live_server, "cifar10")
    assert not live_browser.find_element(By.CSS_SELECTOR, '[data-mode="draw"]').is_displayed()
    Select(live_browser.find_element(By.NAME, "model")).select_by_value("fashion_mnist")
    live_browser.find_element(By.CSS_SELECTOR, '[data-mode="draw"]').click()
    canvas = live_browser.find_element(By.CSS_SELECTOR, "[data-sketch]")
    live_browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)

    stroke = ActionChains(live_browser).move_to_element_with_offset(canvas, 0, -80).click_and_hold()
    for _ in range(8):
        stroke.move_by_offset(0, 20)
    stroke.release().perform()

    assert wait_for_answer(live_browser)
    assert live_browser.execute_script(
        "const c = arguments[0].getContext('2d').getImageData(140, 140, 1, 1).data;"
        "return [c[0], c[1], c[2]]",
        canvas,
    ) == [255, 255, 255]  # white ink on black
    assert Prediction.objects.count() == 0
    live_browser.find_element(By.CSS_SELECTOR, "[data-sketch-undo]").click()
    result = live_browser.find_element(By.CSS_SELECTOR, "[data-live-result]")
    WebDriverWait(live_browser, 10).until(lambda driver: not result.is_displayed())


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_one_click_on_an_example_classifies_it(live_browser, live_server, shipped_examples):
    """The selected model's example strip shows; a click classifies that example via the API."""
    from selenium.webdriver.common.by import By

    open_classify(live_browser, live_server, "cifar10")
    strip = live_browser.find_element(By.CSS_SELECTOR, '[data-examples-for="cifar10"]')
    other = live_browser.find_element(By.CSS_SELECTOR, '[data-examples-for="fashion_mnist"]')
    assert strip.is_displayed() and not other.is_displayed()
    buttons = strip.find_elements(By.CSS_SELECTOR, "[data-example]")
    assert [b.get_attribute("data-example-label") for b in buttons] == ["airplane", "cat"]
    buttons[1].click()
    assert wait_for_answer(live_browser)
    heading = live_browser.find_element(By.CSS_SELECTOR, "[data-live-heading]").text
    assert "cat" in heading.lower()
    assert Prediction.objects.count() == 0


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_pages_fit_a_390_pixel_phone(live_browser, live_server, tmp_path, shipped_examples):
    """Classify (every mode), results, detail and history pages never scroll sideways at 390 px,
    and result bars keep a usable width."""
    from selenium.webdriver.common.by import By

    long_name = tmp_path / ("a-very-long-file-name-without-any-spaces-" * 3 + ".png")
    Image.new("RGB", (300, 200), (30, 90, 200)).save(long_name)
    live_browser.set_window_size(*PHONE)
    try:
        assert live_browser.execute_script("return window.innerWidth") == PHONE[0]
        open_classify(live_browser, live_server, "fashion_mnist")
        overflows = {}
        for mode in ("upload", "draw", "camera"):
            live_browser.find_element(By.CSS_SELECTOR, f'[data-mode="{mode}"]').click()
            overflows[f"classify/{mode}"] = scroll_width(live_browser)
        live_browser.find_element(By.CSS_SELECTOR, '[data-mode="upload"]').click()
        live_browser.find_element(By.NAME, "images").send_keys(f"{long_name}\n{long_name}")
        live_browser.find_element(By.CSS_SELECTOR, "[data-submit]").click()
        wait_for_page(live_browser, "images classified")
        overflows["results"] = scroll_width(live_browser)
        meter = live_browser.find_element(By.CSS_SELECTOR, ".bar-meter")
        assert meter.size["width"] >= 150
        live_browser.get(live_server.url + Prediction.objects.first().get_absolute_url())
        overflows["detail"] = scroll_width(live_browser)
        assert live_browser.find_element(By.CSS_SELECTOR, ".bar-meter").size["width"] >= 150
        live_browser.get(live_server.url + reverse("uploads:history"))
        overflows["history"] = scroll_width(live_browser)
    finally:
        live_browser.set_window_size(1280, 900)
    # clientWidth: the viewport less a scrollbar; wider content would scroll sideways.
    assert {page: width for page, width in overflows.items() if width > PHONE[0]} == {}


def scroll_width(browser) -> int:
    """The page's width with the scrollbar: the phone's width unless it scrolls sideways."""
    return browser.execute_script(
        "const root = document.documentElement;"
        "return root.scrollWidth + window.innerWidth - root.clientWidth"
    )


def wait_for_page(browser, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda driver: text in driver.page_source)


def test_example_files_are_served_only_when_listed(client, shipped_examples, model_dirs):
    """A listed example is a PNG; anything else (unlisted, the index, traversal, an unknown
    model) is a 404."""
    example = shipped_examples["cifar10"][0]
    response = client.get(reverse("uploads:model-example", args=["cifar10", example.file]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")
    secret = Path(model_dirs["cifar10"]).parent / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    for path in [
        f"/models/cifar10/examples/{artifacts.EXAMPLES_INDEX_FILE}",
        "/models/cifar10/examples/99-nothing-1.png",
        "/models/cifar10/examples/..%2F..%2Fsecret.png",
        "/models/cifar10/examples/%2e%2e/secret.png",
        f"/models/nope/examples/{example.file}",
    ]:
        assert client.get(path).status_code == 404, path


def test_the_classify_page_lists_each_models_examples_and_draw_flag(client, shipped_examples):
    """The page's model data name each model's input size, draw flag and example URLs."""
    response = client.get(reverse("uploads:classify"))
    models = {m["name"]: m for m in response.context["live_models"]}
    assert models["fashion_mnist"]["draw"] is True and models["cifar10"]["draw"] is False
    assert (models["cifar10"]["width"], models["cifar10"]["height"]) == (32, 32)
    assert [e["label"] for e in models["cifar10"]["examples"]] == ["airplane", "cat"]
    assert b'id="live-models"' in response.content


def test_favicon_ico_redirects_to_the_site_icon(client):
    """/favicon.ico (asked for by the admin's pages) is not a 404."""
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")


@pytest.mark.django_db
def test_the_intro_offers_drawing_only_with_the_model_that_draws(client):
    """The default (CIFAR-10) model has no Draw mode, so the intro ties drawing to Fashion-MNIST
    rather than promising it for every model."""
    html = client.get(reverse("uploads:classify")).content.decode()
    lead = html.split('class="lead">', 1)[1].split("</p>", 1)[0]
    assert "(with the Fashion-MNIST model) draw a garment" in lead
    assert "point your camera, draw," not in lead
