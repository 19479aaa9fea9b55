"""The admin's own Content-Security-Policy, and where a sign-in lands when its `next` is
refused."""

import pytest
from django.urls import reverse

from classifier_site.middleware import ADMIN_CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.django_db


def test_admin_pages_carry_a_policy_without_inline_scripts(admin_client):
    """Every admin page gets a CSP: scripts from the site only, nothing framed."""
    for url in (
        reverse("admin:index"),
        reverse("admin:login"),
        reverse("admin:uploads_upload_changelist"),
    ):
        policy = admin_client.get(url)["Content-Security-Policy"]
        assert policy == ADMIN_CONTENT_SECURITY_POLICY
        assert "script-src 'self';" in policy
        assert "frame-ancestors 'none'" in policy


def test_a_refused_next_lands_on_the_admin_index(client, django_user_model):
    """An off-site `next` is ignored, and the sign-in goes to the admin, not a missing page."""
    django_user_model.objects.create_user("staff", password="pw-123456", is_staff=True)
    response = client.post(
        f"{reverse('admin:login')}?next=https://evil.example/",
        {"username": "staff", "password": "pw-123456", "next": "https://evil.example/"},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:index")
    assert client.get(response["Location"]).status_code == 200
