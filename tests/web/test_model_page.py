"""A model's page: card, per-class accuracy, curves, confusion cells and their examples, read
from the report research.model_report writes (here written for the tiny model)."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from research.evaluation import report as model_report
from research.serving import artifacts
from research.serving.classifier import Classifier
from tests.web.test_browser import browser, needs_chromium  # noqa: F401 (a fixture)
from uploads import model_pages

CLASSES = 10
PER_CELL = 2
# Mistakes planted in the tiny report: true class 0 answered as 1 four times (only the two
# most confident are kept), true 3 answered as 5 once.
PLANTED = {(0, 1): [0, 10, 20, 30], (3, 5): [3]}


def write_tiny_report(model: Path) -> Path:
    """A report of 40 images with planted mistakes, written by research.model_report's own
    writer for the tiny model at `model`."""
    clf = Classifier.load(model)
    labels = np.arange(40) % CLASSES
    logits = np.zeros((40, CLASSES))
    answers = labels.copy()
    for (_, predicted), indices in PLANTED.items():
        answers[indices] = predicted
    logits[np.arange(40), answers] = 4.0 + np.arange(40) / 10  # later images: surer
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    images = np.stack([np.full((32, 32, 3), i * 6, np.uint8) for i in range(40)])
    collector = model_report.MistakeCollector(1.0, PER_CELL)
    collector(images[:16], log_probs[:16], labels[:16])  # two batches, as evaluation gives
    collector(images[16:], log_probs[16:], labels[16:])
    confusion = np.zeros((CLASSES, CLASSES), np.int64)
    np.add.at(confusion, (labels, answers), 1)
    metrics = {
        "count": 40,
        "accuracy": float(confusion.trace() / 40),
        "loss": 0.5,
        "per_class_accuracy": (confusion.diagonal() / confusion.sum(1)).tolist(),
        "confusion": confusion.tolist(),
    }
    return model_report.write_report(
        model / artifacts.REPORT_DIR,
        clf,
        metrics,
        collector,
        model=model,
        workdir=None,
        split="validation",
    )


@pytest.fixture(scope="module")
def reported_model(tiny_model_dir, tmp_path_factory) -> Path:
    """A copy of the tiny CIFAR-10 model with a report and a model card."""
    model = tmp_path_factory.mktemp("reported") / "cifar10"
    shutil.copytree(tiny_model_dir, model)
    write_tiny_report(model)
    (model / "MODEL_CARD.md").write_text(
        "# tiny-card\n\nTrained on **colours**. <script>alert(1)</script>\n\n"
        "| | |\n|---|---|\n| Dataset | `cifar10` |\n\n```\npython -m research.train\n```\n"
    )
    return model


@pytest.fixture
def reported(settings, reported_model, model_dirs) -> Path:
    """The site serves the reported copy as 'cifar10'."""
    settings.CLASSIFIER_MODELS = {**model_dirs, "cifar10": reported_model}
    return reported_model


def model_url(name: str = "cifar10") -> str:
    return reverse("uploads:model", args=[name])


def cell_url(true: int, predicted: int, name: str = "cifar10") -> str:
    return reverse("uploads:model-confusion", args=[name, true, predicted])


@pytest.mark.django_db
def test_model_page_shows_card_per_class_accuracy_and_confusion_links(client, reported):
    """The page renders the card (escaped), one accuracy bar per class and a link for each
    non-empty off-diagonal confusion cell, and nothing for the diagonal."""
    response = client.get(model_url())
    html = response.content.decode()
    assert response.status_code == 200
    assert "<strong>colours</strong>" in html and "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("data-class-row") == CLASSES
    assert "data-accuracy>87.5%" in html  # 35 of 40 right, the one accuracy on the page
    assert f'href="{cell_url(0, 1)}"' in html and f'href="{cell_url(3, 5)}"' in html
    assert html.count("data-cell=") == len(PLANTED)
    assert "data-no-curves" in html  # the tiny model recorded no run
    assert "data-no-robustness" in html


@pytest.mark.django_db
def test_confusion_cell_lists_its_most_confident_examples(client, reported):
    """A cell's page shows that pair's kept examples, the most confident first, with their
    confidences, and says how many it leaves out."""
    response = client.get(cell_url(0, 1))
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count("data-mistake>") == PER_CELL
    images = [
        reverse("uploads:model-report-file", args=["cifar10", f"examples/0-1/{k}.png"])
        for k in range(PER_CELL)
    ]
    assert html.index(images[0]) < html.index(images[1])
    assert "#30" in html and "#20" in html and "#10" not in html  # the two surest of four
    assert "4 of the 4 airplane images" in html


@pytest.mark.django_db
def test_example_thumbnail_is_served_as_png(client, reported):
    """A thumbnail URL from the cell page answers the image the model saw, as a PNG."""
    response = client.get(
        reverse("uploads:model-report-file", args=["cifar10", "examples/3-5/0.png"])
    )
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    image = np.asarray(Image.open(io.BytesIO(b"".join(response.streaming_content))))
    assert image.shape == (32, 32, 3) and (image == 3 * 6).all()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/models/nope/",
        "/models/nope/confusion/0/1/",
        "/models/cifar10/confusion/0/0/",  # the diagonal holds no mistakes
        "/models/cifar10/confusion/0/10/",
        "/models/cifar10/confusion/10/0/",
        "/models/nope/report/confusion.png",
        "/models/cifar10/report/report.json",
        "/models/cifar10/report/examples/9-9/0.png",
        "/models/cifar10/report/examples/0-1/7.png",
    ],
)
def test_unknown_models_cells_and_files_are_404(client, reported, url):
    """Unknown models, diagonal or out-of-range cells and unlisted files are 404 pages."""
    assert client.get(url).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "relative",
    [
        "../MODEL_CARD.md",
        "examples/../../1/meta/metadata",
        "%2e%2e/%2e%2e/MODEL_CARD.md",
        "examples/0-1/../../../MODEL_CARD.md",
        "/etc/passwd",
    ],
)
def test_report_files_refuse_path_traversal(client, reported, relative):
    """No path out of the report folder is served, however it is spelled."""
    assert client.get(f"/models/cifar10/report/{relative}").status_code == 404
    with pytest.raises(model_pages.NoSuchFile):
        model_pages.report_file(name="cifar10", relative=relative)


@pytest.mark.django_db
def test_model_without_report_says_how_to_make_one(client):
    """A model with no report still has its page, saying the figures are not measured yet."""
    response = client.get(model_url("fashion_mnist"))
    assert response.status_code == 200
    assert "data-no-report" in response.content.decode()
    assert client.get(cell_url(0, 1, "fashion_mnist")).status_code == 404


@pytest.mark.django_db
def test_robustness_table_is_shown_when_the_model_has_one(client, reported):
    """robustness.json beside the model becomes a table on its page."""
    path = reported / model_pages.ROBUSTNESS_FILE
    path.write_text('{"rows": [{"corruption": "gaussian_noise", "accuracy": 0.5}]}')
    try:
        html = client.get(model_url()).content.decode()
    finally:
        path.unlink()
    assert "gaussian_noise" in html and "50.00%" in html and "data-no-robustness" not in html


@pytest.mark.django_db
def test_robustness_records_markdown_table_is_rendered_escaped(client, reported):
    """research.robustness's record: its markdown table becomes an HTML table, escaped."""
    path = reported / model_pages.ROBUSTNESS_FILE
    path.write_text(
        '{"split": "validation", "count": 100, "table": "| corruption | severity 3 |\\n'
        '|---|---:|\\n| fog <b>x</b> | 61.00% |\\n| **mean** | **61.00%** |"}'
    )
    try:
        html = client.get(model_url()).content.decode()
    finally:
        path.unlink()
    assert "<td>fog &lt;b&gt;x&lt;/b&gt;</td>" in html and "<strong>61.00%</strong>" in html
    assert "100 images of the validation split" in html


