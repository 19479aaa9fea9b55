#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, then runs it:
# Chromium for the browser test, nginx for the front-server test, PostgreSQL and jemalloc (the
# training commands' allocator) from apt, as root; a virtualenv with the project and its dev
# and postgres extras as uv.lock pins them, ruff, import-linter and pytest; then the web suite
# a second time against a real PostgreSQL server (DATABASE_URL). Without root or apt, what is
# missing is skipped with a note, never a failure. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

is_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2 || missing+=(libjemalloc2)  # training's malloc
if [ "${#missing[@]}" -gt 0 ]; then
  if is_root_with_apt; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" ||
      echo "note: apt-get could not install ${missing[*]}: the tests needing them are skipped" >&2
  else
    echo "note: not root or no apt-get; missing ${missing[*]}: those tests are skipped" >&2
  fi
fi

bash scripts/install.sh dev postgres  # .venv, exactly as uv.lock pins it

.tools/bin/uv lock --check  # the lock still matches pyproject.toml
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports  # the import rules of docs/architecture.md (pyproject.toml)
.venv/bin/python -m pytest "$@"

# PostgreSQL: Debian's cluster, started here, with a role that may create the test database.
PG_ROLE=classifier_ci
PG_PASSWORD=classifier_ci
start_postgres() {
  [ "$(id -u)" = 0 ] || { echo "note: not root: PostgreSQL run skipped" >&2; return 1; }
  command -v pg_ctlcluster >/dev/null || { echo "note: no PostgreSQL: run skipped" >&2; return 1; }
  local version name port
  if [ -z "$(pg_lsclusters -h)" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -1)
    pg_createcluster "$version" main >/dev/null || return 1
  fi
  read -r version name port _ < <(pg_lsclusters -h | head -1)
  pg_ctlcluster "$version" "$name" start >/dev/null 2>&1 || true  # already running is fine
  for _ in $(seq 30); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 1
  done
  pg_isready -q -h 127.0.0.1 -p "$port" || { echo "note: PostgreSQL did not start" >&2; return 1; }
  runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 >/dev/null <<SQL || return 1
SELECT 'CREATE ROLE $PG_ROLE' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE')
\gexec
ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
SELECT 'CREATE DATABASE $PG_ROLE OWNER $PG_ROLE'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_ROLE')
\gexec
SQL
  PG_PORT=$port
}

if start_postgres; then
  echo "== the web suite again, on PostgreSQL (port $PG_PORT)" >&2
  DATABASE_URL="postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_ROLE" \
    .venv/bin/python -m pytest tests/web
fi
