"""`manage.py publish_model DIR [--name NAME] [--note TEXT]`, `manage.py publish_model
--rollback NAME`: serve a newly exported model (or an earlier version) without a restart.

Every worker notices within settings.CLASSIFIER_REGISTRY_POLL_S seconds, warms the version in
the background and swaps it in once warm; the version serving until then keeps serving if the
warm-up fails (see uploads.registry).
"""

from django.core.management.base import BaseCommand, CommandError

from uploads import registry


class Command(BaseCommand):
    help = "Publish an exported model directory as the served version of a model, or roll back."

    def add_arguments(self, parser):
        parser.add_argument("directory", nargs="?", help="an exported model directory")
        parser.add_argument("--name", default="", help="model name (default: the directory's)")
        parser.add_argument("--note", default="", help="why (kept with the version)")
        parser.add_argument(
            "--rollback", metavar="NAME", help="serve the version of NAME served before"
        )

    def handle(self, *args, **options):
        if bool(options["directory"]) == bool(options["rollback"]):
            raise CommandError("Give a model directory to publish, or --rollback NAME.")
        try:
            if options["rollback"]:
                row = registry.roll_back(name=options["rollback"])
            else:
                row = registry.publish_model(
                    directory=options["directory"], name=options["name"], note=options["note"]
                )
        except registry.PublishError as err:
            raise CommandError(str(err)) from err
        self.stdout.write(
            f"{row.name}: serving {row.version} from {row.directory} "
            "(each worker swaps it in once warm)"
        )