def test_markdown_renderer_escapes_html_and_keeps_only_http_links():
    """Card Markdown renders headings, tables and code; raw HTML and javascript: links do not
    survive."""
    html = model_pages.render_markdown(
        "## Title\n\n<img src=x onerror=alert(1)> [a](javascript:alert(1)) [b](https://e.org)\n"
        "\n| x | y |\n|---|---|\n| `<b>` | **z** |\n"
    )
    assert "<h4>Title</h4>" in html and "<img" not in html
    assert 'href="javascript' not in html and '<a href="https://e.org"' in html
    assert "<td><code>&lt;b&gt;</code></td>" in html and "<strong>z</strong>" in html


# ----------------------------------------------------------------------------- browser


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_browser_clicks_a_confusion_cell_and_sees_its_examples(
    browser,  # noqa: F811
    live_server,
    reported,
):
    """In Chromium: the model page fits 390 px, and a click on a confusion cell opens that
    pair's examples, every thumbnail loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(390, 844)
    try:
        browser.get(live_server.url + model_url())
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390
        browser.find_element(By.CSS_SELECTOR, '[data-cell="3-5"]').click()
        WebDriverWait(browser, 30).until(
            lambda driver: driver.find_elements(By.CSS_SELECTOR, "[data-mistake]")
        )
        assert browser.current_url == live_server.url + cell_url(3, 5)
        assert "cat" in browser.find_element(By.CSS_SELECTOR, "[data-cell-title]").text
        image = browser.find_element(By.CSS_SELECTOR, "[data-mistake] img")
        loaded = "return arguments[0].complete && arguments[0].naturalWidth"
        WebDriverWait(browser, 30).until(lambda driver: driver.execute_script(loaded, image))
        assert browser.execute_script("return arguments[0].naturalWidth", image) == 32
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    finally:
        browser.set_window_size(1280, 900)


SHIPPED = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_a_shipped_model_page_speaks_plainly_with_one_accuracy_and_one_robustness_table(
    client, settings, name
):
    """Outside the (collapsed) model card: one accuracy, naming its split, no "temperature",
    score names or issue numbers; the robustness table appears once, the card's left out."""
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "shipped": SHIPPED / name}
    html = client.get(reverse("uploads:model", args=["shipped"])).content.decode()
    page, card = html.split("data-model-card", 1)
    report = json.loads((SHIPPED / name / "report" / "report.json").read_text())
    assert page.count("data-accuracy") == 1
    assert f"Accuracy on {report['split']}</dt><dd data-accuracy>" in page
    assert f"{report['accuracy'] * 100:.1f}%" in page
    for jargon in ("emperature", "energy", "activations", "issue 13", "max-softmax"):
        assert jargon not in page, jargon
    assert html.count("mean of the seven common ones") == 1
    assert "Robustness to common corruptions" not in card
    assert "<details>" in page  # the card starts collapsed
