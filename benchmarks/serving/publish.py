"""A load test during a publish: clients post to /api/predict through the production stack
while a new version of the served model is published with `manage.py publish_model`, then
rolled back with `manage.py publish_model --rollback`.

Starts nginx + gunicorn as benchmarks.serving.web --nginx does (deploy/run-local.sh,
production settings, SQLite and MEDIA_ROOT in a temporary folder), serving `--model-dir` (the
shipped models/cifar10) as `cifar10`. The new version is a copy of that directory under the
temporary folder with another version name and another temperature in its serving record, so
its answers differ from the old version's on the same image: a prediction made by a mix of the
two would show. `--clients` threads post one 32x32 PNG for `--hold` seconds, then the publish
runs; once every answer comes from the new version, `--hold` seconds more, then the rollback,
its swap, and `--hold` seconds more. It prints, for each phase (before, while the new version
swaps in, on it, while the old swaps back, after), requests, errors (must be 0), p50/p99/max
latency and the versions that answered; then it checks the database: every answer's row exists
and names the version that answered, only the two versions appear, each version gave one
answer for the image (a whole model, never a mix), and after each swap every answer came from
the version just served.

    python -m benchmarks.serving.publish                                   # 8 clients, 5 s holds
    python -m benchmarks.serving.publish --clients 8 --hold 5 --workers 2 --threads 4
    python -m benchmarks.serving.publish --via admin      # the admin's form and Roll back action

Needs nginx (Debian: apt-get install nginx). The clients share the machine with the server.
"""

import argparse
import datetime
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from benchmarks.serving import web

NAME = "cifar10"
# The new version's temperature against the old one's: another answer for the same image.
TEMPERATURE_FACTOR = 1.5
SWAP_TIMEOUT_S = 120.0
# A swap is over once every answer sent in this last stretch came from the wanted version.
SETTLED_S = 1.0

ROWS_REPORT = """
import json
from uploads.models import Prediction, ServedModel
print(json.dumps({
    "predictions": list(Prediction.objects.values_list("id", "model_name", "model_version",
                                                     "confidence")),
    "served": list(ServedModel.objects.order_by("id").values_list("version", "directory",
                                                                  "active")),
}))
"""


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when posted
    status: int
    ms: float
    id: int | None
    version: str
    confidence: float | None


def make_new_version(model_dir: Path, into: Path) -> tuple[Path, str, str]:
    """Copy an exported model directory under `into` as a new version: (directory, old
    version, new version). Only its serving records change (version, temperature)."""
    copy = Path(shutil.copytree(model_dir, into / model_dir.name))
    old = new = ""
    for metadata in sorted(copy.glob("*/meta/metadata")):
        record = json.loads(metadata.read_text())
        old = record["version"]
        day = datetime.date.today()
        new = f"{day:%Y%m%d}-step{record['step']}"
        if new == old:
            new = f"{day + datetime.timedelta(days=1):%Y%m%d}-step{record['step']}"
        record["version"] = new
        record["temperature"] = float(record.get("temperature", 1.0)) * TEMPERATURE_FACTOR
        metadata.write_text(json.dumps(record, indent=2))
    if not new:
        raise SystemExit(f"{model_dir} holds no serving record (*/meta/metadata)")
    return copy, old, new


class Load:
    """`clients` threads posting one image to /api/predict until stopped, every answer kept."""

    def __init__(self, port: int, clients: int):
        body, content_type = web.encode_multipart(web.make_small_png(), "small.png", {})
        self.request = (body, content_type)
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(port,)) for _ in range(clients)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> list[Answer]:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        return sorted(self.answers, key=lambda answer: answer.sent)

    def _run(self, port: int) -> None:
        client = web.Client(port)
        while not self.stop.is_set():
            sent = time.monotonic()
            status, ms = client.predict(*self.request)
            answer = json.loads(client.last_body) if status == 201 else {}
            with self.lock:
                self.answers.append(
                    Answer(
                        sent=sent,
                        status=status,
                        ms=ms,
                        id=answer.get("id"),
                        version=answer.get("model", {}).get("version", ""),
                        confidence=answer.get("confidence"),
                    )
                )
        client.close()

    def settled_on(self, version: str, since: float) -> float | None:
        """The time the answers sent after `since` last came from another version, once every
        answer of the last SETTLED_S seconds came from `version` (None until then)."""
        with self.lock:
            recent = [a for a in self.answers if a.sent >= since]
        if not recent or recent[-1].sent - since < SETTLED_S:
            return None
        others = [a.sent for a in recent if a.version != version]
        last_other = max(others, default=since)
        settled = [a for a in recent if a.sent > last_other]
        if settled and settled[-1].sent - last_other >= SETTLED_S:
            return last_other
        return None


