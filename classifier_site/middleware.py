"""Site-wide middleware: forwarded headers trusted only from the configured proxy (and the
per-client throttle that relies on it, for the API and the form), a strict
Content-Security-Policy for the site's own pages (and one for the admin's), and the upload
limits that hold before a view runs."""

import functools
import ipaddress
import logging
import math
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.throttling import AnonRateThrottle

from uploads import throttling
from uploads.images import request_pixel_budget

logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' blob: data:",
        "style-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

# The admin's pages: Django's admin has no inline script, so scripts stay 'self'; its change
# pages carry thumbnails with inline style attributes (uploads.admin), hence styles inline.
ADMIN_CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data:",
        "style-src 'self' 'unsafe-inline'",
        "script-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


# Headers a proxy sets about the client; from anyone else they are the client's own claims.
FORWARDED_HEADERS = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_REAL_IP",
    "HTTP_FORWARDED",
)


class TrustedProxyMiddleware:
    """Believe X-Forwarded-* only from settings.TRUSTED_PROXIES (addresses or networks).

    From a trusted proxy, REMOTE_ADDR becomes the client it forwarded for (the right-most
    X-Forwarded-For address that is not itself a trusted proxy), so throttling and logs see the
    client; X-Forwarded-Proto is kept for SECURE_PROXY_SSL_HEADER. From any other peer every
    forwarded header is removed, so a client can neither pick its throttling address nor claim
    HTTPS. Runs first, before anything reads the client address or the scheme.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    @property
    def proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return _parse_networks(tuple(settings.TRUSTED_PROXIES))

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        if self._is_proxy(meta.get("REMOTE_ADDR", "")):
            client = self._forwarded_client(meta.get("HTTP_X_FORWARDED_FOR", ""))
            if client:
                meta["REMOTE_ADDR"] = client
        else:
            for header in FORWARDED_HEADERS:
                meta.pop(header, None)
        return self.get_response(request)

    def _is_proxy(self, address: str) -> bool:
        ip = _parse_ip(address)
        return ip is not None and any(ip in network for network in self.proxies)

    def _forwarded_client(self, header: str) -> str:
        for item in reversed([part.strip() for part in header.split(",") if part.strip()]):
            if _parse_ip(item) is None:
                return ""  # garbage where an address should be: keep the proxy's own
            if not self._is_proxy(item):
                return item
        return ""


@functools.cache
def _parse_networks(items: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class ClientRateThrottle(AnonRateThrottle):
    """The 'anon' rate per client address, for everyone (signed in or not), on the API and the
    HTML form alike. The address is REMOTE_ADDR: classifier_site.middleware has already put the
    client forwarded by a trusted proxy there and dropped X-Forwarded-For from anyone else.

    Counted in the database (uploads.throttling), so the rate holds across every worker; while
    the database is unavailable, each process counts on its own (DRF's cache-based log).
    """

    _decision: "throttling.Decision | None" = None

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self._decision = None
        key = self.get_cache_key(request, view)
        try:
            self._decision = throttling.admit(
                key, limit=self.num_requests, duration=self.duration, now=self.timer()
            )
        except DatabaseError as err:
            logger.warning("Throttling per process while the database is unavailable: %s", err)
            return super().allow_request(request, view)
        return self._decision.allowed

    def wait(self) -> float | None:
        if self._decision is None:
            return super().wait()
        return self._decision.wait_s

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def get_ident(self, request) -> str:
        return request.META.get("REMOTE_ADDR", "") or "unknown"


class LiveRateThrottle(ClientRateThrottle):
    """A rate of its own for POST /api/classify, which stores nothing and which a live camera
    calls several times a second (DJANGO_LIVE_THROTTLE_RATE, default 900/min: 15 frames/s)."""

    scope = "live"

    @classmethod
    def min_interval_ms(cls) -> int:
        """The shortest gap between two frames that keeps a camera within the rate (0 when
        unlimited): the page paces itself by it rather than running into 429s."""
        throttle = cls()
        if throttle.rate is None:
            return 0
        return math.ceil(1000 * throttle.duration / throttle.num_requests)


def throttle_wait(request) -> int | None:
    """Count one request of this client against the rate (for views outside DRF); None when
    allowed, else the whole seconds to wait before the next one."""
    throttle = ClientRateThrottle()
    if throttle.allow_request(request, None):
        return None
    return max(1, math.ceil(throttle.wait() or 1))


class ContentSecurityPolicyMiddleware:
    """Add a Content-Security-Policy header (the admin's under /admin/) to responses that do
    not set their own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = (
            ADMIN_CONTENT_SECURITY_POLICY
            if request.path.startswith("/admin/")
            else CONTENT_SECURITY_POLICY
        )
        response.headers.setdefault("Content-Security-Policy", policy)
        return response


class UploadLimitsMiddleware:
    """Refuse a body over the upload limits before reading it, and give each request one
    pixel budget (settings.UPLOAD_MAX_REQUEST_PIXELS) for all the images it carries.

    The largest body any page accepts is UPLOAD_MAX_FILES files of UPLOAD_MAX_BYTES, plus
    1 MB for the other fields and the multipart framing; a larger Content-Length gets 413
    without a byte of it being read (so it never reaches a temporary file).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.UPLOAD_MAX_FILES * settings.UPLOAD_MAX_BYTES + _FRAMING_BYTES
        if _content_length(request) > limit:
            return _too_large(request)
        with request_pixel_budget(settings.UPLOAD_MAX_REQUEST_PIXELS):
            return self.get_response(request)


_FRAMING_BYTES = 1024 * 1024


def _content_length(request: HttpRequest) -> int:
    try:
        return max(0, int(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0  # Django's parser refuses a malformed length itself


def _too_large(request: HttpRequest) -> HttpResponse:
    message = (
        f"The request is too large: at most {settings.UPLOAD_MAX_FILES} images of "
        f"{settings.UPLOAD_MAX_BYTES / 2**20:g} MB each are accepted at once."
    )
    if request.path.startswith("/api/"):
        return JsonResponse({"error": message, "code": "file_too_large"}, status=413)
    return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
