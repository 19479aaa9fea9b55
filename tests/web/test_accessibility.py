"""axe-core (vendored, tests/web/vendor/axe-core) on every page in headless Chromium: no serious
or critical violation, at desktop and phone widths."""

from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image

from uploads.models import Prediction

from .test_browser import browser, needs_chromium  # noqa: F401 (the fixture)
from .test_live import PHONE

ROOT = Path(__file__).resolve().parents[2]
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")

pytestmark = needs_chromium

RUN_AXE = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ["violations"]}).then(
  (results) => done(results.violations.map((v) => ({
    id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")),
  }))),
  (error) => done([{id: "axe-error", impact: "critical", nodes: [String(error)]}]),
);
"""


def violations(driver, url: str) -> list[dict]:
    """axe-core's serious and critical violations on the page at `url`."""
    driver.get(url)
    driver.execute_script(AXE.read_text())
    driver.set_script_timeout(60)
    found = driver.execute_async_script(RUN_AXE)
    return [f"{v['id']} ({v['impact']}): {v['nodes']}" for v in found if v["impact"] in BLOCKING]


def _pages(driver, live_server, tmp_path) -> dict[str, str]:
    """Every page, with a result of this browser's own, uploaded through the form."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "photo.png"
    Image.new("RGB", (48, 48), (120, 160, 60)).save(image)
    url = live_server.url
    driver.get(url + reverse("uploads:classify"))
    driver.find_element(By.NAME, "images").send_keys(str(image))
    driver.find_element(By.CSS_SELECTOR, "[data-submit]").click()
    WebDriverWait(driver, 60).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[data-result-label]"))
    )
    prediction = Prediction.objects.latest("id")
    return {
        "classify": url + reverse("uploads:classify"),
        "result": url + prediction.get_absolute_url(),
        "history": url + reverse("uploads:history"),
        "share": url + prediction.get_share_url(),
        "model cifar10": url + reverse("uploads:model", args=["cifar10"]),
        "model fashion_mnist": url + reverse("uploads:model", args=["fashion_mnist"]),
        "shipped model cifar10": url + reverse("uploads:model", args=["shipped-cifar10"]),
        "shipped model fashion_mnist": url
        + reverse("uploads:model", args=["shipped-fashion_mnist"]),
        "confusion cell": url + reverse("uploads:model-confusion", args=["shipped-cifar10", 3, 5]),
        "api docs": url + reverse("uploads:api-docs"),
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("size", [(1280, 900), PHONE], ids=["desktop", "phone"])
def test_no_page_has_a_serious_or_critical_axe_violation(
    browser,  # noqa: F811
    live_server,
    tmp_path,
    settings,
    size,
):
    """Home, a result, history, a share page, the model pages (the shipped models' too, with
    their cards, figures and tables), a confusion cell and the API docs pass axe-core with no
    serious or critical violation."""
    # Model pages read files only: the shipped directories are listed, never loaded.
    settings.CLASSIFIER_MODELS = {
        **settings.CLASSIFIER_MODELS,
        "shipped-cifar10": ROOT / "models" / "cifar10",
        "shipped-fashion_mnist": ROOT / "models" / "fashion_mnist",
    }
    browser.set_window_size(*size)
    pages = _pages(browser, live_server, tmp_path)
    found = {name: violations(browser, url) for name, url in pages.items()}
    failing = {name: v for name, v in found.items() if v}
    assert not failing, "\n".join(f"{name}: {v}" for name, v in failing.items())
