"""`manage.py recover_teach_jobs`: mark failed the trainings whose worker is gone (run before a
worker starts: scripts/serve.sh, deploy/run-local.sh, deploy/teach-worker.service)."""

from django.core.management.base import BaseCommand

from teaching import training


class Command(BaseCommand):
    help = "Mark failed the training jobs whose worker died, and remove their scratch folders."

    def handle(self, *args, **options):
        count = training.recover_stale_jobs()
        self.stdout.write(f"{count} stale training job(s) marked failed")
