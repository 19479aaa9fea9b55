"""Every file name of a model directory, defined once: what the commands write and what the
web reads. A model directory holds its steps (`<step>/`, Orbax items) and, beside them:

    MODEL_CARD.md                       CARD_FILE (research.export)
    unknown_statistics.npz              STATISTICS_FILE (the Mahalanobis score's class means)
    calibration/calibration.json        CALIBRATION_DIR / CALIBRATION_FILE (research.calibrate)
    calibration/reliability.png         CALIBRATION_DIR / RELIABILITY_FILE
    calibration/risk_coverage.png       CALIBRATION_DIR / RISK_COVERAGE_FILE
    calibration/out_of_scope.json       CALIBRATION_DIR / OUT_OF_SCOPE_FILE (--out_of_scope)
    robustness.json                     ROBUSTNESS_FILE (research.robustness, middle severity)
    robustness_all.json                 ROBUSTNESS_ALL_FILE (every severity)
    examples/examples.json, *.png       EXAMPLES_DIR / EXAMPLES_INDEX_FILE (research.examples)
    report/report.json, confusion.png, curves.png, examples/<true>-<predicted>/<k>.png
                                        REPORT_DIR / REPORT_FILE, CONFUSION_FILE, CURVES_FILE,
                                        REPORT_EXAMPLES_DIR (research.model_report)

A training workdir keeps its steps under CHECKPOINTS_SUBDIR and the run's scalars in
TENSORBOARD_SUBDIR and METRICS_JSONL. No imports: anything may read these names cheaply.
"""

import re

CHECKPOINTS_SUBDIR = "checkpoints"  # in a training workdir
TENSORBOARD_SUBDIR = "tensorboard"  # where research.train writes its scalars
METRICS_JSONL = "metrics.jsonl"  # the same scalars, one JSON line per evaluation
RESULTS_FILE = "results.json"  # the run's final figures, in the workdir

CARD_FILE = "MODEL_CARD.md"
STATISTICS_FILE = "unknown_statistics.npz"

CALIBRATION_DIR = "calibration"
CALIBRATION_FILE = "calibration.json"
RELIABILITY_FILE = "reliability.png"
RISK_COVERAGE_FILE = "risk_coverage.png"
OUT_OF_SCOPE_FILE = "out_of_scope.json"

ROBUSTNESS_FILE = "robustness.json"
ROBUSTNESS_ALL_FILE = "robustness_all.json"

EXAMPLES_DIR = "examples"
EXAMPLES_INDEX_FILE = "examples.json"
# Shipped example names: lower-case letters, digits and hyphens, then .png (the web serves only
# these).
EXAMPLE_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\.png")

REPORT_DIR = "report"
REPORT_FILE = "report.json"
REPORT_FORMAT = 1  # report.json's layout version
CONFUSION_FILE = "confusion.png"
CURVES_FILE = "curves.png"
REPORT_EXAMPLES_DIR = "examples"  # inside REPORT_DIR

# What research.evaluate writes to its --out folder.
EVAL_METRICS_FILE = "metrics.json"
