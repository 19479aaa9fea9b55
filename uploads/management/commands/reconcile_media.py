"""Find (and with --repair remove) media files without rows, unfinished writes, derived files
without their upload, and rows whose image is gone.

    python manage.py reconcile_media                       # report only
    python manage.py reconcile_media --repair              # delete what is found
    python manage.py reconcile_media --repair --min-age 0  # at start-up, before any worker

deploy/run-local.sh runs it with --repair at start-up and then every hour
(deploy/reconcile-media.timer does the same under systemd). Files and rows younger than
--min-age seconds (default 600) are left alone: they may belong to an upload in flight.
"""

from django.core.management.base import BaseCommand, CommandError

from uploads.reconcile import DEFAULT_MIN_AGE_S, reconcile_media

SHOWN = 10  # names listed per kind; the counts are always whole


class Command(BaseCommand):
    help = "Reconcile media files with upload rows; --repair deletes the leftovers."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--repair", action="store_true", help="Delete what is found.")
        parser.add_argument(
            "--min-age",
            type=float,
            default=DEFAULT_MIN_AGE_S,
            help=f"Leave files and rows younger than this many seconds (default "
            f"{DEFAULT_MIN_AGE_S}); 0 only while no worker serves.",
        )

    def handle(self, *args, repair: bool, min_age: float, **options) -> None:
        if min_age < 0:
            raise CommandError("--min-age must be 0 or more.")
        result = reconcile_media(repair=repair, min_age_s=min_age)
        verb = "removed" if repair else "found"
        for label, items in (
            ("files without rows", result.orphan_files),
            ("unfinished writes", result.temporary_files),
            ("rows without their image (upload ids)", result.rows_without_files),
        ):
            shown = ", ".join(str(item) for item in items[:SHOWN])
            more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            listed = f": {shown}{more}" if items else ""
            self.stdout.write(f"{label}: {len(items)} {verb}{listed}")
        if result.clean:
            self.stdout.write("Media and rows agree.")
        elif not repair:
            self.stdout.write("Run with --repair to delete them.")