class Admin:
    """A staff user's browser in the admin, on one connection: the other way to publish and roll
    back (a request to a running worker; no new process on the machine)."""

    USER = "bench-admin"

    def __init__(self, port: int, password: str):
        self.connection = http.client.HTTPConnection(web.HOST, port, timeout=120)
        self.cookies: dict[str, str] = {}
        self._post_form("/admin/login/", {"username": self.USER, "password": password})
        if "sessionid" not in self.cookies:
            raise RuntimeError("the admin login failed")

    def publish(self, directory: Path, name: str) -> None:
        self._post_form(
            "/admin/uploads/servedmodel/add/",
            {"name": name, "directory": str(directory), "note": "benchmark", "_save": "Save"},
        )

    def roll_back(self, name: str) -> None:
        changelist = f"/admin/uploads/servedmodel/?name={name}"
        pks = re.findall(r'name="_selected_action" value="(\d+)"', self._get(changelist))
        if not pks:
            raise RuntimeError(f"no published version of {name} in the admin")
        self._post_form(
            changelist, {"action": "roll_back", "_selected_action": pks[0], "index": "0"}
        )

    def _request(self, method: str, path: str, body: str = "") -> tuple[int, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.connection.request(method, path, body=body or None, headers=headers)
        response = self.connection.getresponse()
        text = response.read().decode(errors="replace")
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0]
        return response.status, text

    def _get(self, path: str) -> str:
        status, text = self._request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status}")
        return text

    def _post_form(self, path: str, fields: dict[str, str]) -> None:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', self._get(path))
        body = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": token.group(1)})
        status, text = self._request("POST", path, body)
        if status != 302:  # a form shown again says what was wrong
            errors = re.findall(r'class="errorlist[^"]*"[^>]*>(.*?)</ul>', text, re.S)
            raise RuntimeError(f"POST {path}: {status} {errors[:2]}")


def manage(env: dict[str, str], *arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=web.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(arguments)} failed:\n{result.stderr}")
    return result.stdout


def wait_settled(load: Load, version: str, since: float) -> float:
    """Wait until every answer comes from `version`; return when the last other one was sent."""
    while time.monotonic() - since < SWAP_TIMEOUT_S:
        settled = load.settled_on(version, since)
        if settled is not None:
            return settled
        time.sleep(0.1)
    raise RuntimeError(f"{version} did not serve every request within {SWAP_TIMEOUT_S:.0f} s")


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    port = web.free_port()
    new_dir, old, new = make_new_version(args.model_dir.resolve(), workdir / "published")
    server = web.start_server(args, workdir, port, batching=False)
    env = web.server_env(args, workdir, port, batching=False)
    load = Load(port, args.clients)
    try:
        web.wait_until_ready(port, server, args.workers)
        admin = None
        if args.via == "admin":
            password = secrets.token_urlsafe(16)
            manage(
                {**env, "DJANGO_SUPERUSER_PASSWORD": password},
                *("createsuperuser", "--noinput", "--username", Admin.USER),
                *("--email", "bench@example.com"),
            )
            admin = Admin(port, password)
        marks = {"start": time.monotonic()}
        load.start()
        time.sleep(args.hold)
        marks["publish"] = time.monotonic()
        if admin is not None:
            admin.publish(new_dir, NAME)
        else:
            manage(env, "publish_model", str(new_dir), "--name", NAME, "--note", "benchmark")
        marks["publish_done"] = time.monotonic()
        marks["published"] = wait_settled(load, new, marks["publish"])
        time.sleep(args.hold)
        marks["rollback"] = time.monotonic()
        if admin is not None:
            admin.roll_back(NAME)
        else:
            manage(env, "publish_model", "--rollback", NAME)
        marks["rollback_done"] = time.monotonic()
        marks["rolled_back"] = wait_settled(load, old, marks["rollback"])
        time.sleep(args.hold)
        answers = load.finish()
        marks["end"] = time.monotonic()
        rows = json.loads(manage(env, "shell", "-c", ROWS_REPORT).strip().splitlines()[-1])
    finally:
        load.stop.set()  # on a failure too: the clients' threads end
        web.stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "server": f"nginx -> gunicorn {args.workers} workers x {args.threads} threads, SQLite, "
        f"loopback, {args.clients} clients, published with "
        + ("the admin" if args.via == "admin" else "manage.py publish_model"),
        "old": old,
        "new": new,
        "command_s": {
            "publish": marks["publish_done"] - marks["publish"],
            "rollback": marks["rollback_done"] - marks["rollback"],
        },
        "phases": phases(answers, marks, old, new),
        "checks": check_rows(answers, rows, marks, old, new),
    }


