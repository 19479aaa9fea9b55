#!/usr/bin/env bash
# Runs the production stack on this machine: nginx (deploy/nginx.conf) in front of gunicorn
# (deploy/gunicorn_conf.py: classifier_site/gunicorn_conf.py with workers that take requests
# only once warm and recycle one at a time; production settings) on a loopback port. Nothing needs
# root: nginx runs as `nginx -p RUN_DIR`, and its pid, logs, temp files, the collected
# static files and (unless set) the SQLite database, MEDIA_ROOT and TEACH_ROOT all lie under
# RUN_DIR.
#
#   deploy/run-local.sh [PORT [RUN_DIR]]          # default 8080 and a new temporary folder
#   GUNICORN_PORT=9001 deploy/run-local.sh 8080   # gunicorn's loopback port (default PORT+1)
#   RUN_WARMUP=1 deploy/run-local.sh 8080         # fill the JAX compilation cache first
#   RUN_COLLECTSTATIC=0 ...                        # skip collectstatic (API-only runs, tests)
#
# Any DJANGO_*, DATABASE_URL and GUNICORN_* variable passes through (GUNICORN_BIND excepted).
# gunicorn listens on loopback TCP, not a unix socket: REMOTE_ADDR is then nginx's 127.0.0.1,
# which DJANGO_TRUSTED_PROXIES names, so the app takes the client from X-Forwarded-For.
# Defaults for a local run: DJANGO_SECURE_SSL_REDIRECT=0 (plain HTTP on loopback),
# DJANGO_TRUSTED_PROXIES=127.0.0.1 (nginx), a random DJANGO_SECRET_KEY. On SIGTERM/SIGINT it
# drains (nginx finishes what it holds, then gunicorn stops); either server exiting stops both.
# media is reconciled with the rows at start-up and every RECONCILE_INTERVAL_S seconds (3600).
# The task queue's worker (manage.py db_worker --queue-name teach: the trainings of taught
# classifiers) runs beside gunicorn (RUN_TEACH_WORKER=0: not) and stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PORT=${1:-${PORT:-8080}}
RUN_DIR=${2:-${RUN_DIR:-$(mktemp -d -t classifier-run-XXXXXX)}}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
if [ ! -x "$NGINX_BIN" ]; then
  echo "error: nginx not found (Debian: apt-get install nginx)" >&2
  exit 2
fi

mkdir -p "$RUN_DIR"/logs "$RUN_DIR"/tmp
RUN_DIR=$(cd "$RUN_DIR" && pwd)
# Started as root, nginx's workers run as an unprivileged user: they must reach the static
# files.
chmod 755 "$RUN_DIR"

export DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-classifier_site.settings.production}
export DJANGO_SECURE_SSL_REDIRECT=${DJANGO_SECURE_SSL_REDIRECT:-0}
export DJANGO_TRUSTED_PROXIES=${DJANGO_TRUSTED_PROXIES:-127.0.0.1}
export DJANGO_STATIC_ROOT=${DJANGO_STATIC_ROOT:-$RUN_DIR/static}
export DJANGO_MEDIA_ROOT=${DJANGO_MEDIA_ROOT:-$RUN_DIR/media}
export DJANGO_TEACH_ROOT=${DJANGO_TEACH_ROOT:-$RUN_DIR/teach}  # taught classifiers' files
export DATABASE_URL=${DATABASE_URL:-sqlite:///$RUN_DIR/db.sqlite3}
mkdir -p "$DJANGO_STATIC_ROOT" "$DJANGO_MEDIA_ROOT"
if [ -z "${DJANGO_SECRET_KEY:-}" ]; then
  DJANGO_SECRET_KEY=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(50))')
  export DJANGO_SECRET_KEY
fi
export GUNICORN_BIND=127.0.0.1:${GUNICORN_PORT:-$((PORT + 1))}

