"""A model's page, from files: the report research.model_report wrote, the model card, the
robustness table, and the live feedback accuracy (uploads.services.summarize_model).

The web never evaluates a model or imports TensorFlow for this: everything measured is read
from ``<model>/report/`` (report.json, confusion.png, curves.png, examples/...). A model
without a report still gets its page, saying how to make one.

    page = model_page(name="cifar10")          # raises classifiers.UnknownModelError
    cell = confusion_cell(name="cifar10", true=3, predicted=5)   # raises NoSuchCell
    path = report_file(name="cifar10", relative="examples/3-5/0.png")  # raises NoSuchFile
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe

from research.serving.artifacts import (
    CALIBRATION_DIR,
    CALIBRATION_FILE,
    CARD_FILE,
    CONFUSION_FILE,
    CURVES_FILE,
    REPORT_DIR,
    REPORT_EXAMPLES_DIR,
    REPORT_FILE,
    REPORT_FORMAT,
    RISK_COVERAGE_FILE,
    ROBUSTNESS_FILE,
)
from uploads import classifiers, services

log = logging.getLogger(__name__)

# The only report files served: the two figures and the example thumbnails.
_REPORT_FILE_NAME = re.compile(
    rf"(?:{re.escape(CONFUSION_FILE)}|{re.escape(CURVES_FILE)}|{REPORT_EXAMPLES_DIR}/\d{{1,4}}-\d{{1,4}}/\d{{1,4}}\.png)"
)
# A confusion cell's shade class (.shade-0 .. .shade-5) by its share of the row.
SHADES = 5


class NoSuchCell(LookupError):
    """A confusion cell that the model's report does not have."""


class NoSuchFile(LookupError):
    """A report file that is not served (unknown name, or not written)."""


@dataclass(frozen=True)
class ClassRow:
    name: str
    count: int
    accuracy: float


@dataclass(frozen=True)
class MatrixCell:
    true: int
    predicted: int
    count: int
    shade: int  # 0 (empty) .. SHADES (the whole row)
    predicted_name: str
    url: str  # the cell's examples page; '' on the diagonal and for empty cells


@dataclass(frozen=True)
class MatrixRow:
    index: int
    name: str
    cells: list[MatrixCell]


@dataclass(frozen=True)
class ExampleImage:
    url: str
    index: int  # position in the split
    confidence: float  # of the wrong answer, calibrated
    true_probability: float


@dataclass(frozen=True)
class Report:
    """What the page shows of research.model_report's report.json."""

    data: dict[str, Any]
    classes: list[ClassRow]
    matrix: list[MatrixRow]
    has_curves: bool
    curves_note: str
    curve_points: list[dict[str, Any]]
    per_cell: int
    examples_total: int

    def __getattr__(self, key: str) -> Any:  # report.accuracy, report.split, ...
        if key == "data":
            raise AttributeError(key)
        try:
            return self.data[key]
        except KeyError:
            raise AttributeError(key) from None


@dataclass(frozen=True)
class Robustness:
    """A table read from robustness.json (research.robustness): header and rows of text."""

    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    html: SafeString | None = None  # research.robustness's own markdown table, rendered


@dataclass(frozen=True)
class AnswerSets:
    """How the model's prediction sets did where they were measured (calibration.json)."""

    coverage: float  # the promised share of sets holding the true class
    measured_coverage: float
    mean_size: float
    single: float  # share of images answered with one class
    single_accuracy: float | None
    count: int
    split: str  # 'test', or the validation folds
    has_risk_coverage: bool


@dataclass
class ModelPage:
    summary: services.ModelSummary
    report: Report | None
    card_html: SafeString
    robustness: Robustness | None
    facts: list[tuple[str, str]] = field(default_factory=list)
    sets: AnswerSets | None = None


@dataclass(frozen=True)
class CellPage:
    name: str
    summary: services.ModelSummary
    true_name: str
    predicted_name: str
    count: int  # images of this pair in the split
    true_count: int  # images of the true class in the split
    split: str
    images: list[ExampleImage]
    per_cell: int


# ----------------------------------------------------------------------------- reading


def report_dir(name: str) -> Path:
    """The report folder of a configured model (UnknownModelError otherwise)."""
    return classifiers.get_model_dir(name) / REPORT_DIR


def read_report_data(name: str) -> dict[str, Any] | None:
    """report.json of a configured model, or None when it has none (or one this code cannot
    read: logged, and the page says there is no report)."""
    path = report_dir(name) / REPORT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != REPORT_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {REPORT_FORMAT}")
        n = len(data["class_names"])
        if len(data["confusion"]) != n or any(len(row) != n for row in data["confusion"]):
            raise ValueError("the confusion matrix does not match the classes")
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("Ignoring the report of model %s (%s): %s", name, path, error)
        return None
    return data


