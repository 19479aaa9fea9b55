"""End-to-end latency and throughput of the site's API, against the bare classifier.

Starts the production stack (gunicorn with production settings, or with --nginx nginx in front
as deploy/run-local.sh runs them; SQLite in a temporary folder) on loopback, waits for /healthz,
then measures POST /api/predict (stored) and POST /api/classify (nothing stored) for a 32x32 PNG
and a 1-megapixel JPEG (p50/p95 over sequential requests, and p50 over Classifier.predict on the
same decoded image in this process, one call after each request so both see the same load: the
overhead), and requests/s with p50/p95/p99 at 1, 8 and 32 concurrent clients posting the PNG to
/api/predict. It does so with batched serving off
(DJANGO_CLASSIFIER_MAX_BATCH=0), then on (8), in one run, so the ratios compare like with like;
the server's /metrics gives the mean images per forward pass. Everything is bounded.

    python -m benchmarks.serving.web                                   # the shipped models/cifar10
    python -m benchmarks.serving.web --nginx                           # through nginx
    python -m benchmarks.serving.web --model-dir /tmp/tiny/cifar10     # any exported model
    python -m benchmarks.serving.web --requests 100 --clients 1 8 32 --seconds 10 --workers 2
    --threads 4
    python -m benchmarks.serving.web --batching on                     # one mode only
    python -m benchmarks.serving.web --nginx --batching off --also 2x8 3x4   # workers x threads
    python -m benchmarks.serving.web --nginx --batching off --also 2xasgi    # uvicorn's workers
    python -m benchmarks.serving.web --nginx --batching off --also 2x4:unpinned  # no core each

Targets: p50 at most 2x the bare classifier's for /api/predict and 1.5x for /api/classify, both
images; >= 250 requests/s at 8 and 32 clients through nginx with zero errors; batching on
>= 1.3x off at 32 clients and <= 1.1x off's p50 at 1 client, or off by default.
"""

import argparse
import functools
import http.client
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]  # the repository
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 300


def make_small_png() -> bytes:
    """A 32x32 PNG, the size the CIFAR-10 model sees."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def make_megapixel_jpeg() -> bytes:
    """A 1000x1000 photo-like JPEG (smooth gradients, shapes, a little sensor noise)."""
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, 1000)[None, :, None]
    y = np.linspace(0, 1, 1000)[:, None, None]
    pixels = 255 * (0.6 * x * np.array([0.9, 0.5, 0.2]) + 0.4 * y * np.array([0.1, 0.4, 0.9]))
    pixels = pixels + rng.normal(0, 4, (1000, 1000, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([300, 250, 700, 650], fill=(200, 60, 40))
    draw.rectangle([100, 700, 400, 950], fill=(40, 120, 60))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def encode_multipart(data: bytes, name: str, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive HTTP connection posting images to /api/predict."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection(HOST, port, timeout=60)
        self.last_body = b""  # the last answer's body (b"": none)

    def predict(
        self, body: bytes, content_type: str, path: str = "/api/predict"
    ) -> tuple[int, float]:
        """(status, milliseconds) of one POST; status 0 when no answer came."""
        start = time.perf_counter()
        try:
            self.connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = self.connection.getresponse()
            self.last_body = response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = http.client.HTTPConnection(HOST, self.port, timeout=60)
            self.last_body, status = b"", 0
        return status, (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self.connection.close()


# The endpoints timed one request at a time: path and the status of a good answer.
ENDPOINTS = {"predict": ("/api/predict", 201), "classify": ("/api/classify", 200)}


def measure_latency(
    port: int,
    data: bytes,
    name: str,
    model: str,
    count: int,
    endpoint: str = "predict",
    bare: Callable[[], object] | None = None,
) -> dict:
    """Sequential requests on one connection: p50/p95 in milliseconds; with `bare`, one call of
    it after each request, so that the two share the machine's state (its p50 beside)."""
    path, ok = ENDPOINTS[endpoint]
    body, content_type = encode_multipart(data, name, {"model": model})
    client = Client(port)
    for _ in range(5):  # first requests of a fresh connection/thread
        client.predict(body, content_type, path)
    results, bare_times, bare_cpu = [], [], []
    for _ in range(count):
        results.append(client.predict(body, content_type, path))
        if bare is not None:
            start, start_cpu = time.perf_counter(), time.process_time()
            bare()
            bare_times.append((time.perf_counter() - start) * 1000)
            bare_cpu.append((time.process_time() - start_cpu) * 1000)  # all its threads
    client.close()
    times = [ms for status, ms in results if status == ok]
    return {
        "requests": count,
        "errors": sum(status != ok for status, _ in results),
        "p50_ms": percentile(times, 50),
        "p95_ms": percentile(times, 95),
        "bare_p50_ms": percentile(bare_times, 50),
        "bare_cpu_p50_ms": percentile(bare_cpu, 50),
    }