PHASES = (
    ("before", "start", "publish"),
    ("publishing", "publish", "published"),
    ("published", "published", "rollback"),
    ("rolling back", "rollback", "rolled_back"),
    ("rolled back", "rolled_back", "end"),
)


def phases(answers: list[Answer], marks: dict[str, float], old: str, new: str) -> list[dict]:
    """Per phase (by the time each request was sent): requests, errors, latency, versions."""
    table = []
    for name, begin, end in PHASES:
        inside = [a for a in answers if marks[begin] < a.sent <= marks[end]]
        times = [a.ms for a in inside if a.status == 201]
        table.append(
            {
                "phase": name,
                "seconds": marks[end] - marks[begin],
                "requests": len(inside),
                "errors": sum(a.status != 201 for a in inside),
                "p50_ms": web.percentile(times, 50),
                "p99_ms": web.percentile(times, 99),
                "max_ms": max(times, default=float("nan")),
                "old": sum(a.version == old for a in inside),
                "new": sum(a.version == new for a in inside),
            }
        )
    return table


def check_rows(
    answers: list[Answer], rows: dict, marks: dict[str, float], old: str, new: str
) -> dict[str, bool]:
    """What the database says about every answer (each check must be True)."""
    stored = {
        pk: (name, version, confidence) for pk, name, version, confidence in rows["predictions"]
    }
    ok = [a for a in answers if a.status == 201]
    confidences: dict[str, set[float]] = {}
    for _, version, confidence in stored.values():
        confidences.setdefault(version, set()).add(round(confidence, 6))
    served_versions = {version for version, _, _ in rows["served"]}
    return {
        "no errors": len(ok) == len(answers) > 0,
        "every answer has its row, naming the version that answered": all(
            a.id in stored and stored[a.id][:2] == (NAME, a.version) for a in ok
        ),
        "every row's version is the old or the new one, published": set(confidences) <= {old, new}
        and new in served_versions,
        "one answer per version for the image (a whole model, never a mix)": set(confidences)
        == {old, new}
        and all(len(values) == 1 for values in confidences.values())
        and confidences[old] != confidences[new],
        "after the publish every answer is the new version's": all(
            a.version == new for a in ok if marks["published"] < a.sent < marks["rollback"]
        ),
        "after the rollback every answer is the old version's": all(
            a.version == old for a in ok if a.sent > marks["rolled_back"]
        ),
        "the old version is served again": [v for v, _, active in rows["served"] if active]
        == [old],
    }


def print_report(results: dict) -> None:
    print(f"{results['server']}, {os.cpu_count()} CPUs; old {results['old']}, new {results['new']}")
    command = results["command_s"]
    print(
        f"publishing took {command['publish']:.1f} s, rolling back {command['rollback']:.1f} s "
        "to ask for (inside the phases 'publishing' and 'rolling back')"
    )
    print(f"{'phase':<14}{'s':>6}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'max ms':>9}{'old':>7}{'new':>7}")  # fmt: skip
    for row in results["phases"]:
        print(
            f"{row['phase']:<14}{row['seconds']:>6.1f}{row['requests']:>10}{row['errors']:>8}"
            f"{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}{row['max_ms']:>9.1f}"
            f"{row['old']:>7}{row['new']:>7}"
        )
    print()
    for check, passed in results["checks"].items():
        print(f"{'ok ' if passed else 'FAIL'} {check}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=web.ROOT / "models" / NAME)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds before and after swaps")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument(
        "--via",
        choices=["command", "admin"],
        default="command",
        help="publish and roll back with manage.py publish_model, or the admin's form and action",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        parser.error(f"no model at {args.model_dir}; pass --model-dir PATH to an exported model")
    # What web.start_server reads (the admin's pages need the collected static files).
    args.model, args.nginx, args.pages = NAME, True, args.via == "admin"
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results)
    if not all(results["checks"].values()):
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
