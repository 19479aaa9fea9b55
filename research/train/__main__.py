"""Train a model: `python -m research.train --dataset=cifar10 --workdir=workdirs/cifar10`.

Every field of research.configs.Config is a flag. Running the same command again resumes from
the latest checkpoint in the workdir. Ctrl-C or SIGTERM saves a checkpoint and exits; the next
run continues at that step.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
from pathlib import Path
from typing import Any

from research import configs
from research.configs import Config, runtime
from research.serving.errors import DataNotFoundError, NonFiniteLossError
from research.train import distributed
from research.train.loop import train_and_evaluate


def _parse_value(text: str, annotation: str) -> Any:
    if text.lower() in ("none", "") and "None" in annotation:
        return None
    if annotation.startswith("tuple"):
        kind = float if "float" in annotation else int
        return tuple(kind(v) for v in text.split(",") if v)
    if annotation.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if annotation.startswith("int"):
        return int(text)
    if annotation.startswith("float"):
        return float(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir", help="checkpoints, TensorBoard logs and results (default: workdirs/<dataset>)"
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(configs.RECIPES),
        help="start from this recipe instead of the dataset's defaults (research.configs), "
        "e.g. --dataset=cifar10 --recipe=airbench94: the SGD recipe of models/cifar10_v1",
    )
    cluster = parser.add_argument_group(
        "several processes (jax.distributed; each defaults to its environment variable)"
    )
    cluster.add_argument(
        "--coordinator_address",
        help=f"host:port of process 0, or 'auto' to detect a TPU pod or SLURM/MPI job "
        f"(${distributed.ENV_ADDRESS})",
        default=argparse.SUPPRESS,  # absent unless given, so the rest are Config fields
    )
    cluster.add_argument(
        "--num_processes",
        type=int,
        help=f"(${distributed.ENV_COUNT})",
        default=argparse.SUPPRESS,
    )
    cluster.add_argument(
        "--process_id",
        type=int,
        help=f"0..num_processes-1 (${distributed.ENV_ID})",
        default=argparse.SUPPRESS,
    )
    for field in dataclasses.fields(Config):
        annotation = str(field.type)
        parser.add_argument(
            f"--{field.name}",
            type=functools.partial(_parse_value, annotation=annotation),
            default=argparse.SUPPRESS,
            help=f"{annotation}",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    runtime.setup_logging(logging.WARNING, force=True)  # force: over absl's handler
    args = vars(build_parser().parse_args(argv))
    workdir = args.pop("workdir", None)
    dataset = args.pop("dataset", "cifar10")
    recipe = args.pop("recipe", None)
    cluster = [
        args.pop(name, None) for name in ("coordinator_address", "num_processes", "process_id")
    ]
    try:
        distributed.initialize(distributed.ProcessGroup.from_flags(*cluster))
        if not distributed.is_main_process():  # process 0 reports; the others only warn
            logging.getLogger().setLevel(logging.WARNING)
        config = configs.get_config(dataset, recipe, **args)
        result = train_and_evaluate(config, workdir or Path("workdirs") / dataset)
    except (DataNotFoundError, ValueError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result["interrupted"]:
        return 130
    accuracy = result["eval"]["accuracy"] if result["eval"] else float("nan")
    if distributed.is_main_process():
        print(
            f"done: {result['eval']['split'] if result['eval'] else 'eval'} accuracy "
            f"{accuracy:.4f} after {result['step']} steps ({result['wall_seconds']:.0f}s; "
            f"stepping {result['loop_seconds']:.1f}s, compiling "
            f"{result.get('compile_seconds', 0):.1f}s; peak memory "
            f"{result.get('peak_rss_bytes', runtime.peak_rss_bytes()) / 2**30:.1f} GiB)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    runtime.exec_with_allocator()
    sys.exit(main())
