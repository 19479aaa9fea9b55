"""Rotate, crop and invert before classifying (editor.js), in headless Chromium: what the
server stores is the edited image, and the result page's "Try inverting it" has its action."""

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from uploads.models import Prediction

from .test_browser import browser, needs_chromium  # noqa: F401 (the fixture)
from .test_live import PHONE

pytestmark = [
    needs_chromium,
    pytest.mark.django_db(transaction=True),
]


def _noise(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _choose(driver, live_server, path, size=(1280, 900)):
    """Open the home page at `size`, choose `path`, and open the editor on it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(*size)
    driver.get(live_server.url + reverse("uploads:classify"))
    driver.find_element(By.NAME, "images").send_keys(str(path))
    driver.find_element(By.CSS_SELECTOR, "[data-previews] [data-edit-index='0']").click()
    editor = driver.find_element(By.CSS_SELECTOR, "[data-editor]")
    WebDriverWait(driver, 10).until(lambda _: editor.is_displayed())
    return editor


def _use_and_classify(driver, editor) -> Image.Image:
    """'Use this image', then Classify; the image the server stored."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    editor.find_element(By.CSS_SELECTOR, "[data-editor-apply]").click()
    WebDriverWait(driver, 10).until(lambda _: not editor.is_displayed())
    names = driver.find_elements(By.CSS_SELECTOR, "[data-previews] .name")
    assert len(names) == 1 and "-edited." in names[0].text
    driver.find_element(By.CSS_SELECTOR, "[data-submit]").click()
    WebDriverWait(driver, 60).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[data-result-label]"))
    )
    upload = Prediction.objects.get().upload
    with upload.image.open("rb") as file:
        stored = Image.open(file)
        stored.load()
    assert (stored.width, stored.height) == (upload.width, upload.height)
    return stored


def test_rotating_right_stores_the_image_turned_clockwise(browser, live_server, tmp_path):  # noqa: F811
    """A 48x32 image, left half red, right half blue, rotated right: stored 32x48 with red on
    top (a clockwise quarter turn), pixel for pixel."""
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :24] = (220, 30, 30)
    pixels[:, 24:] = (30, 60, 220)
    pixels[0, 0] = (0, 255, 0)  # the top-left corner goes to the top-right
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)

    from selenium.webdriver.common.by import By

    editor = _choose(browser, live_server, path)
    editor.find_element(By.CSS_SELECTOR, "[data-editor-rotate='90']").click()
    assert "32 × 48 pixels" in editor.find_element(By.CSS_SELECTOR, "[data-editor-status]").text
    stored = np.asarray(_use_and_classify(browser, editor).convert("RGB"))

    assert stored.shape == (48, 32, 3)
    assert np.array_equal(stored, np.rot90(pixels, k=-1))


def test_inverting_stores_the_inverted_pixels(browser, live_server, tmp_path):  # noqa: F811
    """'Invert colours' is a toggle button; the stored PNG is 255 minus every channel."""
    from selenium.webdriver.common.by import By

    pixels = _noise((20, 16))
    path = tmp_path / "noise.png"
    Image.fromarray(pixels).save(path)
    editor = _choose(browser, live_server, path)
    invert = editor.find_element(By.CSS_SELECTOR, "[data-editor-invert]")
    invert.click()
    assert invert.get_attribute("aria-pressed") == "true"
    stored = np.asarray(_use_and_classify(browser, editor).convert("RGB"))

    assert np.array_equal(stored, 255 - pixels)


def test_the_crop_typed_at_phone_width_is_the_image_stored(browser, live_server, tmp_path):  # noqa: F811
    """At 390 px, keyboard only: the editor's heading takes focus, the crop is typed into its
    number fields, the page does not scroll sideways, and the stored image is that crop."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    pixels = _noise((64, 48), seed=1)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    editor = _choose(browser, live_server, path, size=PHONE)
    focused = browser.switch_to.active_element
    assert focused.get_attribute("id") == "editor-heading"
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    canvas = editor.find_element(By.CSS_SELECTOR, "[data-editor-canvas]")
    assert canvas.rect["x"] >= 0 and canvas.rect["x"] + canvas.rect["width"] <= PHONE[0]

    for key, value in {"x": 8, "y": 4, "width": 20, "height": 30}.items():
        field = editor.find_element(By.CSS_SELECTOR, f"[data-crop='{key}']")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value), Keys.TAB)
    assert "20 × 30 pixels" in editor.find_element(By.CSS_SELECTOR, "[data-editor-status]").text
    stored = np.asarray(_use_and_classify(browser, editor).convert("RGB"))

    assert np.array_equal(stored, pixels[4:34, 8:28])


def test_dragging_across_the_picture_crops_to_the_rectangle(browser, live_server, tmp_path):  # noqa: F811
    """A drag from a quarter to three quarters of the picture keeps about its middle half, and
    the number fields show the rectangle that is then stored."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pixels = _noise((80, 60), seed=2)
    path = tmp_path / "drag.png"
    Image.fromarray(pixels).save(path)
    editor = _choose(browser, live_server, path)
    canvas = editor.find_element(By.CSS_SELECTOR, "[data-editor-canvas]")
    width, height = canvas.rect["width"], canvas.rect["height"]
    (
        ActionChains(browser)
        .move_to_element_with_offset(canvas, -width / 4, -height / 4)
        .click_and_hold()
        .move_by_offset(width / 4, height / 4)
        .move_by_offset(width / 4, height / 4)
        .release()
        .perform()
    )
    fields = {key: f"[data-crop='{key}']" for key in ("x", "y", "width", "height")}
    crop = {
        key: int(editor.find_element(By.CSS_SELECTOR, css).get_attribute("value"))
        for key, css in fields.items()
    }
    assert abs(crop["width"] - 40) <= 2 and abs(crop["height"] - 30) <= 2
    stored = np.asarray(_use_and_classify(browser, editor).convert("RGB"))

    x, y, w, h = crop["x"], crop["y"], crop["width"], crop["height"]
    assert np.array_equal(stored, pixels[y : y + h, x : x + w])