def read_answer_sets(name: str) -> AnswerSets | None:
    """The prediction sets' measured coverage and size from the model's calibration.json, or
    None when it has none (or an unreadable one: logged)."""
    directory = classifiers.get_model_dir(name) / CALIBRATION_DIR
    path = directory / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        sets = json.loads(path.read_text())["sets"]
        reported = sets["reported"][sets["method"]]
        split = str(sets["report_split"])
        return AnswerSets(
            coverage=float(sets["coverage"]),
            measured_coverage=float(reported["coverage"]),
            mean_size=float(reported["mean_size"]),
            single=float(reported["single"]),
            single_accuracy=reported.get("single_accuracy"),
            count=int(reported["count"]),
            split="test" if split == "test" else "validation",
            has_risk_coverage=(directory / RISK_COVERAGE_FILE).is_file(),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("Ignoring the prediction-set figures of model %s (%s): %s", name, path, error)
        return None


def risk_coverage_file(*, name: str) -> Path:
    """The model's risk-coverage PNG (NoSuchFile when it has none)."""
    path = classifiers.get_model_dir(name) / CALIBRATION_DIR / RISK_COVERAGE_FILE
    if not path.is_file():
        raise NoSuchFile(RISK_COVERAGE_FILE)
    return path


def load_report(name: str) -> Report | None:
    data = read_report_data(name)
    if data is None:
        return None
    names = data["class_names"]
    confusion = data["confusion"]
    classes = [
        ClassRow(name=n, count=int(c), accuracy=float(a))
        for n, c, a in zip(names, data["per_class_count"], data["per_class_accuracy"], strict=True)
    ]
    matrix = []
    for i, row in enumerate(confusion):
        total = max(sum(row), 1)
        cells = [
            MatrixCell(
                true=i,
                predicted=j,
                count=int(count),
                shade=0 if not count else max(1, round(SHADES * count / total)),
                predicted_name=names[j],
                url=(
                    reverse("uploads:model-confusion", args=[name, i, j])
                    if count and i != j
                    else ""
                ),
            )
            for j, count in enumerate(row)
        ]
        matrix.append(MatrixRow(index=i, name=names[i], cells=cells))
    curves = data.get("curves") or {}
    examples = data.get("examples") or {}
    return Report(
        data=data,
        classes=classes,
        matrix=matrix,
        has_curves=bool(curves.get("available")) and (report_dir(name) / CURVES_FILE).is_file(),
        curves_note=str(curves.get("note") or ""),
        curve_points=list(curves.get("points") or []),
        per_cell=int(examples.get("per_cell") or 0),
        examples_total=int(examples.get("images") or 0),
    )


def report_file(*, name: str, relative: str) -> Path:
    """The path of a servable report file: a figure or an example thumbnail of a configured
    model's report, nothing else (NoSuchFile; UnknownModelError for an unknown model)."""
    if not _REPORT_FILE_NAME.fullmatch(relative):
        raise NoSuchFile(relative)
    root = report_dir(name).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NoSuchFile(relative)
    return path


def confusion_cell(*, name: str, true: int, predicted: int) -> CellPage:
    """The misclassified examples of one true/predicted pair: NoSuchCell for the diagonal, a
    pair outside the classes, or a model without a report."""
    summary = services.summarize_model(name=name)
    data = read_report_data(name)
    if data is None:
        raise NoSuchCell("no report")
    names = data["class_names"]
    if true == predicted or not (0 <= true < len(names) and 0 <= predicted < len(names)):
        raise NoSuchCell(f"{true}-{predicted}")
    examples = data.get("examples") or {}
    cell = next(
        (
            c
            for c in examples.get("cells") or []
            if c.get("true") == true and c.get("predicted") == predicted
        ),
        {},
    )
    images = [
        ExampleImage(
            url=reverse("uploads:model-report-file", args=[name, item["file"]]),
            index=int(item["index"]),
            confidence=float(item["confidence"]),
            true_probability=float(item["true_probability"]),
        )
        for item in cell.get("images") or []
        if _REPORT_FILE_NAME.fullmatch(str(item.get("file", "")))
    ]
    return CellPage(
        name=name,
        summary=summary,
        true_name=names[true],
        predicted_name=names[predicted],
        count=int(data["confusion"][true][predicted]),
        true_count=int(sum(data["confusion"][true])),
        split=str(data.get("split", "")),
        images=images,
        per_cell=int(examples.get("per_cell") or 0),
    )


def read_robustness(name: str) -> Robustness | None:
    """The corruption table of robustness.json beside the model (research.robustness), as
    text cells, or None when the model has none. Reads research.robustness's record (its
    markdown "table", rendered escaped), else a list of row objects (under "rows", "table",
    "results" or "corruptions", or the file itself) or an object of objects."""
    path = classifiers.get_model_dir(name) / ROBUSTNESS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("Ignoring robustness table of model %s (%s): %s", name, path, error)
        return None
    note = ""
    rows: Any = data
    if isinstance(data, dict) and isinstance(data.get("table"), str):  # research.robustness
        note = (
            f"Accuracy on {data.get('count', '?')} images of the {data.get('split', '?')} "
            "split, each corrupted by every corruption at the severities shown."
        )
        return Robustness(columns=[], rows=[], note=note, html=render_markdown(data["table"]))
    if isinstance(data, dict):
        note = str(data.get("note") or data.get("description") or "")
        rows = next(
            (data[k] for k in ("rows", "table", "results", "corruptions") if k in data), data
        )
    if isinstance(rows, dict):
        rows = [
            {"corruption": key, **(value if isinstance(value, dict) else {"value": value})}
            for key, value in rows.items()
        ]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows) or not rows:
        log.warning("Robustness table of model %s has an unexpected shape", name)
        return None
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return Robustness(
        columns=[c.replace("_", " ") for c in columns],
        rows=[[_cell_text(row.get(c)) for c in columns] for row in rows],
        note=note,
    )


