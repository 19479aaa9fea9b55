"""The admin: staff browse, filter, search and export; everyone else is refused."""

import csv
import io

import pytest
from django.urls import reverse

from uploads import services
from uploads.models import Prediction, Upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(upload_file) -> list[Prediction]:
    """Three predictions from both models, one with a formula-like name."""
    return [
        services.classify_upload(file=upload_file(name="one.png"), model_name="cifar10"),
        services.classify_upload(file=upload_file(name="=cmd|calc.png"), model_name="cifar10"),
        services.classify_upload(file=upload_file(name="three.png"), model_name="fashion_mnist"),
    ]


def test_staff_browse_predictions_with_thumbnails(admin_client, history):
    """The prediction list shows thumbnail, label, confidence, model and time."""
    page = admin_client.get(reverse("admin:uploads_prediction_changelist")).content.decode()
    for prediction in history:
        assert prediction.upload.get_thumbnail_url() in page
        assert prediction.label in page
    assert "fashion_mnist" in page and "%" in page


def test_prediction_filters_and_search(admin_client, history):
    """Filtering by model and searching by file name narrow the list."""
    url = reverse("admin:uploads_prediction_changelist")
    by_model = admin_client.get(url, {"model_name": "fashion_mnist"})
    assert by_model.context["cl"].result_count == 1
    searched = admin_client.get(url, {"q": "three"})
    assert list(searched.context["cl"].result_list) == [history[2]]
    by_label = admin_client.get(url, {"label": history[0].label})
    assert all(p.label == history[0].label for p in by_label.context["cl"].result_list)


def test_upload_detail_is_read_only_with_its_predictions_inline(admin_client, history):
    """An upload's page shows computed fields read-only and its predictions inline."""
    upload = history[0].upload
    response = admin_client.get(reverse("admin:uploads_upload_change", args=[upload.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert upload.sha256 in page and history[0].label in page
    assert 'name="sha256"' not in page  # shown, not editable
    assert "predictions-TOTAL_FORMS" in page
    assert "View on site" not in page  # the inline's link read "View View on site"


def test_uploads_cannot_be_added_by_hand(admin_client):
    """Uploads come only through the upload service."""
    response = admin_client.get(reverse("admin:uploads_upload_add"))
    assert response.status_code == 403


def test_csv_export_of_selected_predictions(admin_client, history):
    """The export action returns a CSV of the selected predictions, formulas neutralised."""
    response = admin_client.post(
        reverse("admin:uploads_prediction_changelist"),
        {"action": "export_csv", "_selected_action": [p.pk for p in history[:2]]},
    )
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [int(row["prediction_id"]) for row in rows] == [history[0].pk, history[1].pk]
    assert rows[0]["label"] == history[0].label
    assert rows[1]["original_name"] == "'=cmd|calc.png"


def test_csv_export_from_uploads(admin_client, history):
    """Exporting uploads exports their predictions."""
    response = admin_client.post(
        reverse("admin:uploads_upload_changelist"),
        {"action": "export_csv", "_selected_action": [history[2].upload.pk]},
    )
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["model_name"] for row in rows] == ["fashion_mnist"]


def test_deleting_an_upload_in_the_admin_removes_its_files(
    admin_client, history, media_files, django_capture_on_commit_callbacks
):
    """Deleting uploads from the admin deletes their rows and, on commit, their files."""
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:uploads_upload_changelist"),
            {
                "action": "delete_selected",
                "_selected_action": [p.upload.pk for p in history],
                "post": "yes",
            },
        )
    assert response.status_code == 302
    assert Upload.objects.count() == 0 and media_files() == []


def test_anonymous_users_are_sent_to_the_login_page(client, history):
    """The admin is not visible without logging in."""
    response = client.get(reverse("admin:uploads_prediction_changelist"))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_non_staff_users_are_refused(client, django_user_model, history):
    """A logged-in user who is not staff cannot open the admin."""
    user = django_user_model.objects.create_user("visitor", password="pw-123456789")
    client.force_login(user)
    response = client.get(reverse("admin:uploads_prediction_changelist"))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
    assert "one.png" not in response.content.decode()
