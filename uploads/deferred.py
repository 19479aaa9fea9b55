"""Work a request's answer does not need, run once the answer has been sent.

Inside a request, `after_response(fn)` queues `fn`; the queue runs when the WSGI server closes
the response (Django's request_finished signal, which gunicorn sends after the last byte, and
Django's test client before it returns), on the same thread, in order. Outside a request (a
management command, a test calling a service) `fn` runs at once. A failing task is logged and
the next one still runs: the answer has gone, there is no one to tell.

Used for derived images (the thumbnail and the model-input PNG): they cost milliseconds that the
client would otherwise wait for, and a page that needs one before it exists falls back (to the
stored image, or to making the model input again from it).
"""

import logging
import threading
from collections.abc import Callable

from django.core.signals import request_finished, request_started

logger = logging.getLogger(__name__)

_local = threading.local()


def after_response(task: Callable[[], None]) -> None:
    """Run `task` after this thread's response is sent, or now outside a request."""
    queue = getattr(_local, "queue", None)
    if queue is None:
        _run(task)
    else:
        queue.append(task)


def _open(**kwargs) -> None:
    # Kept if already open: under ASGI, requests interleave on one thread, and a second
    # request starting must not drop the first one's tasks (whichever finishes runs them).
    if getattr(_local, "queue", None) is None:
        _local.queue = []


def _drain(**kwargs) -> None:
    queue, _local.queue = getattr(_local, "queue", None), None
    for task in queue or ():
        _run(task)


def _run(task: Callable[[], None]) -> None:
    try:
        task()
    except Exception:  # the answer is sent; logged for the operator
        logger.exception("Deferred task %s failed", getattr(task, "__name__", task))


request_started.connect(_open, dispatch_uid="uploads.deferred.open")
request_finished.connect(_drain, dispatch_uid="uploads.deferred.drain")