# The app refuses more than DJANGO_UPLOAD_MAX_FILES files of DJANGO_UPLOAD_MAX_BYTES each;
# nginx refuses any body that could not fit them, plus 1 MiB for the multipart framing.
max_files=${DJANGO_UPLOAD_MAX_FILES:-10}
max_bytes=${DJANGO_UPLOAD_MAX_BYTES:-10485760}
max_body=$((max_files * max_bytes + 1048576))

sed -e "s|@RUN_DIR@|$RUN_DIR|g" \
  -e "s|@LISTEN@|127.0.0.1:$PORT|g" \
  -e "s|@UPSTREAM@|$GUNICORN_BIND|g" \
  -e "s|@STATIC_ROOT@|$DJANGO_STATIC_ROOT|g" \
  -e "s|@MAX_BODY@|$max_body|g" \
  deploy/nginx.conf >"$RUN_DIR/nginx.conf"
"$NGINX_BIN" -t -q -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/logs/error.log"

"$PYTHON" manage.py migrate --noinput -v 0
# What a killed worker or a full disk left (files without rows, unfinished writes, rows without
# their image): removed before any worker serves, so no age limit is needed here.
"$PYTHON" manage.py reconcile_media --repair --min-age 0
if [ "${RUN_COLLECTSTATIC:-1}" = 1 ]; then  # 0: only for API-only runs (pages need it)
  "$PYTHON" manage.py collectstatic --noinput -v 0
fi
if [ "${RUN_WARMUP:-0}" = 1 ]; then
  "$PYTHON" manage.py warmup_models
fi

gunicorn_pid= nginx_pid= reconcile_pid= worker_pid=
stop() {
  trap - TERM INT EXIT
  # Drain, front first: nginx stops accepting and finishes every request it holds (QUIT is its
  # graceful stop), then gunicorn, which nothing reaches any more, stops (TERM: graceful, within
  # graceful_timeout). Stopping both at once answered in-flight requests with 502.
  kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  kill -TERM "$gunicorn_pid" "$reconcile_pid" 2>/dev/null || true
  # The worker: TERM finishes the training in hand; a second TERM, 10 s on, stops it.
  if [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$worker_pid" 2>/dev/null || true
  fi
  wait || true
}
trap 'stop; exit 0' TERM INT  # asked to stop: a clean drain is a success
trap stop EXIT

# gunicorn 27's control socket defaults to one path per user: keep each run's apart.
"$PYTHON" -m gunicorn -c "${GUNICORN_CONF:-deploy/gunicorn_conf.py}" --control-socket "$RUN_DIR/gunicorn.ctl" \
  >"$RUN_DIR/logs/gunicorn.log" 2>&1 &
gunicorn_pid=$!
"$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/logs/error.log" &
nginx_pid=$!
# Reconciliation on a schedule (RECONCILE_INTERVAL_S, default an hour; 0: off), leaving files
# younger than its --min-age to the uploads in flight. Under systemd: deploy/reconcile-media.timer.
if [ "${RECONCILE_INTERVAL_S:-3600}" -gt 0 ]; then
  while sleep "${RECONCILE_INTERVAL_S:-3600}"; do
    "$PYTHON" manage.py reconcile_media --repair >>"$RUN_DIR/logs/reconcile.log" 2>&1 || true
  done &
  reconcile_pid=$!
fi
# The trainings a killed run left 'running' are marked failed first (beside gunicorn's start,
# not before it: the site is ready no later).
if [ "${RUN_TEACH_WORKER:-1}" = 1 ]; then
  (
    "$PYTHON" manage.py recover_teach_jobs
    exec "$PYTHON" manage.py db_worker --queue-name teach --no-reload
  ) >"$RUN_DIR/logs/teach-worker.log" 2>&1 &
  worker_pid=$!
fi
echo "serving http://127.0.0.1:$PORT/ (nginx -> $GUNICORN_BIND); logs in $RUN_DIR/logs" >&2

# Either server exiting stops the other.
status=0
wait -n "$gunicorn_pid" "$nginx_pid" || status=$?
exit "$status"
