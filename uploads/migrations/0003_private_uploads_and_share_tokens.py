"""Private uploads: each upload's owner (session owner key, user), and a share token for every
prediction (existing rows get one here; rows without an owner stay reachable by staff only).

Not atomic as a whole, so that on PostgreSQL the token fill commits before the column becomes
unique (schema changes after row updates in one transaction can fail there).
"""

import secrets

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import uploads.models


def fill_share_tokens(apps, schema_editor):
    Prediction = apps.get_model("uploads", "Prediction")
    for pk in Prediction.objects.filter(share_token__isnull=True).values_list("pk", flat=True):
        Prediction.objects.filter(pk=pk).update(share_token=secrets.token_urlsafe(24))


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("uploads", "0002_trust_fields_and_feedback"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="upload",
            name="owner_key",
            field=models.CharField(
                blank=True,
                db_index=True,
                editable=False,
                max_length=64,
                verbose_name="session owner key",
            ),
        ),
        migrations.AddField(
            model_name="upload",
            name="user",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="uploads",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="prediction",
            name="share_token",
            field=models.CharField(editable=False, max_length=64, null=True),
        ),
        migrations.RunPython(fill_share_tokens, migrations.RunPython.noop, atomic=True),
        migrations.AlterField(
            model_name="prediction",
            name="share_token",
            field=models.CharField(
                default=uploads.models.make_share_token,
                editable=False,
                max_length=64,
                unique=True,
            ),
        ),
    ]
