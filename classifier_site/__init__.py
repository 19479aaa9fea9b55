"""The Django project: settings, URLs, middleware, and the WSGI/ASGI and gunicorn entry points."""

# Set in a gunicorn worker pinned to one core (classifier_site/gunicorn_conf.py): the cores it
# could use before, comma-separated. uploads.classifiers lets a model's background warm-up run
# on them, so that it never waits for the core the worker's requests saturate.
UNPINNED_CPUS_ENV = "CLASSIFIER_UNPINNED_CPUS"
