"""What a research command does before its work: glibc's allocator settings for training."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import research
from research.configs import runtime

REPO = Path(research.__file__).resolve().parent.parent

# A command that re-executes itself as `python -m research.train` does, then reports what it
# runs with: its PID, its arguments, and glibc's tunables.
_COMMAND = """
import os, sys
from research.configs import runtime
print("before", os.getpid(), flush=True)
runtime.exec_with_malloc_tunables()
print("after", os.getpid(), sys.argv[1:], repr(os.environ.get("GLIBC_TUNABLES")), flush=True)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")
enough_memory = pytest.mark.skipif(
    runtime.physical_memory() < runtime.MIN_MEMORY, reason="a small machine keeps glibc's defaults"
)


def _run(tmp_path: Path, env_tunables: str | None) -> list[str]:
    script = tmp_path / "command.py"
    script.write_text(_COMMAND)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = str(REPO)
    if env_tunables is not None:
        env["GLIBC_TUNABLES"] = env_tunables
    out = subprocess.run(
        [sys.executable, "-u", str(script), "--flag=1", "x y"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return out.splitlines()


@glibc_only
@enough_memory
def test_a_training_command_runs_again_with_the_malloc_tunables_same_pid_and_arguments(tmp_path):
    """Started without GLIBC_TUNABLES, the command re-executes itself once (the same PID, its
    arguments intact) with research.configs.runtime.MALLOC_TUNABLES, which glibc reads only at
    start-up."""
    lines = _run(tmp_path, None)
    assert len(lines) == 3, lines  # "before" twice: the re-executed run starts over
    pid = lines[0].split()[1]
    assert lines[1] == f"before {pid}"
    assert lines[2] == f"after {pid} ['--flag=1', 'x y'] {runtime.MALLOC_TUNABLES!r}"


@glibc_only
@pytest.mark.parametrize("chosen", ["", "glibc.malloc.arena_max=4"])
def test_a_glibc_tunables_setting_already_made_is_left_as_it_is(tmp_path, chosen):
    """GLIBC_TUNABLES set by the person (even empty, the way to turn the settings off): no
    re-execution, their value stands."""
    lines = _run(tmp_path, chosen)
    pid = lines[0].split()[1]
    assert lines == [f"before {pid}", f"after {pid} ['--flag=1', 'x y'] {chosen!r}"]


@glibc_only
def test_a_machine_with_too_little_memory_keeps_glibcs_defaults(tmp_path, monkeypatch):
    """Below MIN_MEMORY the settings would hold more than the machine has: no re-execution."""
    monkeypatch.setattr(runtime, "MIN_MEMORY", runtime.physical_memory() + 1)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail(f"re-executed: {args[1]}"))
    runtime.exec_with_malloc_tunables()
    assert "GLIBC_TUNABLES" not in os.environ
