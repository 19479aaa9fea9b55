"""Privacy and abuse: private uploads, share links, the stateless classify endpoint, rate
limits, trusted proxies, retention, media usage and the admin's columns."""

import html
import io
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from classifier_site.middleware import ClientRateThrottle
from uploads import services
from uploads.models import Prediction, RateCount, Upload

from .conftest import own

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stranger() -> Client:
    """Another visitor, with a session of their own."""
    other = Client()
    own(other)
    return other


@pytest.fixture
def rate(monkeypatch):
    """Set the per-client rate for one test: rate('1/min')."""

    def set_rate(value: str, live: str | None = None) -> None:
        rates = {"anon": value, "live": live or value}  # live: POST /api/classify's own
        monkeypatch.setattr(ClientRateThrottle, "THROTTLE_RATES", rates)

    cache.clear()
    yield set_rate
    cache.clear()


def upload_through_the_form(client: Client, upload_file, **extra) -> Prediction:
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "cifar10"}, **extra
    )
    assert response.status_code == 302, response.content
    return Prediction.objects.latest("id")


# ----------------------------------------------------------------------------- private uploads


def test_an_upload_records_its_session_owner_and_sets_the_cookie(client, upload_file):
    """The first upload of a visitor without a session gives it one and owns the upload."""
    prediction = upload_through_the_form(client, upload_file)
    assert "sessionid" in client.cookies
    assert prediction.upload.owner_key and prediction.upload.user is None
    assert prediction.upload.owner_key == client.session["uploads_owner"]


def test_home_history_and_api_list_only_the_visitors_own(client, stranger, upload_file):
    """Another visitor's uploads appear on neither the home page, /history/ nor the API."""
    mine = upload_through_the_form(client, upload_file)
    upload_through_the_form(stranger, upload_file)
    assert list(client.get(reverse("uploads:classify")).context["recent"]) == [mine]
    assert list(client.get(reverse("uploads:history")).context["predictions"]) == [mine]
    body = client.get(reverse("uploads:api-predictions")).json()
    assert [p["id"] for p in body["results"]] == [mine.pk]
    assert Client().get(reverse("uploads:api-predictions")).json()["count"] == 0


def test_someone_elses_prediction_is_a_404_on_every_page_and_endpoint(
    client, stranger, upload_file
):
    """Ids never grant access: the detail page, results, feedback and every API endpoint
    answer 404 (not 403) to anyone but the owner."""
    prediction = upload_through_the_form(client, upload_file)
    pk = prediction.pk
    gets = [
        reverse("uploads:detail", args=[pk]),
        f"{reverse('uploads:results')}?ids={pk}",
        reverse("uploads:api-prediction", args=[pk]),
        reverse("uploads:api-saliency", args=[pk]),
        reverse("uploads:api-model-input", args=[pk]),
    ]
    for url in gets:
        assert stranger.get(url).status_code == 404, url
        assert client.get(url).status_code == 200, url
    form = stranger.post(reverse("uploads:feedback", args=[pk]), {"verdict": "right"})
    api = stranger.post(
        reverse("uploads:api-feedback", args=[pk]), {"correct": True}, "application/json"
    )
    assert (form.status_code, api.status_code) == (404, 404)
    assert prediction.feedback.count() == 0


def test_an_api_client_keeping_the_cookie_sees_its_history(upload_file):
    """POST /api/predict sets the session cookie; the same client lists and reads its own."""
    api = Client(enforce_csrf_checks=True)
    body = api.post(reverse("uploads:api-predict"), {"image": upload_file()}).json()
    assert api.get(reverse("uploads:api-predictions")).json()["results"][0]["id"] == body["id"]
    assert api.get(reverse("uploads:api-prediction", args=[body["id"]])).status_code == 200
    cookieless = Client()
    assert cookieless.get(reverse("uploads:api-prediction", args=[body["id"]])).status_code == 404


def test_predict_answers_an_absolute_share_url_without_the_id(client, upload_file):
    """The API's share_url is the /s/<token>/ page, absolute, naming the token, not the id."""
    body = client.post(reverse("uploads:api-predict"), {"image": upload_file()}).json()
    token = Prediction.objects.get(pk=body["id"]).share_token
    assert body["share_url"] == f"http://testserver/s/{token}/"


