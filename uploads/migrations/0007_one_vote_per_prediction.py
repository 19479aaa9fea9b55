"""One vote per prediction: earlier votes on a prediction are dropped (the latest always counted
alone), then a unique constraint keeps it so."""

from django.db import migrations, models


def keep_the_latest_vote(apps, schema_editor):
    Feedback = apps.get_model("uploads", "Feedback")
    seen = set()
    stale = []
    for pk, prediction_id in Feedback.objects.order_by("-created_at", "-id").values_list(
        "pk", "prediction_id"
    ):
        if prediction_id in seen:
            stale.append(pk)
        seen.add(prediction_id)
    Feedback.objects.filter(pk__in=stale).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("uploads", "0006_prediction_sets"),
    ]

    operations = [
        migrations.AddField(
            model_name="feedback",
            name="updated_at",
            field=models.DateTimeField(auto_now=True),
        ),
        migrations.RunPython(keep_the_latest_vote, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="feedback",
            constraint=models.UniqueConstraint(
                fields=("prediction",), name="one_vote_per_prediction"
            ),
        ),
    ]
