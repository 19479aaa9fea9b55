"""Click-to-served time of the teach flow: Train pressed -> the new model answers a request.

Runs the site in this process (Django's test client; SQLite, media and the teach folders in a
temporary directory) with the real task queue's worker beside it (`manage.py db_worker --queue-name
teach`, started and idle before the click, as scripts/serve.sh runs it). A classifier of 3
classes x 20 generated examples (a colour and a shape per class, 64x64) is taught on the shipped
CIFAR-10 network; then, per run, the clock starts at POST /teach/<id>/train/ and stops at the first
classify request answered by the new version (the poll of published versions, the model's load
and compile in the web process included). Printed per run: queue wait (queued -> a worker took
it), training (the worker's child process: Python and JAX start, features, head, calibration,
export), publish -> first answer, and the total.

    python -m benchmarks.serving.teach_flow            # one run
    python -m benchmarks.serving.teach_flow --runs 3

Target (issue 28): <= 60 s for 3 classes x 20 examples on the 2-core CPU. The load average is
printed: a figure taken while other jobs share the CPU is an upper bound.
"""

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
CLASSES = {"red disc": ((210, 50, 40), "disc"), "green bar": ((40, 180, 60), "bar")}
CLASSES["blue ring"] = ((50, 70, 210), "ring")
SIDE = 64
POLL_S = 0.1
TIMEOUT_S = 600


def example_png(name: str, seed: int) -> bytes:
    """One example of a class: its shape in its colour at a random place, on a noisy ground."""
    colour, shape = CLASSES[name]
    rng = np.random.default_rng(seed)
    ground = rng.integers(90, 170, (SIDE, SIDE, 3), dtype=np.uint8)
    image = Image.fromarray(ground)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(4, SIDE // 2, 2))
    size = int(rng.integers(SIDE // 4, SIDE // 2))
    box = (x, y, x + size, y + size)
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "bar":
        draw.rectangle((x, y, x + size, y + size // 3), fill=colour)
    else:
        draw.ellipse(box, outline=colour, width=4)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _environment(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "classifier_site.settings.dev",
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "DJANGO_MEDIA_ROOT": str(workdir / "media"),
            "DJANGO_TEACH_ROOT": str(workdir / "teach"),
            "DJANGO_API_THROTTLE_RATE": "100000/min",
            "DJANGO_LOG_LEVEL": "WARNING",
        }
    )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--examples", type=int, default=20, help="per class")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        env = _environment(Path(workdir))
        os.environ.update(env)
        import django
        from django.core.files.uploadedfile import SimpleUploadedFile
        from django.core.management import call_command
        from django.test import Client

        django.setup()
        call_command("migrate", verbosity=0)
        from teaching.models import TaughtClassifier, TrainingJob

        with open(Path(workdir) / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "manage.py", "db_worker", "--queue-name", "teach"]
                + ["--interval", "0.2", "--no-startup-delay", "--no-reload"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            client = Client(HTTP_HOST="localhost")
            response = client.post(
                "/teach/",
                {"name": "bench", "class_names": "\n".join(CLASSES), "backbone": "cifar10"},
            )
            assert response.status_code == 302, response.status_code
            classifier = TaughtClassifier.objects.get()
            for taught_class in classifier.classes.all():
                files = [
                    SimpleUploadedFile(f"{i}.png", example_png(taught_class.name, i), "image/png")
                    for i in range(args.examples)
                ]
                url = f"/teach/{classifier.pk}/classes/{taught_class.pk}/examples/"
                assert client.post(url, {"images": files}).status_code == 302
            time.sleep(3)  # the worker is up and polling before the first click
            print(
                f"{len(CLASSES)} classes x {args.examples} examples; load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
                flush=True,
            )
            print(f"{'run':>3} {'queue s':>8} {'train s':>8} {'serve s':>8} {'total s':>8} acc")
            for run in range(args.runs):
                _one_run(client, classifier, TrainingJob, run)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    return 0


def _one_run(client, classifier, job_model, run: int) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    started = time.perf_counter()
    assert client.post(f"/teach/{classifier.pk}/train/").status_code == 302
    job = job_model.objects.latest("pk")
    deadline = time.monotonic() + TIMEOUT_S
    while job.active:
        assert time.monotonic() < deadline, "the training did not finish"
        time.sleep(POLL_S)
        job.refresh_from_db()
    assert job.status == "succeeded" and job.published, job.error
    trained = time.perf_counter()
    name = next(iter(CLASSES))
    while True:  # the first answer by the new version (the poll of published versions, load)
        image = SimpleUploadedFile("q.png", example_png(name, 1000 + run), "image/png")
        response = client.post(f"/teach/{classifier.pk}/classify/", {"images": [image]})
        from uploads.models import Prediction

        latest = Prediction.objects.order_by("-pk").first()
        if response.status_code == 302 and latest.model_version == job.version:
            break
        assert time.monotonic() < deadline, "the new version never answered"
        time.sleep(POLL_S)
    total = time.perf_counter() - started
    queue = (job.started_at - job.created_at).total_seconds()
    train = (job.finished_at - job.started_at).total_seconds()
    serve = time.perf_counter() - trained
    print(
        f"{run:3d} {queue:8.1f} {train:8.1f} {serve:8.1f} {total:8.1f} {job.accuracy:.0%}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
