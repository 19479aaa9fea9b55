"""Calibrate an existing model and give it an "unknown" answer; store both in its record.

    python -m research.calibrate --checkpoint models/cifar10
    python -m research.calibrate --checkpoint models/fashion_mnist --dry_run

What it fits, and on what (research.serving.calibration holds the definitions):
- A dataset with a 'validation' split the model did not train on (CIFAR-10): the temperature
  and the threshold are fitted on the whole validation split and stored; the figures reported
  for them come from 2-fold cross-validation on that split (fit on one half, report on the
  other, both ways, averaged), so no reported figure was fitted on the images it describes.
- A dataset without one (Fashion-MNIST: train and test): they are fitted on the first
  --train_images images of the training split, without augmentation, and reported on the
  test split. The model saw those training images, so the fit leans towards over-confidence
  (a temperature a little too low, a threshold a little too high); the test split is never
  used for fitting.

The "unknown" scores (max-softmax, energy, Mahalanobis on pooled features with class means and
a shared covariance from the first --train_images training images) are each measured: AUROC of
the in-distribution images against the other dataset (Fashion-MNIST test made RGB and 32x32
for CIFAR-10; CIFAR-10 validation made grey and 28x28 for Fashion-MNIST, both through the
serving preprocessing), seeded noise and seeded flat colours. With --score auto (default) the
best score meeting the targets is stored (else the best), with its threshold accepting 95% of
the fitting images.

Conformal prediction sets (research.serving.conformal) at 95% coverage are fitted like the
temperature: on the whole validation split for the stored threshold, on one half for each
reported fold (CIFAR-10), or on validation and reported on test (--report_split test). Of
'lac' and 'aps', the method with the smaller mean set size on the fitting images is stored.
Writes calibration.json, reliability.png and risk_coverage.png to --out (default:
<checkpoint>/calibration), and the record of the chosen step unless --dry_run.

With --out_of_scope DIR (a set made by `python -m research.data out-of-scope --out DIR`) it
measures instead how the stored "unknown" score and the same plus the input-pixel statistics
('energy+activations+pixels') catch that set, against the validation split read from --source
(an image folder or idx files, held out by the importer's rule), by 2-fold cross-validation on
validation (research.evaluation.out_of_scope); writes out_of_scope.json to --out and, unless
--dry_run, stores the improved score and threshold, fitted on all of validation, when it flags
at most 5% of the held-out validation images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from research.configs import runtime
from research.data import arrays, out_of_scope
from research.evaluation import out_of_scope as out_of_scope_evaluation
from research.evaluation import plots
from research.evaluation.calibrate import (
    calibrate,
    choose_score,
    collect_outputs,
    format_summary,
    load_arrays,
    missed_targets,
    sets_at_temperature,
)
from research.serving import calibration, model_dir
from research.serving.artifacts import (
    CALIBRATION_DIR,
    CALIBRATION_FILE,
    OUT_OF_SCOPE_FILE,
    RELIABILITY_FILE,
    RISK_COVERAGE_FILE,
)
from research.serving.classifier import Classifier
from research.serving.errors import DataNotFoundError, ModelNotFoundError


def main(argv: Sequence[str] | None = None) -> int:
    runtime.setup_logging()
    args = _parse_args(argv)
    args.command = "python -m research.calibrate " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        return _run(args)
    except (ModelNotFoundError, DataNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.out_of_scope:
        return _run_out_of_scope(args)
    started = time.monotonic()
    directory, step, record = model_dir.pick_checkpoint(args.checkpoint)
    clf = Classifier.load(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint) / CALIBRATION_DIR
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "outputs.npz"
    if args.reuse_outputs and cache.is_file():
        with np.load(cache) as data:
            outputs = {k: data[k] for k in data.files}
    else:
        outputs = collect_outputs(clf, args)
        if args.reuse_outputs:
            np.savez(cache, **outputs)
    kinds = calibration.OUTPUT_SCORES if args.score == "auto" else (args.score,)
    result = calibrate(outputs, record.num_classes, scores=kinds)
    chosen = choose_score(result["scores"]) if args.score == "auto" else args.score
    stats = result.pop("statistics")
    result.update(
        model=record.name,
        version=record.version,
        step=step,
        chosen_score=chosen,
        threshold=result["thresholds"][chosen],
        misses=missed_targets(result["scores"][chosen]),
        seconds=round(time.monotonic() - started, 1),
        command=args.command,
    )
    if args.sets_only:
        # The stored temperature and threshold stay: the sets are fitted at that temperature.
        result["sets"] = sets_at_temperature(outputs, record.temperature)
        result["sets"]["temperature"] = record.temperature
    print(f"{record.name} ({record.version})")
    print(format_summary(result, chosen))
    (out / CALIBRATION_FILE).write_text(json.dumps(result, indent=2) + "\n")
    title = f"{record.name} on {result['reliability_source']}"
    plots.render_reliability(
        result["reliability"]["before"],
        result["reliability"]["after"],
        title,
        temperature=result["temperature"],
    ).save(out / RELIABILITY_FILE)
    plots.render_risk_coverage(
        result["risk_coverage"], f"{record.name}: answering only the surest images"
    ).save(out / RISK_COVERAGE_FILE)
    sets = result["sets"]
    if args.sets_only and not args.dry_run:
        updated = record.replace(
            set_method=sets["method"],
            set_threshold=sets["thresholds"][sets["method"]],
            set_coverage=sets["coverage"],
        )
        model_dir.write_record(directory, step, updated)
        print(f"stored the {sets['method']} set threshold only in {directory / str(step)}")
    elif not args.dry_run:
        updated = record.replace(
            temperature=result["temperature"],
            unknown_score=chosen,
            unknown_threshold=result["threshold"],
            set_method=sets["method"],
            set_threshold=sets["thresholds"][sets["method"]],
            set_coverage=sets["coverage"],
        )
        if calibration.needed_statistics(chosen):
            needed = calibration.needed_statistics(chosen)
            kept = {k: v for k, v in stats[chosen].items() if k in needed}
            model_dir.write_statistics(directory, step, kept)
        model_dir.write_record(directory, step, updated)
        print(
            f"stored temperature, '{chosen}' threshold and {sets['method']} set threshold in "
            f"{directory / str(step)}"
        )
    print(f"wrote {out / CALIBRATION_FILE} and {out / RELIABILITY_FILE} ({result['seconds']}s)")
    return 0


def _run_out_of_scope(args: argparse.Namespace) -> int:
    started = time.monotonic()
    directory, step, record = model_dir.pick_checkpoint(args.checkpoint)
    clf = Classifier.load(args.checkpoint)
    held_out = record.config.get("validation_per_class", arrays.DEFAULT_VALIDATION_PER_CLASS)
    validation, _ = load_arrays(
        record.dataset,
        "validation",
        args.data_dir,
        source=args.source,
        validation_per_class=held_out,
    )
    result = out_of_scope_evaluation.evaluate(clf, validation, out_of_scope.load(args.out_of_scope))
    statistics = result.pop("statistics")
    result.update(
        model=record.name,
        version=record.version,
        step=step,
        seconds=round(time.monotonic() - started, 1),
        command=args.command,
    )
    print(f"{record.name} ({record.version})")
    print(out_of_scope_evaluation.format_result(result))
    out = Path(args.out) if args.out else Path(args.checkpoint) / CALIBRATION_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_OF_SCOPE_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / OUT_OF_SCOPE_FILE} ({result['seconds']}s)")
    if args.dry_run:
        return 0
    if not out_of_scope_evaluation.meets_constraint(result):
        print(
            f"not stored: it flags {result['after']['validation_flagged']:.1%} of held-out "
            f"validation images (at most {out_of_scope_evaluation.MAX_FLAGGED:.0%})"
        )
        return 0
    model_dir.write_statistics(directory, step, statistics)
    updated = record.replace(
        unknown_score=result["improved_score"], unknown_threshold=result["stored_threshold"]
    )
    model_dir.write_record(directory, step, updated)
    print(f"stored the '{updated.unknown_score}' score and threshold in {directory / str(step)}")
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m research.calibrate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="a training workdir or exported model")
    parser.add_argument("--data_dir", help="tfds data dir of the model's dataset")
    parser.add_argument("--other_data_dir", help="tfds data dir of the other dataset")
    parser.add_argument(
        "--train_images",
        type=int,
        default=5000,
        help="training images for the feature statistics (and the fit, without validation)",
    )
    parser.add_argument(
        "--other_images",
        type=int,
        default=2000,
        help="images of the other dataset (its first ones, in tfds's fixed order)",
    )
    parser.add_argument("--score", default="auto", choices=("auto", *calibration.OUTPUT_SCORES))
    parser.add_argument(
        "--report_split",
        choices=("validation", "test"),
        default="validation",
        help="with a validation split: report by 2-fold cross-validation on it (validation), "
        "or fit on all of it and report on the test split (test)",
    )
    parser.add_argument("--out", help="output folder (default: <checkpoint>/calibration)")
    parser.add_argument("--dry_run", action="store_true", help="measure, do not store")
    parser.add_argument(
        "--sets_only",
        action="store_true",
        help="store only the prediction sets, fitted at the stored temperature; keep the "
        "temperature, threshold and statistics (so the model's answers do not change)",
    )
    parser.add_argument(
        "--out_of_scope",
        help="a folder made by `python -m research.data out-of-scope`: measure the unknown "
        "score on it before and after adding the pixel statistics (see above)",
    )
    parser.add_argument(
        "--source",
        help="with --out_of_scope: the image folder or idx files the validation split is held "
        "out of (default: the prepared tfds dataset)",
    )
    parser.add_argument(
        "--reuse_outputs",
        action="store_true",
        help="keep the network outputs in <out>/outputs.npz and reuse them when present",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
