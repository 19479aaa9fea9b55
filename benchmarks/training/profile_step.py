"""Where the time of our train step goes on the CPU, by operation class.

    python -m benchmarks.training.profile_step                               # airbench94, batch
    1024
    python -m benchmarks.training.profile_step --compute_dtype=bfloat16 --steps=5
    python -m benchmarks.training.profile_step --batch_size=256 --trace_dir=/tmp/step_trace

Takes the same flags as `python -m research.train` (any Config field, --compute_dtype among them
where the Config has it). Runs the training loop's compiled step (train.host_step) on the state
training builds, exactly as benchmarks/training/train_speed.py times it, under `jax.profiler.trace`,
with XLA's optimized HLO of the step dumped beside the trace. XLA:CPU records one trace event per
thunk, and each thunk is an instruction of the HLO's entry computation: a fusion, a dot, a
concatenate, a copy... Each is put in one class by what it computes (its opcode, the ops fused into
it, the op name JAX gave it and the Python function it came from: research.nets.layers, flax's batch
norm, optax...), and the classes' times are summed over every traced step. Prints ms per step and
the share of each class, then the fusions that cost most. Thunks may overlap on the cores, so the
summed op time can differ from the step's wall time; both are printed."""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax

from benchmarks.training import train_speed
from benchmarks.training.train_speed import STEPS_PER_EPOCH, measure_train
from research import configs, train
from research.configs import runtime
from research.train import __main__ as train_command

CONV = "convolution / dot"
NORM = "batch norm (statistics, normalize)"
ACT = "elementwise / activation"
MOVE = "pad / concat / slice / copy (im2col)"
POOL = "pooling"
CONVERT = "dtype conversion"
OPT = "optimizer update"
OTHER = "other (loss, metrics, ...)"
CLASSES = (CONV, NORM, ACT, MOVE, POOL, CONVERT, OPT, OTHER)

# HLO opcodes that only move or lay out data.
MOVE_OPCODES = {
    "bitcast",
    "broadcast",
    "concatenate",
    "copy",
    "dynamic-slice",
    "dynamic-update-slice",
    "gather",
    "pad",
    "reshape",
    "reverse",
    "scatter",
    "slice",
    "transpose",
}
STRUCTURAL_OPCODES = {"parameter", "constant", "tuple", "get-tuple-element", "iota"}
# Last component of JAX's op name (jit(_host_update)/transpose(jvp())/<primitive>).
MOVE_PRIMITIVES = {
    "broadcast_in_dim",
    "concatenate",
    "copy",
    "dynamic_slice",
    "dynamic_update_slice",
    "expand_dims",
    "pad",
    "reshape",
    "rev",
    "slice",
    "squeeze",
    "transpose",
}
POOL_PRIMITIVES = {"reduce_max", "argmax", "reduce_window_max", "select_and_scatter_add"}
ACTIVATION_PRIMITIVES = {"tanh", "erf", "logistic", "integer_pow"}
OPTIMIZER_FILES = ("/optax/", "/nnx/training/optimizer.py", "/research/optim.py")
OTHER_FILES = ("/nnx/training/metrics.py", "/optax/losses/")
OTHER_FUNCTIONS = {"loss_fn", "log_probabilities"}


@dataclasses.dataclass
class Instruction:
    """One instruction of the optimized HLO's entry computation: one thunk at run time."""

    name: str
    opcode: str
    shape: str
    op_name: str  # JAX's name for the primitive it came from
    source: tuple[str, str, int] | None  # (file, function, line) of the innermost frame
    fused: frozenset[str]  # opcodes inside a fusion (and what it calls), else {opcode}

    @property
    def primitive(self) -> str:
        return self.op_name.rsplit("/", 1)[-1]

    @property
    def where(self) -> str:
        if self.source is None:
            return ""
        file, function, line = self.source
        return f"{Path(file).name}:{line} {function}"


