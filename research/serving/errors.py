"""The research package's error classes, in a module that imports neither JAX nor TensorFlow,
so that the CLIs, evaluation and the web can catch them whatever else is loaded."""

from __future__ import annotations


class DataNotFoundError(RuntimeError):
    """The dataset is neither prepared nor obtainable; the message says how to get it."""


class ModelNotFoundError(FileNotFoundError):
    """No usable model checkpoint at a path; the message names the path and the fix."""


class IncompatibleModelError(ValueError):
    """A checkpoint's serving record is missing, from an older layout or from elsewhere."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step."""