def test_a_signed_in_user_sees_their_uploads_on_another_device(
    client, django_user_model, upload_file
):
    """Uploads of a signed-in user follow the user to any session they sign in from."""
    user = django_user_model.objects.create_user("ada", password="x-long-password")
    client.force_login(user)
    prediction = upload_through_the_form(client, upload_file)
    assert prediction.upload.user == user
    phone = Client()
    phone.force_login(user)
    assert phone.get(prediction.get_absolute_url()).status_code == 200
    assert list(phone.get(reverse("uploads:history")).context["predictions"]) == [prediction]


def test_rows_without_an_owner_are_reachable_by_staff_only(client, admin_client, upload_file):
    """An upload from before ownership has no owner: 404 on the site, listed in the admin."""
    prediction = services.classify_upload(file=upload_file(name="old.png"))
    assert client.get(prediction.get_absolute_url()).status_code == 404
    assert client.get(reverse("uploads:history")).context["paginator"].count == 0
    page = admin_client.get(reverse("admin:uploads_upload_changelist")).content.decode()
    assert "old.png" in page and "staff only" in page


# ----------------------------------------------------------------------------- share links


def test_share_tokens_are_long_random_and_unique(upload_file, owner):
    """Each prediction gets its own URL-safe token of at least 128 bits."""
    tokens = [services.classify_upload(file=upload_file(), owner=owner).share_token for _ in "ab"]
    assert len(set(tokens)) == 2
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", token) and len(token) * 6 >= 128


def test_a_share_link_shows_the_result_read_only_to_anyone(client, upload_file):
    """/s/<token>/ shows the image and the answer to a visitor without the session: no
    feedback form, no owner's link; the image it shows is served."""
    prediction = upload_through_the_form(client, upload_file)
    anyone = Client(enforce_csrf_checks=True)
    response = anyone.get(prediction.get_share_url())
    page = response.content.decode()
    assert response.status_code == 200
    assert prediction.label in page and "data-result-label" in page
    assert prediction.get_shared_image_url() in page
    assert "data-feedback-form" not in page and "csrfmiddlewaretoken" not in page
    assert "data-owner-link" not in page
    assert response["Referrer-Policy"] == "no-referrer"
    assert anyone.get(prediction.get_shared_image_url()).status_code == 200
    assert "data-owner-link" in client.get(prediction.get_share_url()).content.decode()


def test_an_uploads_files_are_served_only_to_its_owner_and_never_publicly_cached(
    client, upload_file
):
    """Without the session cookie (or with another's, or a wrong share token) the image and
    the thumbnail are 404s like a missing file; the owner's copy is private to the browser."""
    prediction = upload_through_the_form(client, upload_file)
    upload = prediction.upload
    for url in (upload.get_image_url(), upload.get_thumbnail_url()):
        response = client.get(url)
        assert response.status_code == 200
        assert response["Cache-Control"] == "private, max-age=3600"
        assert "Cookie" in response["Vary"]
        assert Client().get(url).status_code == 404
        assert Client().get(url, {"share": "not-the-token"}).status_code == 404
    shared = Client().get(prediction.get_shared_image_url())
    assert shared.status_code == 200 and "public" not in shared["Cache-Control"]


def test_staff_see_every_uploads_file(client, admin_client, upload_file):
    """Staff reach every image (the admin shows them), as they reach every row."""
    prediction = upload_through_the_form(client, upload_file)
    assert admin_client.get(prediction.upload.get_image_url()).status_code == 200


def test_the_share_page_has_open_graph_and_twitter_tags(client, upload_file):
    """og:title is the answer in words (a weak one is not stated as a class), og:image the
    stored image's absolute URL with the share token that grants it."""
    prediction = upload_through_the_form(client, upload_file)
    page = Client().get(prediction.get_share_url()).content.decode()
    meta = {
        match[0]: html.unescape(match[1])
        for match in re.findall(r'<meta (?:property|name)="([^"]+)" content="([^"]*)"', page)
    }
    assert meta["og:title"].startswith(prediction.answer.headline)
    assert meta["og:image"] == f"http://testserver{prediction.get_shared_image_url()}"
    assert meta["og:url"] == f"http://testserver{prediction.get_share_url()}"
    assert prediction.label in meta["og:description"]
    assert meta["twitter:card"] == "summary_large_image"
    assert meta["twitter:image"] == meta["og:image"]