def measure_throughput(port: int, data: bytes, model: str, clients: int, seconds: float) -> dict:
    """Concurrent clients posting for a fixed time: requests/s and errors."""
    body, content_type = encode_multipart(data, "small.png", {"model": model})
    statuses: list[int] = []
    times: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def run() -> None:
        client = Client(port)
        local = []
        while time.perf_counter() < deadline:
            local.append(client.predict(body, content_type))
        client.close()
        with lock:
            statuses.extend(status for status, _ in local)
            times.extend(ms for _, ms in local)

    start, busy_before = time.perf_counter(), machine_busy_seconds()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, busy = time.perf_counter() - start, machine_busy_seconds() - busy_before
    ok = sum(status == 201 for status in statuses)
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(statuses),
        "errors": len(statuses) - ok,
        "requests_per_s": ok / elapsed,
        "p50_ms": percentile(times, 50),
        "p95_ms": percentile(times, 95),
        "p99_ms": percentile(times, 99),
        # Every process's CPU time (the server's and these clients'), per answered request.
        "cpu_ms_per_request": busy * 1000 / ok if ok else float("nan"),
    }


def machine_busy_seconds() -> float:
    """CPU seconds this machine has spent busy since boot, all cores (Linux; nan elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            return busy_seconds(stat.readline(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return float("nan")


def busy_seconds(cpu_line: str, ticks_per_second: int) -> float:
    """The busy seconds in /proc/stat's first line ('cpu user nice system idle iowait irq
    softirq steal ...'): user, nice, system, irq and softirq. Idle, waiting for I/O and the
    time a hypervisor gave to other machines (steal) are not this machine's work."""
    ticks = [int(value) for value in cpu_line.split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / ticks_per_second


def bare_predictors(model_dir: Path, images: dict[str, bytes]) -> dict[str, Callable]:
    """Per image, a call of Classifier.predict on it, decoded, in this process (warm)."""
    from research.serving.classifier import Classifier

    classifier = Classifier.load(model_dir)
    classifier.warmup()
    calls = {}
    for key, data in images.items():
        image = Image.open(io.BytesIO(data))
        image.load()
        calls[key] = functools.partial(classifier.predict, [image])
        for _ in range(5):
            calls[key]()
    return calls


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


METRICS_TOKEN = secrets.token_urlsafe(24)


def server_env(
    args: argparse.Namespace, workdir: Path, port: int, batching: bool
) -> dict[str, str]:
    """The environment of the stack start_server starts (and of a manage.py command run
    against its database): production settings, SQLite and MEDIA_ROOT under `workdir`."""
    metrics_dir = workdir / "metrics"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "classifier_site.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "DJANGO_MEDIA_ROOT": str(workdir / "media"),
        "DJANGO_CLASSIFIER_MODELS": f"{args.model}={args.model_dir.resolve()}",
        "DJANGO_CLASSIFIER_DEFAULT_MODEL": args.model,
        "GUNICORN_BIND": f"{HOST}:{port}",
        "GUNICORN_WORKERS": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
        "GUNICORN_WORKER_CLASS": getattr(args, "worker_class", "gthread"),
        # --also 2x4:unpinned / :pinned; else as set in this environment (default auto).
        **(
            {"GUNICORN_PIN_WORKERS": args.pin_workers} if getattr(args, "pin_workers", None) else {}
        ),
        # Every client comes from 127.0.0.1: the per-client rate would answer 429s.
        "DJANGO_API_THROTTLE_RATE": "10000000/min",
        "DJANGO_LIVE_THROTTLE_RATE": "10000000/min",  # /api/classify's own rate
        "DJANGO_METRICS_TOKEN": METRICS_TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),  # /metrics sums both workers
    }
    env["DJANGO_CLASSIFIER_MAX_BATCH"] = "8" if batching else "0"
    if getattr(args, "nginx", False):
        env.update(
            {
                "DJANGO_TRUSTED_PROXIES": HOST,
                "GUNICORN_PORT": str(free_port()),
                "PYTHON": sys.executable,
                # Pages need the collected static files (their manifest); the API does not.
                "RUN_COLLECTSTATIC": "1" if getattr(args, "pages", False) else "0",
            }
        )
    return env


