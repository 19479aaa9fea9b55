"""End to end in a real headless Chromium: upload through the page, read the result."""

import base64
import io

import pytest
from django.urls import reverse
from PIL import Image

from benchmarks import browser as browser_tools
from uploads.models import Prediction

needs_chromium = pytest.mark.skipif(not browser_tools.available(), reason=browser_tools.MISSING)
pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium with a throw-away profile, driven by Selenium."""
    with browser_tools.headless_chromium() as driver:
        yield driver


@pytest.mark.django_db(transaction=True)
def test_upload_through_the_page_and_read_the_result(browser, live_server, tmp_path):
    """A person picks a file, submits the form and sees the label with its probability bars."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image_path = tmp_path / "red square.png"
    Image.new("RGB", (48, 48), (220, 30, 30)).save(image_path)

    browser.get(live_server.url + reverse("uploads:classify"))
    assert "js" in browser.find_element(By.TAG_NAME, "html").get_attribute("class")
    Select(browser.find_element(By.NAME, "model")).select_by_value("cifar10")
    browser.find_element(By.NAME, "images").send_keys(str(image_path))
    previews = browser.find_elements(By.CSS_SELECTOR, "[data-previews] li")
    assert len(previews) == 1 and "red square.png" in previews[0].text
    browser.find_element(By.CSS_SELECTOR, "[data-submit]").click()

    label = WebDriverWait(browser, 60).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[data-result-label]"))
    )
    prediction = Prediction.objects.get()
    assert browser.current_url == live_server.url + prediction.get_absolute_url()
    assert label.text.lower() == prediction.answer.headline.lower()
    assert len(browser.find_elements(By.CSS_SELECTOR, "meter.bar-meter")) == 5
    image = browser.find_element(By.CSS_SELECTOR, "img.result-image")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 48
    assert prediction.upload.original_name == "red square.png"


@pytest.mark.django_db(transaction=True)
def test_saliency_toggle_loads_the_overlay_on_first_click(browser, live_server, tmp_path):
    """The overlay is not fetched with the page; one click on the toggle loads and shows it,
    and the model's-eye view shows the model's input size."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    image_path = tmp_path / "blue.png"
    image_path.write_bytes(png_bytes(size=(48, 40)))
    browser.get(live_server.url + reverse("uploads:classify"))  # results are the uploader's
    browser.find_element(By.NAME, "images").send_keys(str(image_path))
    browser.find_element(By.CSS_SELECTOR, "[data-submit]").click()
    WebDriverWait(browser, 60).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[data-result-label]"))
    )
    overlay = browser.find_element(By.CSS_SELECTOR, "[data-saliency-image]")
    assert overlay.get_attribute("src") in (None, "") and not overlay.is_displayed()

    browser.find_element(By.CSS_SELECTOR, 'label[for="saliency-toggle"]').click()

    loaded = "return arguments[0].complete && arguments[0].naturalWidth"
    WebDriverWait(browser, 60).until(lambda driver: driver.execute_script(loaded, overlay))
    assert overlay.is_displayed()
    assert browser.execute_script("return arguments[0].naturalHeight", overlay) == 40
    eye = browser.find_element(By.CSS_SELECTOR, "img.model-input")
    WebDriverWait(browser, 30).until(lambda driver: driver.execute_script(loaded, eye))
    assert browser.execute_script("return arguments[0].naturalWidth", eye) == 32


@pytest.mark.django_db(transaction=True)
def test_dropped_and_pasted_files_join_the_form(browser, live_server):
    """Drag-and-drop and paste add image files to the form, with a preview each."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live_server.url + reverse("uploads:classify"))
    count = browser.execute_script(
        """
        const pixel = atob(arguments[0]);
        const bytes = Uint8Array.from(pixel, c => c.charCodeAt(0));
        const file = name => new File([bytes], name, {type: "image/png"});
        const dropped = new DataTransfer();
        dropped.items.add(file("dropped.png"));
        document.querySelector("[data-dropzone]").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dropped, bubbles: true, cancelable: true}));
        const pasted = new DataTransfer();
        pasted.items.add(file("pasted.png"));
        document.dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: pasted, bubbles: true, cancelable: true}));
        return document.querySelector('input[name="images"]').files.length;
        """,
        base64.b64encode(png_bytes()).decode(),
    )
    previews = browser.find_elements(By.CSS_SELECTOR, "[data-previews] li")
    assert count == 2
    assert ["dropped.png" in previews[0].text, "pasted.png" in previews[1].text] == [True, True]
    browser.find_element(By.CSS_SELECTOR, "[data-submit]").click()
    WebDriverWait(browser, 60).until(lambda driver: "2 images classified" in driver.page_source)
    assert Prediction.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_page_names_each_file_it_skips_before_sending_anything(browser, live_server):
    """A dropped text file and a 12.6 MB image are kept out of the form, each named with its
    reason in the alert; the image beside them stays."""
    from selenium.webdriver.common.by import By

    browser.get(live_server.url + reverse("uploads:classify"))
    count = browser.execute_script(
        """
        const pixel = atob(arguments[0]);
        const bytes = Uint8Array.from(pixel, c => c.charCodeAt(0));
        const dropped = new DataTransfer();
        dropped.items.add(new File([bytes], "photo.png", {type: "image/png"}));
        dropped.items.add(new File(["some notes"], "notes.txt", {type: "text/plain"}));
        dropped.items.add(new File([new Uint8Array(12600000)], "big.jpg", {type: "image/jpeg"}));
        document.querySelector("[data-dropzone]").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dropped, bubbles: true, cancelable: true}));
        return document.querySelector('input[name="images"]').files.length;
        """,
        base64.b64encode(png_bytes()).decode(),
    )
    assert count == 1
    error = browser.find_element(By.CSS_SELECTOR, "[data-client-error]")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert "notes.txt (not an image)" in error.text
    assert "big.jpg (12.6 MB, over the" in error.text


