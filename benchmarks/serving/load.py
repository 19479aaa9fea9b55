"""Load test of the production stack: locust against nginx + gunicorn on loopback.

Starts deploy/run-local.sh (nginx in front of gunicorn, production settings, the shipped
models, a fresh SQLite database and MEDIA_ROOT in a temporary folder, `warmup_models` first so
the JAX compilation cache is warm), then runs benchmarks/serving/locustfile.py headless for each
number of users, first with batched serving off (DJANGO_CLASSIFIER_MAX_BATCH=0), then on (the
settings' defaults), and prints per run: requests/s, p50/p95/p99 (all answers, and valid uploads),
answers by status, errors that are not 4xx (must be 0), rows added against 201s, and at the
end the files under MEDIA_ROOT that no row owns (must be 0).

    python -m benchmarks.serving.load                              # 1, 8, 32 users, 60 s each
    python -m benchmarks.serving.load --users 1 8 32 --seconds 30  # off, then on: one table
    python -m benchmarks.serving.load --batching on                # one mode only
    python -m benchmarks.serving.load --users 8 --seconds 30 --max-requests 300   # workers recycle
    python -m benchmarks.serving.load --database-url postgres://user:pw@127.0.0.1/db   # empty db

Needs nginx (Debian: apt-get install nginx) and locust (pip install -e '.[load]'). The
client runs on the same machine as the server: on few cores they share the CPUs.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.serving.web import METRICS_TOKEN, images_per_pass, scrape_metrics, stop_server

ROOT = Path(__file__).resolve().parents[2]  # the repository
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 600

MEDIA_REPORT = """
import json
from pathlib import Path, PurePosixPath
from django.conf import settings
from uploads.models import Prediction, Upload

def stem(name):
    parts = PurePosixPath(name).with_suffix("").parts
    return "/".join(parts[1:])

