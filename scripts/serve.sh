#!/usr/bin/env bash
# Sets up and starts the site on a fresh Debian machine with Python 3.11: a virtualenv with the
# project (as uv.lock pins it), the SQLite database migrated, the shipped models checked and
# compiled, then the development server on http://127.0.0.1:${PORT:-8000}/ with the task queue's
# worker beside it (manage.py db_worker: the teach page's trainings). Safe to run again.
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
# The task queue's worker (teaching: trainings of taught classifiers), beside the server and
# stopped with it; first, the trainings a killed run left 'running' are marked failed.
.venv/bin/python manage.py recover_teach_jobs
.venv/bin/python manage.py db_worker --queue-name teach --no-reload &
worker_pid=$!
stop_worker() {
  # TERM: finish the training in hand; a second TERM after 10 s stops it (marked failed).
  kill -TERM "$worker_pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$worker_pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -TERM "$worker_pid" 2>/dev/null || true
  wait "$worker_pid" 2>/dev/null || true
}
trap stop_worker EXIT

cat <<MSG

  The site is starting on http://127.0.0.1:${PORT:-8000}/  (the API: /api/predict, /api/models)
  Admin: create a user with  .venv/bin/python manage.py createsuperuser  then open /admin/
  Teach it your own classes: /teach/ (trainings run in the worker started beside the server)
  Stop with Ctrl-C. For production, see docs/deployment.md (nginx + gunicorn).

MSG
.venv/bin/python manage.py runserver "127.0.0.1:${PORT:-8000}"
