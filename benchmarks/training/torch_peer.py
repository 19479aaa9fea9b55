"""Our train step beside the same network's in PyTorch: train images/s and their ratio.

    pip install -e '.[bench]'        # CPU torch (2.13.0, taken from this machine's local wheel)
    python -m benchmarks.training.torch_peer                       # 3 rounds of 3 steps, batch 1024
    python -m benchmarks.training.torch_peer --steps=5 --repeats=5 --threads=2
    python -m benchmarks.training.torch_peer --memory --threads=2  # peak memory of each step
    python -m benchmarks.training.torch_peer --memory --threads=2 --microbatches=4
    python -m benchmarks.training.torch_peer --threads=2 --microbatches=16   # + PyTorch sliced

The network is airbench94 as research.nets.models builds it for `AIRBENCH94_RECIPE` (widths
64/256/256,
a 2x2 stem with a bias, conv-pool-norm-GELU-conv-norm-GELU blocks, batch norm with a bias but no
scale, global max pooling, a bias-free head scaled by 1/9), written in PyTorch as airbench94.py
writes it (its airbench94_torch.py): NCHW tensors in channels_last, the stem's
kernel frozen, Nesterov SGD with batch-norm biases at a higher rate, cross-entropy with label
smoothing. One difference from airbench94.py: GELU is the tanh approximation, as ours is. The
PyTorch step starts from uint8 NHWC images, as ours does (normalising and transposing them is
part of the step), and runs in fp32 and under bf16 autocast.

Our step is the training loop's compiled step (train.host_step) on the state
`train.create_train_state` builds, as train_speed.measure_train times it (the training figure
of docs/benchmarks.md), in every compute dtype the Config offers. All four steps are built
and warmed up first (the first call compiles), then run in --repeats interleaved rounds of --steps
consecutive steps each, so that a drift in this machine's speed falls on all four alike; each
figure is the median images/s over the rounds. Both run on the same random uint8 batch of
CIFAR-10's shape. XLA sizes its own thread pool (all cores); --threads sets PyTorch's.

`--memory` runs each of the four steps alone in a fresh process (warm-up, then --steps x
--repeats steps) and prints each process's peak resident memory as the kernel counts it for
`/usr/bin/time -v` (wait4's ru_maxrss), beside PyTorch's for the same step.

Both run under the allocator `python -m research.train` runs with (jemalloc where installed:
research.configs.runtime.exec_with_allocator; `RESEARCH_ALLOCATOR=system python -m
benchmarks.training.torch_peer` runs both with the C library's malloc).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from benchmarks.training import train_speed
from benchmarks.training.train_speed import STEPS_PER_EPOCH, time_calls
from research import configs, train
from research.configs import Config, runtime
from research.nets import models

WARMUP_STEPS = train_speed.WARMUP_STEPS
DATASET = "cifar10"
RECIPE = "airbench94"  # the SGD step the PyTorch peer mirrors (not the default Muon recipe)
INSTALL_HINT = "PyTorch is not installed: pip install -e '.[bench]' (a CPU build, torch 2.13.0)"


def compute_dtypes() -> tuple[str, ...]:
    """The compute dtypes our Config offers: float32 alone until it has `compute_dtype`."""
    if "compute_dtype" in {field.name for field in dataclasses.fields(Config)}:
        return ("float32", "bfloat16")
    return ("float32",)


def build_torch_net(torch, config: Config, *, in_channels: int, num_classes: int):
    """airbench94's net in PyTorch, with the widths, norm settings and head scale of `config`'s
    research.nets.models variant."""
    nn = torch.nn
    variant = models.AIRBENCH_VARIANTS[config.model]
    momentum = 1.0 - variant.norm_momentum  # Flax: weight of the old average; torch: of the new

    def norm(width: int):
        bn = nn.BatchNorm2d(width, eps=variant.norm_epsilon, momentum=momentum)
        bn.weight.requires_grad = variant.norm_scale
        return bn

    def conv(cin: int, cout: int):
        layer = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        nn.init.dirac_(layer.weight.data[:cin])  # airbench94's partial identity
        return layer

    class Scale(nn.Module):
        def forward(self, x):
            return x * variant.head_scale

    gelu = nn.GELU(approximate="tanh")  # research.nets.models: nnx.gelu(approximate=True)
    layers = [nn.Conv2d(in_channels, config.stem_width, 2, padding=0, bias=True), gelu]
    previous = config.stem_width
    for width in config.widths:
        layers += [conv(previous, width), nn.MaxPool2d(2), norm(width), gelu]
        layers += [conv(width, width), norm(width), gelu]
        previous = width
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes, bias=False)]
    net = nn.Sequential(*layers, Scale())
    net[0].weight.requires_grad = False  # the whitening stem's kernel is never trained
    return net.to(memory_format=torch.channels_last)


def count_torch_params(torch, net) -> int:
    """Parameters as research.nets.models.count_params counts them: batch norm's scale (fixed at 1
    in airbench94) is not one of ours."""
    total = 0
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            fixed_scale = isinstance(module, torch.nn.BatchNorm2d) and name == "weight"
            if not (fixed_scale and not param.requires_grad):
                total += param.numel()
    return total


def make_torch_step(torch, net, config: Config, batch: dict, *, bf16: bool, microbatches: int = 1):
    """One training step of `net` on `batch` (uint8 NHWC images, as ours takes them); with
    `microbatches`, in that many slices one after the other, each slice's batch norm on its own
    images and the gradients summed (the mean loss over the batch), as our step slices it."""
    functional = torch.nn.functional
    spec = configs.dataset_spec(DATASET)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    images = torch.from_numpy(batch["image"])
    labels = torch.from_numpy(batch["label"]).long()
    biases = [p for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in [m.bias]]
    ids = {id(p) for p in biases}
    kernels = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    lr = config.learning_rate
    optimizer = torch.optim.SGD(
        [
            dict(params=kernels, lr=lr, weight_decay=config.weight_decay),
            dict(params=biases, lr=lr * config.bias_lr_scale, weight_decay=0.0),
        ],
        lr=lr,
        momentum=config.momentum,
        nesterov=True,
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    image_slices = images.chunk(microbatches)
    label_slices = labels.chunk(microbatches)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for image_slice, label_slice in zip(image_slices, label_slices, strict=True):
            x = image_slice.permute(0, 3, 1, 2).float().sub(mean).div(std)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = net(x)
            loss = functional.cross_entropy(
                logits.float(), label_slice, label_smoothing=config.label_smoothing
            )
            (loss / microbatches).backward()
        optimizer.step()

    net.train()
    return step


def rates(times: Sequence[float], batch_size: int, steps: int) -> list[float]:
    """images/s of each run of `steps` consecutive step times."""
    return [
        steps * batch_size / sum(times[i : i + steps])
        for i in range(0, len(times) - steps + 1, steps)
    ]


def our_step(compute_dtype: str, args: argparse.Namespace, image_shape, num_classes: int):
    """(`step()`, waited for; params) of our training loop's step at `compute_dtype`."""
    overrides = {"compute_dtype": compute_dtype} if len(compute_dtypes()) > 1 else {}
    overrides["microbatches"] = args.microbatches
    config = configs.get_config(DATASET, RECIPE, batch_size=args.batch_size, **overrides)
    spec = configs.dataset_spec(DATASET)
    state = train.create_train_state(
        config,
        None,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=spec.mean,
        std=spec.std,
        steps_per_epoch=STEPS_PER_EPOCH,
    )
    batch = train_speed._synthetic_batch(config, image_shape, num_classes)
    step, _ = train_speed.train_step_call(state, config, batch)
    return step, models.count_params(state.model)


