"""What every `python -m research.<command>` does first: INFO lines for people, and the
libraries' own logs (TensorFlow's C++ notes, absl, Orbax, JAX) kept quiet; and, for the
commands that train, glibc's allocator settings. No JAX or TensorFlow import here."""

from __future__ import annotations

import logging
import os
import platform
import sys

NOISY_LOGGERS = ("absl", "orbax", "jax", "tensorflow")


def setup_logging(noisy_level: int = logging.ERROR, *, force: bool = False) -> None:
    """Call first in a command's main(), before TensorFlow's first import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=force)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(noisy_level)


# glibc malloc for XLA:CPU's train step: one arena, no mmap'd chunks, and freed memory kept.
# XLA allocates the step's large temporaries (im2col patches, gradients: hundreds of MB each)
# anew at every step; by default glibc serves them with mmap and unmaps them when freed, so
# every step faults its ~4 GB back in page by page (1.1 million minor faults per airbench94
# step on the 2-core CPU, half of the CPU's time in the kernel). Kept in one heap, the step
# reuses the same pages: 0 faults, 5.1-6.0 -> 3.5-4.4 s a step (docs/benchmarks.md).
# The cost is memory: the heap keeps its peak and fragments (the CIFAR-10 run held 17.8 GB
# where glibc's defaults stay near 5.5 GB), so machines with less than MIN_MEMORY keep the
# defaults.
MIN_MEMORY = 20 << 30  # bytes of physical memory
MALLOC_TUNABLES = ":".join(
    (
        "glibc.malloc.arena_max=1",
        "glibc.malloc.mmap_max=0",
        f"glibc.malloc.trim_threshold={64 << 30}",
        f"glibc.malloc.top_pad={1 << 30}",
    )
)


def exec_with_malloc_tunables() -> None:
    """Runs this process's command again with `MALLOC_TUNABLES` (glibc reads them only at
    start-up), the same PID, arguments and interpreter options; returns at once where glibc
    is not the C library, the machine has less than `MIN_MEMORY`, or GLIBC_TUNABLES is
    already set (even empty: a person's choice). Call first in a training command's
    `if __name__ == "__main__"`, before any work."""
    if "GLIBC_TUNABLES" in os.environ or platform.libc_ver()[0] != "glibc":
        return
    if physical_memory() < MIN_MEMORY:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES})


def peak_rss_bytes() -> int:
    """The most resident memory this process has held so far, in bytes (getrusage's
    ru_maxrss: KiB on Linux, bytes on macOS); 0 where the system does not say."""
    try:
        import resource  # POSIX only
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def physical_memory() -> int:
    """Bytes of physical memory (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
