"""The import rules of docs/architecture.md hold, and their checker catches a broken one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("research", "uploads", "classifier_site", "teaching")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True
    )


def test_the_import_contracts_hold():
    """lint-imports keeps every contract of pyproject.toml on this tree."""
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("app", ["uploads", "teaching"])
def test_a_web_import_of_the_training_package_breaks_a_contract(tmp_path, app):
    """A copy of the tree with `<app> -> research.train` added fails lint-imports, naming it
    (the teach worker must run research.teach as a process, never import it)."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / app / "training_probe.py").write_text("from research.train import loop\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert "the web imports research.serving and research.configs" in done.stdout
    assert f"{app}.training_probe -> research.train.loop" in done.stdout
    assert "BROKEN" in done.stdout
