"""What a research command does before its work: jemalloc as the allocator for training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import research
from research.configs import runtime

REPO = Path(research.__file__).resolve().parent.parent

# A command that re-executes itself as `python -m research.train` does, then reports what it
# runs with: its PID, its arguments, LD_PRELOAD, and whether jemalloc is mapped in.
_COMMAND = """
import os, sys
from research.configs import runtime
print("before", os.getpid(), flush=True)
runtime.exec_with_allocator()
mapped = "jemalloc" in open("/proc/self/maps").read()
print("after", os.getpid(), sys.argv[1:], runtime.allocator(), mapped, flush=True)
"""

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD is Linux's")
needs_jemalloc = pytest.mark.skipif(
    runtime.find_jemalloc() is None, reason="jemalloc is not installed (Debian: libjemalloc2)"
)


def _run(tmp_path: Path, **env_changes: str) -> list[str]:
    script = tmp_path / "command.py"
    script.write_text(_COMMAND)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GLIBC_TUNABLES", "LD_PRELOAD", runtime.ALLOCATOR_ENV)
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(env_changes)
    out = subprocess.run(
        [sys.executable, "-u", str(script), "--flag=1", "x y"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return out.splitlines()


@linux_only
@needs_jemalloc
def test_a_training_command_runs_again_under_jemalloc_same_pid_and_arguments(tmp_path):
    """Started without it, the command re-executes itself once (the same PID, its arguments
    intact) with jemalloc preloaded, and jemalloc is then the process's malloc."""
    lines = _run(tmp_path)
    assert len(lines) == 3, lines  # "before" twice: the re-executed run starts over
    pid = lines[0].split()[1]
    assert lines[1] == f"before {pid}"
    assert lines[2] == f"after {pid} ['--flag=1', 'x y'] jemalloc True"


@linux_only
@pytest.mark.parametrize(
    "env",
    [
        {"GLIBC_TUNABLES": ""},
        {"GLIBC_TUNABLES": runtime.MALLOC_TUNABLES},
        {"RESEARCH_ALLOCATOR": "system"},
    ],
)
def test_a_persons_allocator_choice_is_left_as_it_is(tmp_path, env):
    """GLIBC_TUNABLES set (even empty) or RESEARCH_ALLOCATOR=system: no re-execution, the C
    library's malloc stays."""
    lines = _run(tmp_path, **env)
    pid = lines[0].split()[1]
    assert lines == [f"before {pid}", f"after {pid} ['--flag=1', 'x y'] system False"]


def test_without_jemalloc_the_command_keeps_the_system_malloc(monkeypatch):
    """Where jemalloc is not installed, nothing is re-executed."""
    monkeypatch.setattr(runtime, "find_jemalloc", lambda: None)
    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", runtime.ALLOCATOR_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail(f"re-executed: {args[1]}"))
    runtime.exec_with_allocator()
    assert runtime.allocator() == "system"