def test_a_page_that_suggests_inverting_offers_it(browser, live_server, tmp_path, settings):  # noqa: F811
    """A dark shoe on white for the Fashion-MNIST model: the result page says 'Try inverting
    it' and links to the home page with the image in the editor, inverted; classified, the
    second upload is the inverted image."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    pixels = np.full((28, 28), 250, np.uint8)
    pixels[10:20, 4:24] = 20
    path = tmp_path / "shoe.png"
    Image.fromarray(pixels, "L").save(path)
    browser.set_window_size(1280, 900)
    browser.get(live_server.url + reverse("uploads:classify") + "?model=fashion_mnist")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.NAME, "model")).select_by_value("fashion_mnist")
    browser.find_element(By.NAME, "images").send_keys(str(path))
    browser.find_element(By.CSS_SELECTOR, "[data-submit]").click()
    link = WebDriverWait(browser, 60).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[data-invert-link]"))
    )
    assert "Try inverting it" in browser.page_source
    link.click()

    editor = browser.find_element(By.CSS_SELECTOR, "[data-editor]")
    WebDriverWait(browser, 20).until(lambda _: editor.is_displayed())
    invert = editor.find_element(By.CSS_SELECTOR, "[data-editor-invert]")
    assert invert.get_attribute("aria-pressed") == "true"
    assert Select(browser.find_element(By.NAME, "model")).first_selected_option.get_attribute(
        "value"
    ) == ("fashion_mnist")
    editor.find_element(By.CSS_SELECTOR, "[data-editor-apply]").click()
    # The edited file is made asynchronously (canvas.toBlob); a person sees the editor close
    # and the edited file listed before classifying, and so does the test.
    WebDriverWait(browser, 20).until(
        lambda _: not editor.is_displayed() and "-edited." in browser.page_source
    )
    first = Prediction.objects.get()
    browser.find_element(By.CSS_SELECTOR, "[data-submit]").click()
    WebDriverWait(browser, 60).until(lambda _: Prediction.objects.count() == 2)
    second = Prediction.objects.exclude(pk=first.pk).get()
    assert second.model_name == "fashion_mnist"
    with second.upload.image.open("rb") as file:
        stored = np.asarray(Image.open(file).convert("L"))
    assert np.array_equal(stored, 255 - pixels)
    assert "data-invert-link" not in browser.page_source  # dark background now: no suggestion


def test_a_light_border_on_a_dark_background_model_is_the_only_suggestion_to_invert():
    """suggests_inverting: light border for a dark-background model yes; dark border, a flat
    image, or a model expecting any background, no."""
    from research.serving import expectations

    light = np.full((28, 28, 1), 250, np.uint8)
    light[10:20, 4:24] = 20
    assert expectations.suggests_inverting("fashion_mnist", light)
    assert not expectations.suggests_inverting("fashion_mnist", 255 - light)
    assert not expectations.suggests_inverting("fashion_mnist", np.full((28, 28, 1), 250, np.uint8))
    assert not expectations.suggests_inverting("cifar10", np.repeat(light, 3, axis=-1))


def test_the_open_editor_has_no_serious_axe_violation_at_phone_width(
    browser,  # noqa: F811
    live_server,
    tmp_path,
):
    """axe-core on the home page with the editor open at 390 px: no serious or critical
    violation (labels, contrast, names of the canvas and the buttons)."""
    from .test_accessibility import AXE, BLOCKING, RUN_AXE

    path = tmp_path / "photo.png"
    Image.fromarray(_noise((40, 30))).save(path)
    _choose(browser, live_server, path, size=PHONE)
    browser.execute_script(AXE.read_text())
    browser.set_script_timeout(60)
    found = browser.execute_async_script(RUN_AXE)
    assert [v for v in found if v["impact"] in BLOCKING] == []


def test_an_edit_link_to_another_site_is_ignored(browser, live_server):  # noqa: F811
    """/?edit=<another site's image> fetches nothing: no file, no editor, no error."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(1280, 900)
    browser.get(
        live_server.url + reverse("uploads:classify") + "?edit=https://example.com/a.png&invert=1"
    )
    browser.execute_script("return new Promise((resolve) => setTimeout(resolve, 500))")
    assert (
        browser.execute_script("return document.querySelector('[name=images]').files.length") == 0
    )
    assert not browser.find_element(By.CSS_SELECTOR, "[data-editor]").is_displayed()
    assert not browser.find_element(By.CSS_SELECTOR, "[data-client-error]").is_displayed()