def classify(ins: Instruction) -> str:
    """The operation class of one HLO instruction (see CLASSES)."""
    file, function = (ins.source[0], ins.source[1]) if ins.source else ("", "")
    ops = ins.fused
    if any(part in file for part in OPTIMIZER_FILES):
        return OPT
    if ops & {"dot", "convolution"} or ins.primitive in {"dot_general", "conv_general_dilated"}:
        return CONV
    if "convert" in ops and not (ops - MOVE_OPCODES - STRUCTURAL_OPCODES - {"convert"}):
        return CONVERT  # bf16 <-> f32 casts, alone or with a slice or copy
    if any(part in file for part in OTHER_FILES) or function in OTHER_FUNCTIONS:
        return OTHER
    if (
        "pool" in function
        or ins.primitive in POOL_PRIMITIVES
        or (ins.op_name and ops & {"reduce-window", "select-and-scatter"})
    ):
        return POOL
    if ins.primitive == "add_any" and ops & {"pad", "slice"}:
        return MOVE  # gradients of shifted copies (im2col's backward), padded and summed
    if ins.primitive in ACTIVATION_PRIMITIVES or "gelu" in function:
        return ACT
    if "normalization.py" in file or ("norm" in function.lower() and function != "normalize"):
        return NORM
    moves_only = not (ops - MOVE_OPCODES - STRUCTURAL_OPCODES)
    if moves_only or ins.primitive in MOVE_PRIMITIVES or function.startswith("conv2d"):
        return MOVE
    if not ins.op_name and ops & {"concatenate", "copy", "pad", "slice", "transpose"}:
        return MOVE  # XLA's own instructions (no JAX op name) that shift or lay out data
    if "reduce" in ops or ins.primitive.startswith("reduce") or not ins.op_name:
        return OTHER
    return ACT


