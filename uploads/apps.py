from django.apps import AppConfig


class UploadsConfig(AppConfig):
    """Uploaded images and their predictions. Models are loaded lazily, never in ready()."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "uploads"
    verbose_name = "Uploads and predictions"
