"""Where a request's time goes: py-spy on a gunicorn worker while clients post images.

Starts the production stack as benchmarks.serving.web does (gunicorn, production settings,
SQLite in a temporary folder, batching off), one worker so one process holds every request,
waits for /healthz, then samples that worker with `py-spy record` while `--clients` keep-alive
clients post the 32x32 PNG and the 1 MP JPEG in turn to POST /api/predict (or /api/classify).
Writes a flame graph (SVG) and the collapsed stacks, and prints the share of the worker's
CPU samples by stage: each sample goes to the innermost stage its stack passes through.

    python -m benchmarks.serving.profile_web --out docs/img/request-profile.svg
    python -m benchmarks.serving.profile_web --endpoint classify --seconds 20 --clients 4

Needs py-spy (the `profile` extra) and ptrace rights over the worker (root, or
kernel.yama.ptrace_scope=0); sampling at 100 Hz without pausing the process (--nonblocking).
"""

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.serving.web import (
    ROOT,
    Client,
    encode_multipart,
    free_port,
    make_megapixel_jpeg,
    make_small_png,
    start_server,
    wait_until_ready,
)

# (stage, what a frame's "function (file:line)" contains): the innermost match names the stage.
STAGES = (
    ("forward pass", ("classify_arrays", "research/serving/batching.py")),
    ("model input (resize)", ("model_input (", "research/serving/preprocess.py")),
    ("header check (validation)", ("_check_header",)),
    ("decode", ("_decode (",)),
    ("re-encode for storage", ("encode_for_storage",)),
    ("thumbnail", ("encode_thumbnail",)),
    ("model-input PNG", ("encode_png",)),
    ("display copy (EXIF, sRGB)", ("display_image",)),
    ("file writes", ("storage.py", "_store_files")),
    ("database", ("django/db/", "sqlite3")),
    ("metrics", ("prometheus_client",)),
    ("render (serializer, JSON)", ("serializers", "renderers.py", "rest_framework/response")),
    ("multipart parsing", ("parsers.py", "multipartparser.py", "_predict_fields")),
    ("sha256", ("sha256",)),
    ("session (key, row, cookie)", ("django/contrib/sessions", "get_random_string", "Owner.of")),
    ("sending the answer", ("gunicorn/util.py",)),
)
# A thread waiting for work (the store encoders' pool) is not the request's time.
IDLE = ("concurrent/futures/thread.py:81",)


def stage_of(stack: str) -> str:
    """The innermost stage a collapsed stack ('outer;...;inner') passes through; work queued
    for after the answer (uploads.deferred) is marked so."""
    after = "after the answer: " if "uploads/deferred.py" in stack else ""
    for frame in reversed(stack.split(";")):
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return after + stage
    if "gunicorn" in stack and "handle" not in stack:
        return "gunicorn's loop (mostly waiting)"
    return "other (Django, middleware, WSGI)"


def split(collapsed: str) -> Counter:
    """Samples per stage from py-spy's raw (collapsed) output, request threads only."""
    counts: Counter = Counter()
    for line in collapsed.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        innermost = stack.split(";")[-1]
        if "classifier-warmup" in stack or any(idle in innermost for idle in IDLE):
            continue
        counts[stage_of(stack)] += int(number)
    return counts


def print_split(counts: Counter) -> None:
    total = sum(counts.values()) or 1
    print(f"{'stage':<52}{'samples':>9}{'share':>8}")
    for stage, count in counts.most_common():
        print(f"{stage:<52}{count:>9}{100 * count / total:>7.1f}%")


def worker_pid(master: int) -> int:
    """The gunicorn worker: the master's one child."""
    for _ in range(100):
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("no gunicorn worker")


def drive(port: int, bodies: list[tuple[bytes, str]], path: str, clients: int, seconds: float):
    """`clients` keep-alive clients posting the bodies in turn; returns (answers, errors)."""
    deadline = time.perf_counter() + seconds
    results: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        client = Client(port)
        statuses = []
        for body, content_type in itertools.cycle(bodies):
            if time.perf_counter() > deadline:
                break
            statuses.append(client.predict(body, content_type, path)[0])  # 0: no answer
        client.close()
        with lock:
            results.extend(statuses)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(results), sum(not 200 <= status < 400 for status in results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "cifar10")
    parser.add_argument("--endpoint", choices=["predict", "classify"], default="predict")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="threads of the one worker")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--out", type=Path, default=Path("request-profile.svg"))
    parser.add_argument("--split", type=Path, help="only print the split of collapsed stacks")
    args = parser.parse_args(argv)
    if args.split:
        print_split(split(args.split.read_text()))
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.workers = 1

    workdir = Path(tempfile.mkdtemp(prefix="profile-web-"))
    port = free_port()
    server = start_server(args, workdir, port, batching=False)
    try:
        wait_until_ready(port, server, 1)
        pid = worker_pid(server.pid)
        fields = {"model": args.model}
        bodies = [
            encode_multipart(make_small_png(), "small.png", fields),
            encode_multipart(make_megapixel_jpeg(), "photo.jpg", fields),
        ]
        path = f"/api/{args.endpoint}"
        drive(port, bodies, path, args.clients, 2.0)  # warm every thread
        raw = workdir / "stacks.txt"
        common = ["record", "--pid", str(pid), "--rate", str(args.rate), "--nonblocking"]
        common += ["--duration", str(int(args.seconds))]
        recorders = [
            subprocess.Popen([py_spy, *common, "--format", "flamegraph", "-o", str(args.out)]),
            subprocess.Popen([py_spy, *common, "--format", "raw", "-o", str(raw)]),
        ]
        answers, errors = drive(port, bodies, path, args.clients, args.seconds)
        for recorder in recorders:
            recorder.wait(timeout=120)
        counts = split(raw.read_text())
        args.out.with_suffix(".txt").write_text(raw.read_text())
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"POST {path}: {answers} answers in {args.seconds:g} s ({errors} errors), "
          f"{args.clients} clients, 1 worker x {args.threads} threads")  # fmt: skip
    print_split(counts)
    print(f"flame graph: {args.out}; collapsed stacks: {args.out.with_suffix('.txt')}")


if __name__ == "__main__":
    main()