# ----------------------------------------------------------------------------- HLO text

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def _section(text: str, title: str) -> list[str]:
    match = re.search(rf"^{title}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    return match.group(1).splitlines() if match else []


def _stack_frames(text: str) -> dict[int, tuple[str, str, int]]:
    """Stack frame id -> (file, function, line), from the tables HLO text starts with."""
    files, functions, locations = {}, {}, {}
    for line in _section(text, "FileNames"):
        key, value = line.split(None, 1)
        files[int(key)] = value.strip('"')
    for line in _section(text, "FunctionNames"):
        key, value = line.split(None, 1)
        functions[int(key)] = value.strip('"')
    for line in _section(text, "FileLocations"):
        fields = dict(re.findall(r"(\w+)=(\d+)", line))
        locations[int(line.split()[0])] = (
            files.get(int(fields["file_name_id"]), "?"),
            functions.get(int(fields["function_name_id"]), "?"),
            int(fields["line"]),
        )
    frames = {}
    for line in _section(text, "StackFrames"):
        fields = dict(re.findall(r"(\w+)=(\d+)", line))
        frames[int(line.split()[0])] = locations.get(int(fields["file_location_id"]))
    return frames


def parse_hlo(text: str) -> dict[str, Instruction]:
    """The entry computation's instructions of an optimized HLO module's text, by name."""
    frames = _stack_frames(text)
    computations: dict[str, list[tuple[str, str, str, str]]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = match.group(2)
                computations[current] = []
                if match.group(1):
                    entry = current
        elif line.startswith("}"):
            current = None
        elif match := _INSTRUCTION.match(line):
            computations[current].append(match.groups())

    def opcodes(computation: str, seen: set[str]) -> set[str]:
        found = set()
        for _, _, opcode, rest in computations.get(computation, []):
            found.add(opcode)
            for called in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", rest):
                if called not in seen:
                    seen.add(called)
                    found |= opcodes(called, seen)
        return found

    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    instructions = {}
    for name, shape, opcode, rest in computations[entry]:
        if opcode in STRUCTURAL_OPCODES:
            continue
        called = re.search(r"calls=%([\w.\-]+)", rest)
        fused = opcodes(called.group(1), set()) if called else {opcode}
        op_name = re.search(r'op_name="([^"]*)"', rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        instructions[name] = Instruction(
            name=name,
            opcode=opcode,
            shape=shape.split("{")[0],
            op_name=op_name.group(1) if op_name else "",
            source=frames.get(int(frame.group(1))) if frame else None,
            fused=frozenset(fused - STRUCTURAL_OPCODES) or frozenset({opcode}),
        )
    return instructions


# ----------------------------------------------------------------------------- trace


def thunk_times(trace_file: str, names: set[str]) -> tuple[dict[str, float], int]:
    """({instruction: total microseconds}, executions of the step) from a Perfetto JSON trace."""
    with gzip.open(trace_file, "rt") as f:
        events = json.load(f)["traceEvents"]
    total: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in names:
            total[event["name"]] += float(event.get("dur", 0.0))
            counts[event["name"]] += 1
    if not counts:
        raise RuntimeError("the trace holds no event of the train step's HLO instructions")
    return dict(total), max(counts.values())


def _newest(pattern: str) -> str:
    found = glob.glob(pattern, recursive=True)
    if not found:
        raise FileNotFoundError(pattern)
    return max(found, key=os.path.getmtime)


# The jitted function behind the training loop's step (train.host_step): XLA names its
# module jit_<this>.
STEP_NAME = train.train_step.__wrapped__.__name__


def _dump_flags(hlo_dir: str) -> str:
    return (
        f" --xla_dump_to={hlo_dir} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*{STEP_NAME}.*"
    )


# ----------------------------------------------------------------------------- main


def profile(config, steps: int, out_dir: str) -> dict:
    """Traces `steps` timed train steps (and train_speed's warm-up) into `out_dir`."""
    spec = configs.dataset_spec(config.dataset)
    if spec is None:
        raise ValueError(f"no DatasetSpec for {config.dataset!r}: its image shape is unknown")
    state = train.create_train_state(
        config,
        None,
        num_classes=spec.num_classes,
        image_shape=spec.image_shape,
        mean=spec.mean,
        std=spec.std,
        steps_per_epoch=STEPS_PER_EPOCH,
    )
    batch = train_speed._synthetic_batch(config, spec.image_shape, spec.num_classes)
    measure_train(state, config, batch, 0)  # compiles (and dumps the HLO) outside the trace
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # XLA's thunks only: Python frames would slow the step
    with jax.profiler.trace(out_dir, create_perfetto_trace=True, profiler_options=options):
        times = measure_train(state, config, batch, steps)
    hlo = _newest(os.path.join(out_dir, "hlo", f"*{STEP_NAME}*after_optimizations.txt"))
    with open(hlo) as f:
        instructions = parse_hlo(f.read())
    trace = _newest(os.path.join(out_dir, "**", "perfetto_trace.json.gz"))
    totals, executions = thunk_times(trace, set(instructions))
    return dict(
        instructions=instructions,
        ms={name: us / executions / 1e3 for name, us in totals.items()},
        executions=executions,
        wall_ms=statistics.median(times) * 1e3,
    )


def print_report(result: dict, config, top: int) -> None:
    instructions, ms = result["instructions"], result["ms"]
    by_class: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    for name, value in ms.items():
        by_class[classify(instructions[name])] += value
        count[classify(instructions[name])] += 1
    total = sum(by_class.values())
    dtype = getattr(config, "compute_dtype", "float32")
    print()
    print(
        f"{config.model} {','.join(map(str, config.widths))}, batch {config.batch_size}, "
        f"{dtype}: {result['wall_ms']:.0f} ms per step (wall, median), {total:.0f} ms of XLA "
        f"ops per step ({result['executions']} steps traced, {len(ms)} thunks per step)"
    )
    print()
    print("| operation class | ms per step | % | thunks |")
    print("|---|---:|---:|---:|")
    for name in CLASSES:
        value = by_class.get(name, 0.0)
        print(f"| {name} | {value:.0f} | {100 * value / total:.1f} | {count.get(name, 0)} |")
    print(f"| all XLA ops | {total:.0f} | 100.0 | {sum(count.values())} |")
    print()
    print(f"Top {top} thunks:")
    print()
    print("| thunk | class | ms per step | % | shape | op | from |")
    print("|---|---|---:|---:|---|---|---|")
    for name, value in sorted(ms.items(), key=lambda item: -item[1])[:top]:
        ins = instructions[name]
        print(
            f"| {name} | {classify(ins)} | {value:.1f} | {100 * value / total:.1f} | {ins.shape} "
            f"| {ins.op_name.removeprefix(f'jit({STEP_NAME})/')} | {ins.where} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(_parse_args(argv))
    steps, top, trace_dir = args.pop("steps"), args.pop("top"), args.pop("trace_dir")
    args.pop("workdir", None)
    dataset = args.pop("dataset", "cifar10")
    try:
        config = configs.get_config(dataset, **args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.getLogger("absl").setLevel(logging.ERROR)
    out_dir = trace_dir or tempfile.mkdtemp(prefix="profile_step_")
    # XLA reads its flags when the CPU client starts, at the first computation: after this.
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + _dump_flags(f"{out_dir}/hlo")
    try:
        result = profile(config, steps, out_dir)
    finally:
        if trace_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    print_report(result, config, top)
    if trace_dir:
        print(f"\nTrace and HLO kept in {trace_dir} (open the .json.gz in ui.perfetto.dev)")
    return 0


def _parse_args(argv: Sequence[str] | None):
    parser = train_command.build_parser()
    parser.prog = "python -m benchmarks.training.profile_step"
    parser.description = __doc__.split("\n")[0]
    parser.add_argument("--steps", type=int, default=3, help="timed train steps traced")
    parser.add_argument("--top", type=int, default=10, help="costliest thunks listed")
    parser.add_argument("--trace_dir", help="keep the trace and HLO here (default: deleted)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    runtime.exec_with_allocator()  # what `python -m research.train` runs with
    sys.exit(main())
