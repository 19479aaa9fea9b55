"""Peak memory of one upload request in a worker process, above the process's idle memory.

Runs the site in this process (the form view through Django's test client: middleware,
multipart parsing, the service, the models; SQLite and media in a temporary folder), warms
the models, then for each case resets the kernel's peak-RSS mark (/proc/self/clear_refs) and
posts one request. Prints the idle RSS, the peak above it, the status and the time per case.
Linux only. The cases are the worst the issue found: ten 6300x6300 PNGs of a few KB each
(refused now) and the worst accepted requests under the default limits.

    python -m benchmarks.serving.upload_memory                       # the shipped models
    python -m benchmarks.serving.upload_memory --cases worst_accepted_png

Target: the worst accepted request peaks <= 300 MB above idle.
"""

import argparse
import io
import os
import re
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]  # the repository
MB = 1024 * 1024


def _solid(size: tuple[int, int], mode: str, image_format: str) -> bytes:
    """A solid-colour image: a few KB on the wire, size[0] x size[1] pixels when decoded."""
    colour = {"RGB": (200, 30, 60), "RGBA": (200, 30, 60, 128), "L": 100}[mode]
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, image_format)
    return buffer.getvalue()


# name -> (count, side, mode, format): the files of one form post.
CASES = {
    "issue_10x6300_png": (10, 6300, "RGB", "PNG"),  # the issue's +1.77 GB request
    "worst_accepted_png": (2, 5000, "RGBA", "PNG"),  # 25 MP each: the per-request budget
    "worst_accepted_10_files": (10, 2236, "RGBA", "PNG"),  # 5 MP each, 50 MP together
    "worst_accepted_jpeg": (2, 5000, "RGB", "JPEG"),  # decoded at 1/4 scale by Image.draft
}


def _rss(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _setup(workdir: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings.dev")
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'db.sqlite3'}"
    os.environ["DJANGO_MEDIA_ROOT"] = str(workdir / "media")
    os.environ.setdefault("DJANGO_API_THROTTLE_RATE", "100000/min")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        _setup(Path(workdir))
        from django.conf import settings
        from django.core.files.uploadedfile import SimpleUploadedFile
        from django.test import Client

        from uploads import classifiers

        started = time.perf_counter()
        classifiers.warm_up_models()
        print(f"models warm in {time.perf_counter() - started:.1f} s", flush=True)
        client = Client(HTTP_HOST="localhost")
        model = classifiers.get_default_model_name()
        small = _solid((32, 32), "RGB", "PNG")
        client.post("/", {"images": SimpleUploadedFile("w.png", small), "model": model})
        print(
            f"limits: {settings.UPLOAD_MAX_PIXELS / 1e6:g} MP per image, "
            f"{getattr(settings, 'UPLOAD_MAX_REQUEST_PIXELS', 0) / 1e6:g} MP per request, "
            f"{getattr(settings, 'UPLOAD_MAX_CONCURRENT_DECODES', '-')} decodes at once"
        )
        print(f"{'case':26} {'files':>5} {'bytes':>9} {'idle MB':>8} {'peak+ MB':>9} status  s")
        worst_accepted = 0.0
        for name in args.cases:
            count, side, mode, image_format = CASES[name]
            data = _solid((side, side), mode, image_format)
            extension = "jpg" if image_format == "JPEG" else "png"
            files = [SimpleUploadedFile(f"{i}.{extension}", data) for i in range(count)]
            idle = _rss("VmRSS")
            _reset_peak()
            started = time.perf_counter()
            response = client.post("/", {"images": files, "model": model})
            elapsed = time.perf_counter() - started
            above = (_rss("VmHWM") - idle) / MB
            if response.status_code == 302:
                worst_accepted = max(worst_accepted, above)
            print(
                f"{name:26} {count:5d} {len(data) * count:9d} {idle / MB:8.0f} {above:9.0f} "
                f"{response.status_code:6d} {elapsed:5.1f}",
                flush=True,
            )
        print(f"worst accepted request: +{worst_accepted:.0f} MB above idle (target <= 300 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