def png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


# The widest option's text, in the select's own font, against the room the select gives it
# (its width less its padding, whose right side holds the arrow).
SELECT_ROOM = """
const select = arguments[0];
const style = getComputedStyle(select);
const context = document.createElement("canvas").getContext("2d");
context.font = style.font;
const widest = Math.max(...[...select.options].map((o) => context.measureText(o.text).width));
const room = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
const box = select.getBoundingClientRect();
const viewport = document.documentElement.clientWidth;
return {widest, room, left: box.left, right: box.right, viewport};
"""


@pytest.mark.django_db(transaction=True)
def test_on_a_phone_the_right_class_menu_shows_every_option_whole(browser, live_server, tmp_path):
    """At 390x844 the result page's 'Choose the right class' menu lies inside the screen and is
    wide enough for its longest option, and each class can be chosen and sent."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image_path = tmp_path / "photo.png"
    image_path.write_bytes(png_bytes(size=(48, 48)))
    browser.set_window_size(390, 844)
    try:
        browser.get(live_server.url + reverse("uploads:classify"))
        browser.find_element(By.NAME, "images").send_keys(str(image_path))
        browser.find_element(By.CSS_SELECTOR, "[data-submit]").click()
        WebDriverWait(browser, 60).until(
            expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, "[data-result-label]")
            )
        )
        element = browser.find_element(By.CSS_SELECTOR, "[data-feedback-form] select")
        room = browser.execute_script(SELECT_ROOM, element)
        assert room["left"] >= 0 and room["right"] <= room["viewport"], room
        assert room["widest"] <= room["room"], room
        menu = Select(element)
        prediction = Prediction.objects.get()
        others = [o.get_attribute("value") for o in menu.options if o.get_attribute("value")]
        assert sorted(others) == sorted(
            n for n in prediction.probabilities if n != prediction.label
        )
        menu.select_by_value(others[-1])
        browser.find_element(By.CSS_SELECTOR, "[data-feedback-form] [value='wrong']").click()
        WebDriverWait(browser, 30).until(lambda _: prediction.feedback.exists())
        assert prediction.feedback.get().label == others[-1]
    finally:
        browser.set_window_size(1280, 900)