def interleaved_rates(
    steps: dict[str, Callable[[], None]], args: argparse.Namespace, batch_size: int
) -> dict[str, float]:
    """Median images/s of each step over `args.repeats` rounds; each round runs every step
    `args.steps` times in turn, so that a drift of the machine's speed (up to 16% between
    processes here) falls on all of them alike. After PyTorch's turn the loop sleeps a second:
    its OpenMP threads keep spinning a while after their last step."""
    for step in steps.values():
        time_calls(step, 0, warmup=WARMUP_STEPS)
    figures: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            figures[name] += rates(time_calls(step, args.steps, warmup=0), batch_size, args.steps)
            if name.startswith("torch"):
                time.sleep(1.0)
    return {name: statistics.median(values) for name, values in figures.items()}


STEP_NAMES = ("ours float32", "ours bfloat16", "torch float32", "torch bfloat16")


def sliced_step_name(dtype: str, microbatches: int) -> str:
    """The name of PyTorch's `dtype` step run in `microbatches` slices, as ours runs."""
    return f"torch {dtype} x{microbatches}"


def build_steps(
    torch, names: Sequence[str], args: argparse.Namespace
) -> dict[str, Callable[[], None]]:
    """The steps called `names` (of STEP_NAMES), built and ready to call; only those are built,
    so that a process measuring one step's memory holds nothing of the others."""
    spec = configs.dataset_spec(DATASET)
    image_shape, num_classes = spec.image_shape, spec.num_classes
    config = configs.get_config(DATASET, RECIPE, batch_size=args.batch_size)
    steps: dict[str, Callable[[], None]] = {}
    our_params = None
    for dtype in compute_dtypes():
        if f"ours {dtype}" in names:
            steps[f"ours {dtype}"], our_params = our_step(dtype, args, image_shape, num_classes)
    if not any(name.startswith("torch") for name in names):
        return steps
    torch.manual_seed(config.seed)
    net = build_torch_net(torch, config, in_channels=image_shape[-1], num_classes=num_classes)
    torch_params = count_torch_params(torch, net)
    if our_params is not None:
        print(f"parameters: ours {our_params:,}, torch {torch_params:,}", flush=True)
        assert torch_params == our_params, "the PyTorch net is not ours: parameter counts differ"
    batch = train_speed._synthetic_batch(config, image_shape, num_classes)
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        if f"torch {name}" in names:
            steps[f"torch {name}"] = make_torch_step(torch, net, config, batch, bf16=bf16)
        sliced = sliced_step_name(name, args.microbatches)
        if sliced in names:
            steps[sliced] = make_torch_step(
                torch, net, config, batch, bf16=bf16, microbatches=args.microbatches
            )
    return steps