def start_server(
    args: argparse.Namespace, workdir: Path, port: int, batching: bool
) -> subprocess.Popen:
    """Migrate a fresh SQLite database and start gunicorn with the production settings, alone
    or (--nginx) behind nginx as deploy/run-local.sh runs them, listening on `port`."""
    (workdir / "metrics").mkdir()
    env = server_env(args, workdir, port, batching)
    if getattr(args, "nginx", False):
        return subprocess.Popen(
            ["bash", "deploy/run-local.sh", str(port), str(workdir / "run")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "run-local.log", "wb"),  # noqa: SIM115  (closed with it)
            start_new_session=True,
        )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "classifier_site/gunicorn_conf.py",
            "--access-logfile",
            "/dev/null",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "gunicorn.log", "wb"),  # noqa: SIM115  (closed with the process)
        start_new_session=True,
    )


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (gunicorn, or run-local.sh with nginx)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def wait_until_ready(port: int, server: subprocess.Popen, workers: int) -> float:
    """Poll /healthz until every worker has answered ready; return seconds waited."""
    start = time.perf_counter()
    ready_in_a_row = 0
    while time.perf_counter() - start < STARTUP_TIMEOUT_S:
        if server.poll() is not None:
            raise RuntimeError("gunicorn exited during start-up")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            connection.request("GET", "/healthz")
            status = connection.getresponse().status
            connection.close()
        except OSError:
            status = 0
        ready_in_a_row = ready_in_a_row + 1 if status == 200 else 0
        if ready_in_a_row >= 4 * workers:  # several answers, so every worker is warm
            return time.perf_counter() - start
        time.sleep(0.25)
    raise RuntimeError(f"/healthz not ready after {STARTUP_TIMEOUT_S} s")


def scrape_metrics(port: int) -> str:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return text if response.status == 200 else ""


def metric_value(scrape: str, name: str) -> float:
    """The sum of a metric's samples over every label set (0 when absent)."""
    total = 0.0
    for line in scrape.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def images_per_pass(before: str, after: str) -> float:
    """Mean images per forward pass of the batcher between two scrapes (nan: none or off)."""
    passes = metric_value(after, "classifier_batch_images_count") - metric_value(
        before, "classifier_batch_images_count"
    )
    images = metric_value(after, "classifier_batch_images_sum") - metric_value(
        before, "classifier_batch_images_sum"
    )
    return images / passes if passes else float("nan")


