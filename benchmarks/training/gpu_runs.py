"""Several `python -m research.train` commands in one process, for a short lease of a GPU: the
CUDA start-up and the decoding of the JPEG folder (cached by research.data.arrays) are paid once,
not once a command, so a few minutes of device time hold more runs.

    python -m benchmarks.training.gpu_runs DATA OUT [RUN ...] [--extra=--max_steps=2]

DATA is a CIFAR-10 image folder (`research.data import-folder`'s layout: class/image, the last
500 of each class held out for validation); OUT receives each run's results.json as
NAME.json, with its argv under 'argv' and its metrics.jsonl rows under 'metrics'. Each run
is `research.train.__main__.main(argv)`, the command's own entry point, with `--input=device
--data_source=DATA --workdir=<tmp>/NAME` added. Runs (default: all, in order):
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from research.train import __main__ as train_command

QUIET = ["--checkpoint_every_steps=100000"]  # a checkpoint only with an evaluation


def airbench94(epochs: float, *, quiet: bool = True) -> list[str]:
    """airbench94's recipe for `epochs` (its warm-up 23% of them), scored with airbench's own
    TTA (mirror and translations); `quiet`: evaluated once, at the end (the loop alone, as
    airbench times itself), else every epoch, as the command's default."""
    flags = [
        "--recipe=airbench94",
        f"--epochs={epochs:g}",
        f"--warmup_epochs={0.23 * epochs:.4g}",
        "--translate_tta=True",
    ]
    return [*flags, f"--eval_every_epochs={epochs:g}", *QUIET] if quiet else flags


def muon(epochs: float) -> list[str]:
    """airbench94_muon's recipe (8 epochs its own; the default before 2026-11-27 18:00) for
    `epochs`, one 2,000-image pass a step, evaluated once, at the end."""
    return [
        "--recipe=airbench94_muon",
        "--microbatches=1",
        f"--epochs={epochs:g}",
        f"--eval_every_epochs={epochs:g}",
        *QUIET,
    ]


RUNS = {
    "airbench94_quiet": airbench94(9.9),
    "muon_quiet": muon(8),
    "airbench94": airbench94(9.9, quiet=False),
    # more epochs where the loop has time to spare under airbench94's 2.4 s
    "muon12_quiet": muon(12),
    "muon10_quiet": muon(10),
    "airbench94_11_quiet": airbench94(11),
    "muon16_quiet": muon(16),
    "airbench94_12_quiet": airbench94(12),
}
__doc__ += "".join(f"\n- {name}: {' '.join(argv)}" for name, argv in RUNS.items())
__doc__ += "\n\nNAME_seedN: run NAME with --seed=N (e.g. airbench94_quiet_seed1).\n"


def run_argv(name: str) -> list[str]:
    """The flags of run `name` (a RUNS name, or one with a _seedN suffix)."""
    base, _, seed = name.rpartition("_seed")
    if base in RUNS and seed.isdigit():
        return [*RUNS[base], f"--seed={seed}"]
    if name not in RUNS:
        raise argparse.ArgumentTypeError(f"unknown run {name!r}; choose from {', '.join(RUNS)}")
    return RUNS[name]


def _report(name: str, command: list[str], rc: int, workdir: Path, out: Path) -> None:
    """Writes run `name`'s results.json, its argv and metrics.jsonl rows, to OUT/NAME.json."""
    if not (workdir / "results.json").exists():
        return
    result = json.loads((workdir / "results.json").read_text())
    result["argv"] = command
    if (workdir / "metrics.jsonl").exists():  # the per-evaluation curve
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        result["metrics"] = [json.loads(line) for line in lines if line.strip()]
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    eval_metrics = result.get("eval") or {}
    print(
        f"=== {name}: rc {rc}, {eval_metrics.get('split')} accuracy "
        f"{eval_metrics.get('accuracy', float('nan')):.4f}, stepping "
        f"{result['loop_seconds']:.2f}s, compiling {result.get('compile_seconds', 0):.1f}s,"
        f" wall {result['wall_seconds']:.1f}s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("runs", nargs="*", default=list(RUNS))
    parser.add_argument("--extra", action="append", default=[], help="added to every run")
    args = parser.parse_args(argv)
    try:
        commands = {name: run_argv(name) for name in args.runs}
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdirs = Path(tempfile.mkdtemp(prefix="gpu_runs_"))
    failed = 0
    try:
        for name, flags in commands.items():
            command = [
                "--dataset=cifar10",
                "--input=device",
                f"--data_source={args.data}",
                f"--workdir={workdirs / name}",
                *flags,
                *args.extra,
            ]
            print(f"=== {time.strftime('%T')} {name}: {' '.join(command)}", flush=True)
            try:
                rc = train_command.main(command)
            except Exception as error:  # the next runs still run
                print(f"=== {name}: failed: {error!r}", flush=True)
                rc = 1
            failed += rc != 0
            _report(name, command, rc, workdirs / name, out)
    finally:
        shutil.rmtree(workdirs, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
