"""Site-wide middleware: a strict Content-Security-Policy for the site's own pages (the admin
brings its own), and the upload limits that hold before a view runs."""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from uploads.images import request_pixel_budget

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


class ContentSecurityPolicyMiddleware:
    """Add a Content-Security-Policy header to responses that do not set their own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith("/admin/"):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
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