def measure_mode(
    args: argparse.Namespace, images: dict, names: dict, batching: bool, bare: dict
) -> dict:
    """Start a server with batching on or off, measure, scrape /metrics, stop it."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    port = free_port()
    server = start_server(args, workdir, port, batching)
    try:
        startup_s = wait_until_ready(port, server, args.workers)
        latency = {
            f"{endpoint} {key}": measure_latency(
                port, data, names[key], args.model, args.requests, endpoint, bare[key]
            )
            for endpoint in ENDPOINTS
            for key, data in images.items()
        }
        throughput = []
        for clients in args.clients:
            before = scrape_metrics(port)
            run = measure_throughput(port, images["png_32x32"], args.model, clients, args.seconds)
            run["images_per_pass"] = images_per_pass(before, scrape_metrics(port))
            throughput.append(run)
        scrape = scrape_metrics(port)
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "batching": batching,
        "startup_s": round(startup_s, 1),
        "latency": latency,
        "throughput": throughput,
        "scrape": scrape,
    }


def measure_config(args: argparse.Namespace, image: bytes, config: str) -> dict:
    """Throughput only (batching off) with another `WORKERSxTHREADS` of gunicorn, or
    `WORKERSxasgi`: that many uvicorn workers running classifier_site.asgi; a `:unpinned` or
    `:pinned` suffix sets GUNICORN_PIN_WORKERS (a core per worker) for that run."""
    shape, _, pinning = config.lower().partition(":")
    workers, kind = shape.split("x")
    asgi = kind == "asgi"
    other = argparse.Namespace(
        **{
            **vars(args),
            "workers": int(workers),
            "threads": args.threads if asgi else int(kind),
            "worker_class": "asgi" if asgi else "gthread",
            "pin_workers": {"pinned": "1", "unpinned": "0"}.get(pinning),
        }
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    port = free_port()
    server = start_server(other, workdir, port, batching=False)
    try:
        wait_until_ready(port, server, other.workers)
        throughput = [
            measure_throughput(port, image, args.model, clients, args.seconds)
            for clients in args.clients
        ]
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return {"config": config.lower(), "throughput": throughput}


def gunicorn_config(text: str) -> str:
    """argparse type of --also: WORKERSxTHREADS (both positive) or WORKERSxasgi, optionally
    followed by :pinned or :unpinned."""
    shape, colon, pinning = text.lower().partition(":")
    parts = shape.split("x")
    if (
        len(parts) != 2
        or not all(
            (part.isdigit() and int(part) > 0) or (index == 1 and part == "asgi")
            for index, part in enumerate(parts)
        )
        or (colon and pinning not in ("pinned", "unpinned"))
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not WORKERSxTHREADS or WORKERSxasgi, with :pinned or :unpinned or "
            "nothing after it (e.g. 3x4, 2xasgi, 2x4:unpinned)"
        )
    return text.lower()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar10", help="model name to register")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "cifar10")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per image")
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="concurrent clients, one run each",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument(
        "--batching", choices=["both", "off", "on"], default="both", help="default: off, then on"
    )
    parser.add_argument(
        "--nginx", action="store_true", help="through nginx, as deploy/run-local.sh runs it"
    )
    parser.add_argument(
        "--also",
        type=gunicorn_config,
        nargs="+",
        default=[],
        metavar="WxT",
        help="other gunicorn workers x threads (or WORKERSxasgi: uvicorn's workers, the asgi "
        "extra), each optionally :pinned or :unpinned (a core per worker or not), to measure "
        "throughput with (batching off), after the main runs, in the same command",
    )
    parser.add_argument("--show-scrape", action="store_true", help="print the batcher's metrics")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        parser.error(f"no model at {args.model_dir}; pass --model-dir PATH to an exported model")

    images = {"png_32x32": make_small_png(), "jpeg_1mp": make_megapixel_jpeg()}
    names = {"png_32x32": "small.png", "jpeg_1mp": "photo.jpg"}
    modes = {"both": [False, True], "off": [False], "on": [True]}[args.batching]
    bare = bare_predictors(args.model_dir, images)  # timed between the requests
    runs = [measure_mode(args, images, names, batching, bare) for batching in modes]
    configs = [measure_config(args, images["png_32x32"], config) for config in args.also]

    front = "nginx -> " if args.nginx else ""
    results = {
        "server": f"{front}gunicorn {args.workers} workers x {args.threads} threads, SQLite, "
        "loopback",
        "cpus": os.cpu_count(),
        "runs": runs,
        "main_config": f"{args.workers}x{args.threads}",
        "configs": configs,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results, show_scrape=args.show_scrape)
    return results


# p50 over the bare Classifier's on the same image, at most (issue: serving at the model's speed).
OVERHEAD_TARGETS = {"predict": 2.0, "classify": 1.5}

SHOWN = (
    "classifier_batch_images_",
    "classifier_batch_wait_seconds_sum",
    "classifier_batch_wait_seconds_count",
    "classifier_predictions_total",
)


def print_report(results: dict, *, show_scrape: bool = False) -> None:
    print(f"{results['server']}, {results['cpus']} CPUs")
    print(f"{'batching':<9}{'endpoint':<9}{'image':<11}{'p50 ms':>8}{'p95 ms':>8}{'errors':>7}"
          f"{'bare p50':>10}{'bare CPU':>10}{'overhead':>10}{'target':>8}")  # fmt: skip
    for run in results["runs"]:
        mode = "on" if run["batching"] else "off"
        for key, row in run["latency"].items():
            endpoint, image = key.split(" ")
            bare = row["bare_p50_ms"]
            target = OVERHEAD_TARGETS[endpoint]
            print(
                f"{mode:<9}{endpoint:<9}{image:<11}{row['p50_ms']:>8.1f}{row['p95_ms']:>8.1f}"
                f"{row['errors']:>7}{bare:>10.2f}{row.get('bare_cpu_p50_ms', float('nan')):>10.2f}"
                f"{row['p50_ms'] / bare:>9.2f}x{target:>7.1f}x"
            )
    print()
    print(f"{'batching':<9}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}{'vs off':>8}{'img/pass':>10}{'CPU ms/req':>12}")  # fmt: skip
    off = {
        t["clients"]: t for run in results["runs"] if not run["batching"] for t in run["throughput"]
    }
    for run in results["runs"]:
        mode = "on" if run["batching"] else "off"
        for t in run["throughput"]:
            base = off.get(t["clients"])
            ratio = (
                f"{t['requests_per_s'] / base['requests_per_s']:.2f}x"
                if base and run["batching"] and base["requests_per_s"]
                else ""
            )
            print(
                f"{mode:<9}{t['clients']:>8}{t['requests_per_s']:>9.1f}{t['p50_ms']:>9.1f}"
                f"{t['p95_ms']:>9.1f}{t['p99_ms']:>9.1f}{t['errors']:>8}{ratio:>8}"
                f"{t['images_per_pass']:>10.2f}{t.get('cpu_ms_per_request', float('nan')):>12.2f}"
            )
    if results.get("configs"):
        print_configs(results, off)
    for run in results["runs"]:
        if run["batching"] and show_scrape:
            shown = [line for line in run["scrape"].splitlines() if line.startswith(SHOWN)]
            print("\n".join(shown))


def print_configs(results: dict, off: dict[int, dict]) -> None:
    """Throughput with the other workers x threads (--also), against the main runs' (off)."""
    print()
    print(f"{'gunicorn':<14}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}{'vs ' + results['main_config']:>9}{'CPU ms/req':>12}")  # fmt: skip
    main_rows = [(results["main_config"], t) for t in off.values()]
    other_rows = [(c["config"], t) for c in results["configs"] for t in c["throughput"]]
    for config, t in main_rows + other_rows:
        base = off.get(t["clients"])
        ratio = (
            f"{t['requests_per_s'] / base['requests_per_s']:.2f}x"
            if base and base["requests_per_s"]
            else ""
        )
        print(
            f"{config:<14}{t['clients']:>8}{t['requests_per_s']:>9.1f}{t['p50_ms']:>9.1f}"
            f"{t['p95_ms']:>9.1f}{t['p99_ms']:>9.1f}{t['errors']:>8}{ratio:>9}"
            f"{t.get('cpu_ms_per_request', float('nan')):>12.2f}"
        )


if __name__ == "__main__":
    main()
