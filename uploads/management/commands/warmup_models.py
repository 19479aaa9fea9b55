"""`manage.py warmup_models [name ...]`: load and compile models, fail loudly if one is missing."""

from django.core.management.base import BaseCommand, CommandError

from uploads import classifiers


class Command(BaseCommand):
    help = "Load and compile the configured classifier models (all by default)."

    def add_arguments(self, parser):
        parser.add_argument("models", nargs="*", help="model names (default: every model)")

    def handle(self, *args, **options):
        names = options["models"] or classifiers.get_model_names()
        try:
            timings = classifiers.warm_up_models(names)
        except (classifiers.UnknownModelError, classifiers.ModelUnavailableError) as err:
            raise CommandError(str(err)) from err
        for name in names:
            info = classifiers.get_model_info(name)
            accuracy = f"{info.accuracy:.2%}" if info.accuracy is not None else "unknown"
            self.stdout.write(
                f"{name}: {info.title} {info.version}, accuracy {accuracy}, "
                f"ready in {timings.get(name, 0.0):.1f} s"
            )