def _cell_text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2%}" if 0.0 <= value <= 1.0 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)[:80]
    return str(value)


# Card sections the page already shows in its own words: left out of the rendered card.
SHOWN_ELSEWHERE = ("Robustness to common corruptions",)


def read_card(name: str) -> SafeString:
    """MODEL_CARD.md beside the model, rendered to HTML (escaped: see `render_markdown`),
    without the sections the page shows itself (SHOWN_ELSEWHERE)."""
    path = classifiers.get_model_dir(name) / CARD_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return mark_safe("")
    return render_markdown(_without_sections(text, SHOWN_ELSEWHERE))


def _without_sections(text: str, titles: tuple[str, ...]) -> str:
    """Markdown `text` less each '## <title>' section (up to the next '## ' heading)."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            skipping = line[3:].strip() in titles
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def model_page(*, name: str) -> ModelPage:
    """Everything a model's page shows (UnknownModelError for an unknown name)."""
    summary = services.summarize_model(name=name)
    report = load_report(name)
    page = ModelPage(
        summary=summary,
        report=report,
        card_html=read_card(name),
        robustness=read_robustness(name),
        sets=read_answer_sets(name),
    )
    if report is not None:
        page.facts = [
            ("Trained", str(report.data.get("trained", ""))[:10]),
            ("Parameters", f"{int(report.data.get('parameters', 0)):,}"),
            ("Size on disk", _size(int(report.data.get("size_bytes", 0)))),
            ("Step", str(report.data.get("step", ""))),
        ]
    return page


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB" if size_bytes >= 1e6 else f"{size_bytes / 1e3:.0f} kB"


# ----------------------------------------------------------------------------- markdown

_FENCE = re.compile(r"^```")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*]|\d+\.)\s+(.*)$")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^\s)]+)\)")


def render_markdown(text: str) -> SafeString:
    """The Markdown of a model card as HTML: headings (one level below the page's), paragraphs,
    fenced code, pipe tables, lists, `code`, **bold** and http(s) links. Every character of
    the text is HTML-escaped first, so no markup in a card reaches the page."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            block = []
            i += 1
            while i < len(lines) and not _FENCE.match(lines[i]):
                block.append(lines[i])
                i += 1
            # Focusable, so a keyboard can scroll a wide block (axe: scrollable-region-focusable).
            code = html.escape(chr(10).join(block))
            out.append(f'<pre tabindex="0"><code>{code}</code></pre>')
            i += 1
            continue
        heading = _HEADING.match(line)
        if heading:
            level = min(len(heading.group(1)) + 2, 6)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
            continue
        if _is_table(lines, i):
            header = _cells(line)
            i += 2
            body = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                body.append(_cells(lines[i]))
                i += 1
            head = "".join(f"<th>{_inline(c)}</th>" for c in header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body
            )
            out.append(
                f'<div class="table-scroll" tabindex="0"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
            continue
        if _LIST_ITEM.match(line):
            items = []
            while i < len(lines) and _LIST_ITEM.match(lines[i]):
                items.append(f"<li>{_inline(_LIST_ITEM.match(lines[i]).group(1))}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
            continue
        if not line.strip():
            i += 1
            continue
        paragraph = []
        while i < len(lines) and lines[i].strip() and not _starts_block(lines, i):
            paragraph.append(lines[i].strip())
            i += 1
        out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return mark_safe("\n".join(out))  # noqa: S308 - every text piece went through html.escape


def _starts_block(lines: list[str], i: int) -> bool:
    line = lines[i]
    return bool(
        _FENCE.match(line) or _HEADING.match(line) or _LIST_ITEM.match(line) or _is_table(lines, i)
    )


def _is_table(lines: list[str], i: int) -> bool:
    """A pipe-table row followed by its |---| rule."""
    return bool(
        lines[i].lstrip().startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1])
    )


def _cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") else line
    return [cell.strip() for cell in line.split("|")]


def _inline(text: str) -> str:
    """Escaped text with `code`, **bold** and http(s) links."""
    spans: list[str] = []

    def keep(match: re.Match) -> str:
        spans.append(f"<code>{html.escape(match.group(1))}</code>")
        return f"\x00{len(spans) - 1}\x00"

    text = _CODE_SPAN.sub(keep, text.replace("\x00", ""))
    text = html.escape(text)
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _LINK.sub(r'<a href="\2" rel="nofollow noopener">\1</a>', text)
    return re.sub(r"\x00(\d+)\x00", lambda m: spans[int(m.group(1))], text)