owned = {stem(name) for name in Upload.objects.values_list("image", flat=True)}
root = Path(settings.MEDIA_ROOT)
files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
print(json.dumps({
    "predictions": Prediction.objects.count(),
    "uploads": Upload.objects.count(),
    "files": len(files),
    "orphans": sorted(f for f in files if stem(f) not in owned)[:20],
}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def server_env(args: argparse.Namespace, workdir: Path, batching: bool = True) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "classifier_site.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_TRUSTED_PROXIES": HOST,
        # Every locust user comes from 127.0.0.1: the per-client rate would throttle the test.
        "DJANGO_API_THROTTLE_RATE": "10000000/min",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DATABASE_URL": args.database_url or f"sqlite:///{workdir / 'db.sqlite3'}",
        "DJANGO_MEDIA_ROOT": str(workdir / "media"),
        "GUNICORN_WORKERS": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
        "GUNICORN_MAX_REQUESTS": str(args.max_requests),
        "GUNICORN_PORT": str(free_port()),
        "PYTHON": sys.executable,
        "RUN_WARMUP": "1",
        "DJANGO_METRICS_TOKEN": METRICS_TOKEN,  # the batcher's images per pass, from /metrics
    }
    env["DJANGO_CLASSIFIER_MAX_BATCH"] = "8" if batching else "0"
    return env


def start(env: dict[str, str], port: int, workdir: Path) -> subprocess.Popen:
    log = open(workdir / "run-local.log", "wb")  # noqa: SIM115  (lives as long as the server)
    return subprocess.Popen(
        ["bash", "deploy/run-local.sh", str(port), str(workdir)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until_ready(port: int, server: subprocess.Popen, workers: int) -> float:
    start_time = time.perf_counter()
    ready = 0
    while ready < 4 * workers:
        if server.poll() is not None:
            raise RuntimeError("the stack exited during start-up; see run-local.log")
        if time.perf_counter() - start_time > STARTUP_TIMEOUT_S:
            raise RuntimeError(f"/healthz not ready after {STARTUP_TIMEOUT_S} s")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=5) as answer:
                status = answer.status
        except (OSError, urllib.error.HTTPError):
            status = 0
        ready = ready + 1 if status == 200 else 0
        time.sleep(0.25)
    return time.perf_counter() - start_time


def media_report(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", MEDIA_REPORT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_locust(port: int, users: int, seconds: int, workdir: Path, env: dict) -> dict:
    results = workdir / f"locust-{users}.json"
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "serving" /
        "locustfile.py"),
        "--headless", "--only-summary", "--users", str(users), "--spawn-rate", str(users),
        "--run-time", f"{seconds}s", "--stop-timeout", "30", "--host", f"http://{HOST}:{port}",
    ]  # fmt: skip
    locust_env = {**env, "LOAD_RESULTS": str(results)}
    with open(workdir / f"locust-{users}.log", "wb") as log:  # locust's own summary
        subprocess.run(command, cwd=ROOT, env=locust_env, stdout=log, stderr=log, check=False)
    data = json.loads(results.read_text())
    statuses = Counter()
    for by_status in data["statuses"].values():
        statuses.update(by_status)
    times = [t for values in data["times_ms"].values() for t in values]
    valid = [t for name, values in data["times_ms"].items() if "valid" in name for t in values]
    created = sum(by.get("201", 0) for by in data["statuses"].values())
    not_4xx_errors = sum(n for s, n in statuses.items() if not (200 <= int(s) < 500))
    return {
        "users": users,
        "requests": len(times),
        "requests_per_s": len(times) / seconds,
        "p50_ms": percentile(times, 50),
        "p95_ms": percentile(times, 95),
        "p99_ms": percentile(times, 99),
        "max_ms": max(times, default=float("nan")),
        "valid_upload_p99_ms": percentile(valid, 99),
        "statuses": dict(sorted(statuses.items())),
        "errors_not_4xx": not_4xx_errors,
        "created_201": created,
        "by_request": data["statuses"],
    }


def run_stack(args: argparse.Namespace, batching: bool) -> dict:
    """Start the stack with batching on or off, run locust for each number of users, stop."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    port = free_port()
    env = server_env(args, workdir, batching)
    server = start(env, port, workdir)
    runs = []
    try:
        startup_s = wait_until_ready(port, server, args.workers)
        for users in args.users:
            before, scrape = media_report(env), scrape_metrics(port)
            run = run_locust(port, users, args.seconds, workdir, env)
            after = media_report(env)
            run["rows_added"] = after["predictions"] - before["predictions"]
            run["batching"] = batching
            run["images_per_pass"] = images_per_pass(scrape, scrape_metrics(port))
            runs.append(run)
        media = media_report(env)
        log = (workdir / "logs" / "gunicorn.log").read_text(errors="replace")
    finally:
        stop_server(server)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "startup_s": startup_s,
        "runs": runs,
        "media": media,
        "worker_starts": len(re.findall(r"Booting worker", log)),
        "workdir": str(workdir) if args.keep else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 8, 32], help="one run each")
    parser.add_argument(
        "--batching", choices=["both", "off", "on"], default="both", help="default: off, then on"
    )
    parser.add_argument("--seconds", type=int, default=60, help="length of each run")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument(
        "--max-requests", type=int, default=0, help="GUNICORN_MAX_REQUESTS (0: no recycling)"
    )
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        parser.error("nginx is not installed (Debian: apt-get install nginx)")

    modes = {"both": [False, True], "off": [False], "on": [True]}[args.batching]
    stacks = [run_stack(args, batching) for batching in modes]
    runs = [run for stack in stacks for run in stack["runs"]]
    startup_s = max(stack["startup_s"] for stack in stacks)
    worker_starts = sum(stack["worker_starts"] for stack in stacks)
    media = {  # every stack's MEDIA_ROOT together
        key: sum((stack["media"][key] for stack in stacks), [] if key == "orphans" else 0)
        for key in ("predictions", "uploads", "files", "orphans")
    }
    workdir = stacks[-1]["workdir"]

    results = {
        "stack": f"nginx -> gunicorn {args.workers} workers x {args.threads} threads, "
        f"{'PostgreSQL' if args.database_url.startswith('postgres') else 'SQLite'}, loopback",
        "cpus": os.cpu_count(),
        "max_requests": args.max_requests,
        "startup_s": round(startup_s, 1),
        "runs": runs,
        "worker_restarts": worker_starts - args.workers * len(stacks),
        "media": media,
        "workdir": workdir,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results)
    return results


def print_report(results: dict) -> None:
    print(f"{results['stack']}, {results['cpus']} CPUs, ready in {results['startup_s']} s")
    if results["max_requests"]:
        print(
            f"GUNICORN_MAX_REQUESTS={results['max_requests']}: "
            f"{results['worker_restarts']} worker restarts"
        )
    off = {run["users"]: run for run in results["runs"] if not run["batching"]}
    print(
        f"{'batch':<5} {'vs off':>6} {'img/pass':>8} {'users':>5} {'requests':>8} {'req/s':>7} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'upload p99':>10} {'non-4xx err':>11} {'201s':>5} {'rows':>5}  statuses"
    )
    for run in results["runs"]:
        base = off.get(run["users"])
        ratio = (
            f"{run['requests_per_s'] / base['requests_per_s']:.2f}x"
            if base and run["batching"] and base["requests_per_s"]
            else ""
        )
        print(
            f"{'on' if run['batching'] else 'off':<5} {ratio:>6} {run['images_per_pass']:>8.2f} "
            f"{run['users']:>5} {run['requests']:>8} {run['requests_per_s']:>7.1f} "
            f"{run['p50_ms']:>7.0f} {run['p95_ms']:>7.0f} {run['p99_ms']:>7.0f} "
            f"{run['max_ms']:>7.0f} {run['valid_upload_p99_ms']:>10.0f} "
            f"{run['errors_not_4xx']:>11} {run['created_201']:>5} {run['rows_added']:>5}  "
            f"{run['statuses']}"
        )
    media = results["media"]
    print(
        f"MEDIA_ROOT: {media['files']} files for {media['uploads']} uploads, "
        f"{len(media['orphans'])} orphans {media['orphans'][:5]}"
    )


if __name__ == "__main__":
    main()