def peak_memory(args: argparse.Namespace) -> dict[str, int]:
    """Peak resident bytes of each step run alone in a fresh process (`--only NAME`)."""
    peaks = {}
    for name in STEP_NAMES:
        if name.startswith("ours") and name.split()[1] not in compute_dtypes():
            continue
        command = [sys.executable, "-m", "benchmarks.training.torch_peer", "--only", name]
        command += [f"--steps={args.steps}", f"--repeats={args.repeats}"]
        command += [f"--threads={args.threads}", f"--batch_size={args.batch_size}"]
        command += [f"--microbatches={args.microbatches}"]
        child = subprocess.Popen(command)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"error: {name} exited with {child.returncode}")
        peaks[name] = usage.ru_maxrss * 1024  # KiB on Linux, as /usr/bin/time -v prints it
    return peaks


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        import torch
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    spec = configs.dataset_spec(DATASET)
    config = configs.get_config(DATASET, RECIPE, batch_size=args.batch_size)
    if args.only:
        steps = build_steps(torch, [args.only], args)
        times = time_calls(steps[args.only], args.steps * args.repeats)
        rate = statistics.median(rates(times, config.batch_size, args.steps))
        print(f"{args.only}: {rate:.1f} images/s, peak {runtime.peak_rss_bytes() / 2**30:.2f} GiB")
        return 0
    print(
        f"airbench94 {','.join(map(str, config.widths))}, batch {config.batch_size}, "
        f"{spec.image_shape} uint8, CPU ({os.cpu_count()} cores), torch {torch.__version__} on "
        f"{args.threads} threads; median of {args.repeats} interleaved rounds of {args.steps} "
        f"steps after {WARMUP_STEPS} warm-up; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}",
        flush=True,
    )
    if args.memory:
        peaks = peak_memory(args)
        torch_fp32 = peaks["torch float32"]
        print()
        print("| step, alone in its process | peak resident GiB | / torch fp32 |")
        print("|---|---:|---:|")
        for name, peak in peaks.items():
            print(f"| {name} | {peak / 2**30:.2f} | {peak / torch_fp32:.2f} |")
        return 0

    sliced = [sliced_step_name(dtype, args.microbatches) for dtype in ("float32", "bfloat16")]
    steps = build_steps(torch, [*STEP_NAMES, *(sliced if args.microbatches > 1 else [])], args)
    start = time.perf_counter()
    figures = interleaved_rates(steps, args, config.batch_size)
    for name, rate in figures.items():
        print(f"{name:15s} {rate:8.1f} images/s", flush=True)
    print(f"({time.perf_counter() - start:.0f}s with compiling)")

    print_ratios(figures, args.microbatches)
    return 0


def print_ratios(figures: dict[str, float], microbatches: int) -> None:
    """Markdown: each step's images/s over PyTorch's whole-batch steps' (and, with slices, over
    PyTorch's steps in the same slices as ours)."""
    torch_fp32, torch_bf16 = figures["torch float32"], figures["torch bfloat16"]
    sliced = microbatches > 1
    bases = [("torch fp32", torch_fp32), ("torch bf16", torch_bf16)]
    rows = [("PyTorch fp32 channels_last", "torch float32")]
    rows += [("PyTorch bf16 autocast", "torch bfloat16")]
    if sliced:
        fp32, bf16 = (sliced_step_name(d, microbatches) for d in ("float32", "bfloat16"))
        bases += [(f"torch fp32 x{microbatches}", figures[fp32])]
        bases += [(f"torch bf16 x{microbatches}", figures[bf16])]
        rows += [(f"PyTorch fp32 channels_last, {microbatches} slices", fp32)]
        rows += [(f"PyTorch bf16 autocast, {microbatches} slices", bf16)]
    ours = f", {microbatches} slices" if sliced else ""
    rows += [(f"ours (Flax, XLA) {dtype}{ours}", f"ours {dtype}") for dtype in compute_dtypes()]
    print()
    print("| step | train images/s | " + " | ".join(f"/ {name}" for name, _ in bases) + " |")
    print("|---|---:|" + "---:|" * len(bases))
    for label, key in rows:
        rate = figures[key]
        ratios = " | ".join(f"{rate / base:.2f}" for _, base in bases)
        print(f"| {label} | {rate:.0f} | {ratios} |")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training.torch_peer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--steps", type=int, default=3, help="consecutive steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="PyTorch's intra-op threads"
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=configs.AIRBENCH94_RECIPE["batch_size"],
        help="images per step (the recipe's by default)",
    )
    parser.add_argument(
        "--microbatches",
        type=int,
        default=1,
        help="our step in this many slices of the batch, one after the other (the default "
        "CIFAR-10 recipe uses 16); PyTorch's runs both whole and in the same slices",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="peak resident memory of each step, each alone in a fresh process",
    )
    parser.add_argument("--only", choices=STEP_NAMES, help="run this one step (for --memory)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    runtime.exec_with_allocator()  # what `python -m research.train` runs with
    sys.exit(main())
