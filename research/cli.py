"""What every `python -m research.<command>` does first: INFO lines for people, and the
libraries' own logs (TensorFlow's C++ notes, absl, Orbax, JAX) kept quiet. No JAX or
TensorFlow import here."""

from __future__ import annotations

import logging
import os

NOISY_LOGGERS = ("absl", "orbax", "jax", "tensorflow")


def setup_logging(noisy_level: int = logging.ERROR, *, force: bool = False) -> None:
    """Call first in a command's main(), before TensorFlow's first import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=force)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(noisy_level)
