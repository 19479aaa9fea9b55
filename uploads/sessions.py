"""The session engine (settings.SESSION_ENGINE): Django's database sessions, savable inside the
transaction that creates an upload.

A visitor reaches their uploads through the owner key in their session. Saved by the session
middleware after the view's transaction committed, a failed session save (the database just
went away) told the client "failed" about an upload that was stored and that its owner could
never reach. `classify_uploads(commit_with=commit_session(request))` saves the session in the
upload's own transaction instead: both commit or neither does. The middleware's save at the
end of the request is then skipped, since nothing changed since (see SessionStore.save); it
still sends the cookie.
"""

import copy
from collections.abc import Callable

from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.http import HttpRequest
from django.utils.crypto import get_random_string


class SessionStore(DatabaseSessionStore):
    """Database sessions that skip a second save of unchanged data within one request."""

    _saved_data: dict | None = None

    def _get_new_session_key(self) -> str:
        """A random key, without Django's query for whether it exists: create() inserts it with
        must_create, and a (vanishingly rare) taken key raises CreateError, so it draws another.
        A new visitor's upload costs one query less."""
        return get_random_string(32, VALID_KEY_CHARS)

    def save(self, must_create: bool = False) -> None:
        data = self._get_session()
        if not must_create and self.session_key and self._saved_data == data:
            return  # already saved with this data in this request (with the upload)
        super().save(must_create=must_create)
        self._saved_data = copy.deepcopy(data)


def commit_session(request: HttpRequest) -> Callable[[], None] | None:
    """What saves the request's session (None without one), for classify_uploads(commit_with=)."""
    request = getattr(request, "_request", request)  # DRF's Request wraps Django's
    session = getattr(request, "session", None)
    return session.save if session is not None else None