@pytest.mark.parametrize("token", ["nope", "1", "A" * 32])
def test_an_unknown_share_token_is_a_404(client, token):
    """Only a real token opens a shared page."""
    assert client.get(reverse("uploads:share", args=[token])).status_code == 404


def test_the_owner_sees_the_share_link_in_a_read_only_input(client, stranger, upload_file):
    """The detail page shows the absolute share link in a read-only input (works without JS)
    and a copy button for scripts to reveal."""
    prediction = upload_through_the_form(client, upload_file)
    page = client.get(prediction.get_absolute_url()).content.decode()
    field = re.search(r"<input[^>]*data-share-link[^>]*>", page).group(0)
    assert f'value="http://testserver{prediction.get_share_url()}"' in field
    assert "readonly" in field
    assert "Copy share link" in page


def test_the_migration_gives_existing_predictions_unique_tokens(transactional_db):
    """Migrating a database from before share tokens fills one per existing prediction."""
    before = [("uploads", "0002_trust_fields_and_feedback")]
    after = [("uploads", "0003_private_uploads_and_share_tokens")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    upload = old.get_model("uploads", "Upload").objects.create(
        image="images/x.png", sha256="0" * 64, original_name="x.png", size_bytes=1,
        width=1, height=1, format="PNG",
    )  # fmt: skip
    for _ in range(3):
        old.get_model("uploads", "Prediction").objects.create(
            upload_id=upload.pk, model_name="cifar10", model_dataset="cifar10",
            model_version="v", label="cat", confidence=1.0, top_k=[], probabilities={},
            inference_ms=1.0, latency_ms=1.0,
        )  # fmt: skip
    executor = MigrationExecutor(connection)
    executor.migrate(after)
    try:
        tokens = list(Prediction.objects.values_list("share_token", flat=True))
        assert len(tokens) == len(set(tokens)) == 3 and all(len(t) >= 22 for t in tokens)
        assert Upload.objects.get().owner_key == ""  # staff only
    finally:  # back to the latest schema: later tests in this process share the database
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


# ----------------------------------------------------------------------------- /api/classify


def test_classify_answers_like_predict_and_stores_nothing(client, upload_file, media_files):
    """POST /api/classify returns predict's answer fields for the same image, and writes no row
    and no file."""
    data = upload_file().read()
    response = client.post(
        reverse("uploads:api-classify"),
        {"image": upload_file(data), "model": "fashion_mnist", "top_k": "3"},
    )
    assert response.status_code == 200, response.content
    assert (Upload.objects.count(), Prediction.objects.count(), media_files()) == (0, 0, [])
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert "id" not in body and "share_url" not in body and "image" not in body
    stored = client.post(
        reverse("uploads:api-predict"),
        {"image": upload_file(data), "model": "fashion_mnist", "top_k": "3"},
    ).json()
    for field in ("label", "model", "unknown"):
        assert body[field] == stored[field]
    assert [i["label"] for i in body["top_k"]] == [i["label"] for i in stored["top_k"]]
    assert body["confidence"] == pytest.approx(stored["confidence"])


def test_classify_refuses_bad_input_with_4xx_and_stores_nothing(client, media_files):
    """No image, or not an image: a 4xx JSON error and nothing stored."""
    url = reverse("uploads:api-classify")
    assert client.post(url, {}).json()["code"] == "no_file"
    from django.core.files.uploadedfile import SimpleUploadedFile

    text = SimpleUploadedFile("x.png", b"not an image", content_type="image/png")
    response = client.post(url, {"image": text})
    assert 400 <= response.status_code < 500
    assert (Upload.objects.count(), media_files()) == (0, [])


def test_classify_is_throttled_at_its_own_live_rate(client, upload_file, rate):
    """/api/classify (a camera's frames) counts against its own per-client rate, not the
    uploads' one; past it, 429 with Retry-After."""
    rate("1/min", live="2/min")
    url = reverse("uploads:api-classify")
    assert client.post(reverse("uploads:api-predict"), {"image": upload_file()}).status_code == 201
    for _ in range(2):
        assert client.post(url, {"image": upload_file()}).status_code == 200
    refused = client.post(url, {"image": upload_file()})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0


# ----------------------------------------------------------------------------- rate limits


def test_the_form_is_throttled_per_client_with_a_429_page(client, upload_file, rate):
    """Past the rate the form answers a 429 page with Retry-After, stores nothing; another
    client address still gets through."""
    rate("1/min")
    upload_through_the_form(client, upload_file)
    refused = client.post(reverse("uploads:classify"), {"images": upload_file()})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert "Too many requests" in refused.content.decode()
    assert "<html" in refused.content.decode()
    assert Prediction.objects.count() == 1
    upload_through_the_form(client, upload_file, REMOTE_ADDR="10.0.0.2")
    assert client.get(reverse("uploads:classify")).status_code == 200  # reading is not limited


def test_feedback_form_counts_against_the_same_rate(client, upload_file, rate):
    """The form's feedback is throttled with the uploads (one budget per client)."""
    prediction = upload_through_the_form(client, upload_file)
    RateCount.objects.all().delete()  # forget the upload: the budget below is the feedback's
    rate("1/min")
    url = reverse("uploads:feedback", args=[prediction.pk])
    assert client.post(url, {"verdict": "right"}).status_code == 302
    assert client.post(url, {"verdict": "right"}).status_code == 429


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(client, rate, settings):
    """Without a trusted proxy, a client cannot pick its throttling address."""
    settings.TRUSTED_PROXIES = []
    rate("1/min")
    url = reverse("uploads:api-models")
    assert client.get(url, HTTP_X_FORWARDED_FOR="1.1.1.1").status_code == 200
    assert client.get(url, HTTP_X_FORWARDED_FOR="2.2.2.2").status_code == 429


def test_a_trusted_proxy_forwards_each_clients_address(client, rate, settings):
    """From a configured proxy, the right-most untrusted X-Forwarded-For address is the client
    (what a client puts in front of it is ignored)."""
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    rate("1/min")
    url = reverse("uploads:api-models")
    assert client.get(url, HTTP_X_FORWARDED_FOR="1.1.1.1").status_code == 200
    assert client.get(url, HTTP_X_FORWARDED_FOR="2.2.2.2").status_code == 200
    spoofed = client.get(url, HTTP_X_FORWARDED_FOR="9.9.9.9, 1.1.1.1")
    assert spoofed.status_code == 429
    other_peer = client.get(url, REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_FOR="3.3.3.3")
    assert other_peer.status_code == 200
    assert client.get(url, REMOTE_ADDR="10.1.1.1").status_code == 429  # it was 10.1.1.1


def test_x_forwarded_proto_counts_only_from_the_trusted_proxy(client, upload_file, settings):
    """https from the proxy makes absolute URLs https; the same header from another peer is
    dropped."""
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    prediction = upload_through_the_form(client, upload_file)
    url = prediction.get_share_url()
    via_proxy = client.get(url, HTTP_HOST="testserver", HTTP_X_FORWARDED_PROTO="https")
    via_proxy = via_proxy.content.decode()
    assert 'content="https://testserver/s/' in via_proxy
    direct = client.get(
        url, HTTP_HOST="testserver", REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_PROTO="https"
    )
    assert 'content="http://testserver/s/' in direct.content.decode()


@pytest.mark.parametrize(("proxies", "header"), [("", "None"), ("127.0.0.1", "HTTPS")])
def test_production_trusts_x_forwarded_proto_only_with_a_configured_proxy(proxies, header):
    """SECURE_PROXY_SSL_HEADER is set only when DJANGO_TRUSTED_PROXIES is."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "classifier_site.settings.production",
        "DJANGO_SECRET_KEY": "x" * 50,
        "DJANGO_TRUSTED_PROXIES": proxies,
    }
    code = "from django.conf import settings; print(getattr(settings, 'SECURE_PROXY_SSL_HEADER', None))"  # noqa: E501
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert (header == "None") == (out.strip() == "None")
    assert header != "HTTPS" or "HTTP_X_FORWARDED_PROTO" in out


# ----------------------------------------------------------------------------- retention


def make_history(upload_file, owner, ages_in_days: list[int]) -> list[Prediction]:
    predictions = []
    for age in ages_in_days:
        prediction = services.classify_upload(file=upload_file(), owner=owner)
        services.get_saliency_png(prediction=prediction)  # a derived file too
        Upload.objects.filter(pk=prediction.upload_id).update(
            created_at=timezone.now() - timedelta(days=age)
        )
        predictions.append(prediction)
    return predictions


def stored_files(upload: Upload, settings) -> set[Path]:
    root = Path(settings.MEDIA_ROOT)
    stem = Path(upload.image.name).with_suffix("").relative_to("images")
    return {
        root / upload.image.name,
        root / upload.thumbnail.name,
        root / "model_inputs" / f"{stem}.png",
        *(root / "saliency" / stem).glob("*.png"),
    } - {root}


def test_purge_deletes_old_uploads_rows_and_files_leaving_no_orphans(
    upload_file, owner, media_files, settings, django_capture_on_commit_callbacks
):
    """purge_uploads --days 30 deletes the older upload's rows and every file made for it."""
    old, new = make_history(upload_file, owner, [40, 1])
    with django_capture_on_commit_callbacks(execute=True):
        call_command("purge_uploads", "--days", "30", stdout=io.StringIO())
    assert list(Upload.objects.all()) == [new.upload]
    assert not Prediction.objects.filter(pk=old.pk).exists()
    assert set(media_files()) == stored_files(new.upload, settings)


def test_purge_dry_run_deletes_nothing_and_the_setting_is_the_default(
    upload_file, owner, media_files, settings, capsys, django_capture_on_commit_callbacks
):
    """--dry-run only counts; without --days the retention setting applies; without either,
    nothing is deleted."""
    make_history(upload_file, owner, [40, 1])
    files = media_files()
    call_command("purge_uploads", "--days", "30", "--dry-run")
    assert "Would delete 1 upload " in capsys.readouterr().out
    settings.UPLOAD_RETENTION_DAYS = None
    call_command("purge_uploads")
    assert "kept forever" in capsys.readouterr().out
    assert (Upload.objects.count(), media_files()) == (2, files)
    settings.UPLOAD_RETENTION_DAYS = 30
    with django_capture_on_commit_callbacks(execute=True):
        call_command("purge_uploads")
    assert "Deleted 1 upload " in capsys.readouterr().out
    assert Upload.objects.count() == 1


# ----------------------------------------------------------------------------- admin


def test_the_uploads_list_shows_media_disk_usage_by_kind(
    admin_client, upload_file, image_bytes, media_files
):
    """Staff see the files and bytes under MEDIA_ROOT, per kind, above the Uploads list."""
    services.classify_upload(file=upload_file(image_bytes(size=(400, 300))))
    cache.clear()
    page = admin_client.get(reverse("admin:uploads_upload_changelist")).content.decode()
    usage = re.search(r"<p class=\"help\" data-media-usage>(.*?)</p>", page, re.S).group(1)
    total = sum(path.stat().st_size for path in media_files())
    assert f"{len(media_files())} files" in usage
    assert "images: 1 /" in usage and "thumbnails: 1 /" in usage and "model_inputs: 1 /" in usage
    assert services.measure_media_usage(fresh=True).bytes == total


def test_the_uploads_list_shows_thumbnails_not_paths(admin_client, upload_file, image_bytes):
    """The image column is an <img> of the thumbnail, not the field's raw path."""
    upload = services.classify_upload(file=upload_file(image_bytes(size=(400, 300)))).upload
    assert upload.thumbnail.name
    page = admin_client.get(reverse("admin:uploads_upload_changelist")).content.decode()
    assert f'<img src="{upload.get_thumbnail_url()}"' in page
    assert f">{upload.thumbnail.name}<" not in page


def test_admin_formats_latencies_in_milliseconds(admin_client, upload_file):
    """Latency and classifier time read '24.8 ms', never a float's 16 digits."""
    prediction = services.classify_upload(file=upload_file())
    Prediction.objects.filter(pk=prediction.pk).update(
        latency_ms=24.84376479999355, inference_ms=3.14159265
    )
    pages = [
        admin_client.get(reverse("admin:uploads_prediction_change", args=[prediction.pk])),
        admin_client.get(reverse("admin:uploads_upload_change", args=[prediction.upload_id])),
        admin_client.get(reverse("admin:uploads_prediction_changelist")),
    ]
    for response in pages:
        text = response.content.decode()
        assert "24.8 ms" in text and "24.84376" not in text
    assert "3.1 ms" in pages[0].content.decode()
