"""Teaching through the pages in a real headless Chromium at a phone's width (390 px): name
three classes, upload generated examples, Train, watch the real worker's progress until the
model is served, classify with it, delete it (files, rows, model directory gone)."""

import pytest
from django.urls import reverse

from teaching import files
from teaching.models import Example, TaughtClassifier, TrainingJob
from tests.web.teach_helpers import COLOURS, example_png, make_teach_env, start_worker, stop
from tests.web.test_accessibility import violations
from tests.web.test_browser import browser, needs_chromium  # noqa: F401  (a fixture)
from uploads.models import Prediction, ServedModel

pytestmark = [
    needs_chromium,
    pytest.mark.django_db(transaction=True),
]
EXAMPLES_PER_CLASS = 6
TRAIN_TIMEOUT_S = 300
PHONE_WIDTH = 390


@pytest.fixture
def teach_env(settings, tmp_path, model_dirs):
    yield from make_teach_env(settings, tmp_path, model_dirs)


def _fits_the_width(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_teach_train_classify_and_delete_through_the_pages(
    browser,  # noqa: F811
    live_server,
    teach_env,
    tmp_path,
):
    """The whole flow a visitor follows, with the worker a deployment runs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(PHONE_WIDTH, 900)
    for colour in COLOURS:
        for i in range(EXAMPLES_PER_CLASS):
            (tmp_path / f"{colour}{i}.png").write_bytes(example_png(colour, i))
    worker = start_worker(teach_env, tmp_path / "worker.log")
    try:
        browser.get(live_server.url + reverse("teaching:list"))
        browser.find_element(By.ID, "id_name").send_keys("colours")
        browser.find_element(By.ID, "id_class_names").send_keys("\n".join(COLOURS))
        browser.find_element(By.CSS_SELECTOR, ".teach-form button[type=submit]").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "classes-heading")))
        classifier = TaughtClassifier.objects.get()
        assert _fits_the_width(browser)

        for taught_class in classifier.classes.all():
            paths = [
                str(tmp_path / f"{taught_class.name}{i}.png") for i in range(EXAMPLES_PER_CLASS)
            ]
            field = browser.find_element(By.ID, f"images-{taught_class.pk}")
            field.send_keys("\n".join(paths))
            field.find_element(By.XPATH, "ancestor::form//button[@type='submit']").click()
            WebDriverWait(browser, 30).until(
                lambda d, c=taught_class: (
                    len(
                        d.find_elements(
                            By.CSS_SELECTOR, f'[data-class="{c.name}"] .teach-thumbs img'
                        )
                    )
                    == EXAMPLES_PER_CLASS
                )
            )
        assert Example.objects.count() == 3 * EXAMPLES_PER_CLASS
        status = browser.find_element(By.CSS_SELECTOR, "[data-job-status]")
        assert status.get_attribute("aria-live") == "polite"

        browser.find_element(By.CSS_SELECTOR, "[data-train]").click()
        # The page polls the status, then reloads with the accuracy and the classify form.
        WebDriverWait(browser, TRAIN_TIMEOUT_S).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "[data-classify]"))
        )
        job = TrainingJob.objects.get()
        assert job.published, (job.error, (tmp_path / "worker.log").read_text())
        accuracy = browser.find_element(By.CSS_SELECTOR, "[data-job-accuracy]").text
        assert "held-out examples" in accuracy and "too few" in accuracy
        assert _fits_the_width(browser)
    finally:
        stop(worker)

    image = tmp_path / "query.png"
    image.write_bytes(example_png("blue", 77))
    browser.find_element(By.ID, "classify-images").send_keys(str(image))
    browser.find_element(By.CSS_SELECTOR, "[data-classify]").click()
    WebDriverWait(browser, 60).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "[data-result-label]"))
    )
    prediction = Prediction.objects.get()
    assert prediction.model_name == classifier.model_name
    assert prediction.model_version == job.version

    browser.get(live_server.url + classifier.get_absolute_url())
    model_dir = files.models_root() / classifier.model_name
    assert model_dir.is_dir() and any(files.examples_root().rglob("*.png"))
    browser.find_element(By.CSS_SELECTOR, "[data-delete]").click()
    WebDriverWait(browser, 30).until(ec.url_to_be(live_server.url + reverse("teaching:list")))
    assert not TaughtClassifier.objects.exists() and not Example.objects.exists()
    assert not TrainingJob.objects.exists()
    assert not ServedModel.objects.filter(name=classifier.model_name).exists()
    assert not model_dir.exists()
    assert not list(files.examples_root().rglob("*.*"))
    # The visitor's own upload and its answer stay in their history, naming the version.
    browser.get(live_server.url + prediction.get_absolute_url())
    assert browser.find_elements(By.CSS_SELECTOR, "[data-result-label]")


@pytest.mark.parametrize("size", [(1280, 900), (PHONE_WIDTH, 844)], ids=["desktop", "phone"])
def test_teach_pages_pass_axe_and_a_drawing_becomes_an_example(
    browser,  # noqa: F811
    live_server,
    settings,
    tmp_path,
    model_dirs,
    size,
):
    """The list and a drawings classifier's page have no serious or critical axe-core
    violation and no sideways scroll; drawing on the canvas and adding it stores an example
    with source 'drawing'."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    settings.TEACH_ROOT = tmp_path / "teach"
    settings.TEACH_BACKBONES = {"fashion_mnist": model_dirs["fashion_mnist"]}
    browser.set_window_size(*size)
    url = live_server.url + reverse("teaching:list")
    assert not violations(browser, url)
    browser.find_element(By.ID, "id_name").send_keys("clothes")
    browser.find_element(By.ID, "id_class_names").send_keys("sock\nhat")
    browser.find_element(By.CSS_SELECTOR, ".teach-form button[type=submit]").click()
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "classes-heading")))
    classifier = TaughtClassifier.objects.get()
    assert not violations(browser, live_server.url + classifier.get_absolute_url())
    assert _fits_the_width(browser)

    sock = browser.find_element(By.CSS_SELECTOR, '[data-class="sock"]')
    sock.find_element(By.CSS_SELECTOR, "[data-draw-button]").click()
    canvas = sock.find_element(By.CSS_SELECTOR, "[data-canvas]")
    assert canvas.is_displayed()
    (
        ActionChains(browser)
        .move_to_element_with_offset(canvas, -40, -40)
        .click_and_hold()
        .move_by_offset(60, 20)
        .move_by_offset(10, 60)
        .release()
        .perform()
    )
    sock.find_element(By.CSS_SELECTOR, "[data-capture]").click()
    WebDriverWait(browser, 30).until(lambda d: Example.objects.count() == 1)
    example = Example.objects.get()
    assert example.source == "drawing" and example.taught_class.name == "sock"
    sock.find_element(By.CSS_SELECTOR, "[data-close]").click()
    WebDriverWait(browser, 30).until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, '[data-class="sock"] .teach-thumbs img')) == 1
        )
    )
