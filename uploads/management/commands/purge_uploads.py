"""Delete uploads (rows and files) older than the retention period.

    python manage.py purge_uploads              # DJANGO_UPLOAD_RETENTION_DAYS
    python manage.py purge_uploads --days 30    # any other period
    python manage.py purge_uploads --dry-run    # count only

Run it daily from cron or a systemd timer; without --days and without the setting (keep
forever) it deletes nothing and says so.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from uploads import services


class Command(BaseCommand):
    help = "Delete uploads, their predictions and every file made for them, older than N days."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Delete uploads older than this many days (default: "
            "DJANGO_UPLOAD_RETENTION_DAYS; unset keeps everything).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args, days: int | None, dry_run: bool, **options) -> None:
        if days is None:
            days = settings.UPLOAD_RETENTION_DAYS
        if days is None:
            self.stdout.write(
                "No retention period is set (DJANGO_UPLOAD_RETENTION_DAYS): uploads are kept "
                "forever. Pass --days N to delete older ones."
            )
            return
        if days < 0:
            raise CommandError("--days must be 0 or more.")
        result = services.purge_uploads(older_than_days=days, dry_run=dry_run)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(
            f"{verb} {result.uploads} upload{'s' if result.uploads != 1 else ''} created "
            f"before {result.cutoff:%Y-%m-%d %H:%M} UTC ({days} days ago), with their files."
        )
