"""The task queue's tasks: `manage.py db_worker --queue-name teach` runs them, one at a time
per worker, oldest first."""

from django_tasks import task

from teaching import training

QUEUE = "teach"


@task(queue_name=QUEUE)
def train_classifier(job_id: int) -> str:
    """Train, and publish, the classifier of one queued job (teaching.training.run_job)."""
    return training.run_job(job_id)
