#!/usr/bin/env bash
# Installs the project into .venv exactly as uv.lock pins it (uv sync --frozen), with the extras
# named as arguments (scripts/test.sh: dev postgres). uv itself comes from PyPI at a pinned
# version into .tools/. Safe to run again: a synced environment is left as it is.
#
# Why uv: one lock for every platform and extra (CPU, cuda12/cuda13, postgres, dev), and
# `uv lock --check` says whether it still matches pyproject.toml. To change a dependency, edit
# pyproject.toml, then run `.tools/bin/uv lock` and commit both.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
if ! .tools/bin/uv --version 2>/dev/null | grep -qx "uv $UV_VERSION"; then
  python3 -m venv .tools
  .tools/bin/python -m pip install -q "uv==$UV_VERSION"
fi
extras=()
for extra in "$@"; do extras+=(--extra "$extra"); done
.tools/bin/uv sync --frozen --quiet --python python3 "${extras[@]}"
