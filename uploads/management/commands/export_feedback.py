"""`manage.py export_feedback DIR --model NAME [--split train]`: labelled images for retraining.

Writes DIR/<split>/<class>/<name>.png, the layout `python -m research.data import-folder`
reads; export into (or copy into) the folder of the original training images to retrain on both.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from research.serving import model_dir  # JAX-free
from uploads.feedback import FeedbackError, class_folder_name, export_feedback_images


class Command(BaseCommand):
    help = "Write the images people confirmed or corrected as DIR/split/class/image.png."

    def add_arguments(self, parser):
        parser.add_argument("directory", help="folder to write split/class/image.png into")
        parser.add_argument("--model", required=True, help="the model whose feedback to export")
        parser.add_argument("--split", default="train", help="split folder (default: train)")

    def handle(self, *args, **options):
        name = options["model"]
        if name not in settings.CLASSIFIER_MODELS:
            valid = ", ".join(settings.CLASSIFIER_MODELS) or "none configured"
            raise CommandError(f"Unknown model {name!r}; choose one of: {valid}.")
        record = model_dir.describe(settings.CLASSIFIER_MODELS[name])
        if record is None:
            raise CommandError(
                f"Model {name!r} has no readable serving record, so its classes are unknown; "
                "install or export it first (see the README)."
            )
        try:
            export = export_feedback_images(
                model_name=name,
                directory=options["directory"],
                class_names=record.class_names,
                split=options["split"],
            )
        except FeedbackError as err:
            raise CommandError(str(err)) from err

        root = export.directory / options["split"]
        for class_name in record.class_names:
            count = export.per_class.get(class_name, 0)
            if count:
                self.stdout.write(f"{count:>6}  {root / class_folder_name(class_name)}")
        self.stdout.write(
            f"{export.written} image(s) of {len(export.per_class)} class(es) written to {root}"
        )
        if export.moved:
            self.stdout.write(f"{export.moved} re-labelled image(s) moved to their new class")
        if export.missing_files:
            self.stdout.write(f"{export.missing_files} skipped: the stored image is missing")
        if export.unknown_labels:
            self.stdout.write(
                f"{export.unknown_labels} skipped: labelled with a class the model no longer has"
            )
