"""What every `python -m research.<command>` does first: INFO lines for people, and the
libraries' own logs (TensorFlow's C++ notes, absl, Orbax, JAX) kept quiet; and, for the
commands that train, jemalloc as the allocator. No JAX or TensorFlow import here."""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys

NOISY_LOGGERS = ("absl", "orbax", "jax", "tensorflow")


def setup_logging(noisy_level: int = logging.ERROR, *, force: bool = False) -> None:
    """Call first in a command's main(), before TensorFlow's first import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=force)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(noisy_level)


# The allocator for XLA:CPU's train step. XLA allocates the step's large temporaries (im2col
# patches, gradients: hundreds of MB each) anew at every step. glibc's defaults serve them
# with mmap and unmap them when freed, so every step faults them back in page by page; glibc
# tuned to keep them (MALLOC_TUNABLES: one arena, no mmap, no trim) stops the faults but keeps
# the heap at its peak. jemalloc reuses freed pages for a while (its dirty-page decay) and
# returns them after. The default CIFAR-10 command for 10 steps on a 2-core Zen 4 CPU
# (docs/benchmarks.md, "Memory"): glibc tuned 16.6 GB peak at 5.2 s a step, glibc's defaults
# 5.5 GB at 4.1 s, tcmalloc 9.7 GB at 3.5 s, jemalloc 5.4 GB at 3.5 s. Training commands
# therefore run under jemalloc where it is installed (Debian: libjemalloc2, which the README's
# commands install).
ALLOCATOR_ENV = "RESEARCH_ALLOCATOR"  # "system": keep the C library's malloc
JEMALLOC = "jemalloc"
# The glibc settings that were the default before jemalloc: the fastest step on some machines,
# at the cost of a heap that keeps its peak. Opt in with GLIBC_TUNABLES=<this value>.
MALLOC_TUNABLES = ":".join(
    (
        "glibc.malloc.arena_max=1",
        "glibc.malloc.mmap_max=0",
        f"glibc.malloc.trim_threshold={64 << 30}",
        f"glibc.malloc.top_pad={1 << 30}",
    )
)


def find_jemalloc() -> str | None:
    """The shared library name of jemalloc (for LD_PRELOAD), or None where it is not
    installed."""
    return ctypes.util.find_library(JEMALLOC)


def exec_with_allocator() -> None:
    """Runs this process's command again with jemalloc preloaded (LD_PRELOAD: the allocator is
    chosen only at start-up), the same PID, arguments and interpreter options. Returns at once
    where jemalloc is already preloaded or not installed, where GLIBC_TUNABLES is set (a
    person's choice of glibc settings), or where RESEARCH_ALLOCATOR=system. Call first in a
    training command's `if __name__ == "__main__"`, before any work."""
    preload = os.environ.get("LD_PRELOAD", "")
    if JEMALLOC in preload or "GLIBC_TUNABLES" in os.environ:
        return
    if os.environ.get(ALLOCATOR_ENV, "").lower() == "system" or sys.platform != "linux":
        return
    library = find_jemalloc()
    if library is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, "LD_PRELOAD": " ".join(filter(None, (library, preload)))}
    os.execve(sys.executable, sys.orig_argv, env)


def allocator() -> str:
    """Which malloc this process runs with: 'jemalloc' when preloaded, else 'system'."""
    return JEMALLOC if JEMALLOC in os.environ.get("LD_PRELOAD", "") else "system"


def peak_rss_bytes() -> int:
    """The most resident memory this process has held so far, in bytes (getrusage's
    ru_maxrss: KiB on Linux, bytes on macOS); 0 where the system does not say."""
    try:
        import resource  # POSIX only
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
