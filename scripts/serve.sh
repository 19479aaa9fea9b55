#!/usr/bin/env bash
# Sets up and starts the site on a fresh Debian machine with Python 3.11: a virtualenv with the
# project (as uv.lock pins it), the SQLite database migrated, the shipped models checked and
# compiled, then the development server on http://127.0.0.1:${PORT:-8000}/ . Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh  # .venv, exactly as uv.lock pins it
# jemalloc, the allocator the training commands run with (research.configs.runtime); as root
# with apt only, and optional: without it they keep the C library's malloc.
if ! ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2 && [ "$(id -u)" = 0 ] &&
  command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q --no-install-recommends libjemalloc2 ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends libjemalloc2; }; } \
    >/dev/null 2>&1 || echo "note: jemalloc not installed; training keeps glibc's malloc" >&2
fi

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-classifier_site.settings.dev}"
# Debug off: friendly error pages and JSON errors under /api/, static files through WhiteNoise.
# DJANGO_DEBUG=1 bash scripts/serve.sh turns Django's debug pages on for development.
export DJANGO_DEBUG="${DJANGO_DEBUG:-0}"
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py reconcile_media --repair --min-age 0  # leftovers of a killed run
.venv/bin/python manage.py warmup_models  # fails here, clearly, if a shipped model is missing

cat <<MSG

  The site is starting on http://127.0.0.1:${PORT:-8000}/  (the API: /api/predict, /api/models)
  Admin: create a user with  .venv/bin/python manage.py createsuperuser  then open /admin/
  Stop with Ctrl-C. For production, see docs/deployment.md (nginx + gunicorn).

MSG
exec .venv/bin/python manage.py runserver "127.0.0.1:${PORT:-8000}"
