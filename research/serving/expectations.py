"""The model's-eye view: what each model expects of an input, and warnings when one is far
from it. NumPy only (no JAX, no TensorFlow), so the web may call it on the pixels
`Classifier.model_input` returns.

    from research.serving import expectations
    expectations.expects("fashion_mnist")    # 'a single garment or shoe, light on a dark ...'
    expectations.check(classifier.record, pixels)   # [] or ['This model expects ...', ...]

What a dataset's model expects is its `DatasetSpec` (`expects`, `subject`, `background`,
`light_border` in research.configs); a model trained on a dataset of its own has no spec and
gets only the checks that hold for any model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from research.configs import DatasetSpec, dataset_spec

# Below this standard deviation (0..255, at the model's input size, in its most varied
# channel) an image is one flat colour. The least varied real images we measured: 16.5
# (Fashion-MNIST, 60,000 training images), 11.2 (CIFAR-10, 1,000 validation JPEGs).
FLAT_STD = 5.0


def spec_of(record_or_dataset: Any) -> DatasetSpec | None:
    """The DatasetSpec of a ServingRecord, a Classifier, a DatasetSpec or a dataset name."""
    if isinstance(record_or_dataset, DatasetSpec):
        return record_or_dataset
    if isinstance(record_or_dataset, str):
        return dataset_spec(record_or_dataset)
    record = getattr(record_or_dataset, "record", record_or_dataset)
    dataset = getattr(record, "dataset", None)
    return dataset_spec(dataset) if isinstance(dataset, str) else None


def expects(record_or_dataset: Any) -> str:
    """What the model expects, in plain words; "" when the project knows nothing of its data."""
    spec = spec_of(record_or_dataset)
    return spec.expects if spec else ""


def border_brightness(model_input: np.ndarray) -> float:
    """Mean grey level (0..255) of the outermost ring of pixels of an [H, W] or [H, W, C] image."""
    grey = _grey(model_input)
    if min(grey.shape) <= 2:
        return float(grey.mean())
    ring = np.ones(grey.shape, bool)
    ring[1:-1, 1:-1] = False
    return float(grey[ring].mean())


def check(record_or_dataset: Any, model_input: np.ndarray) -> list[str]:
    """Warnings, for people, about how `model_input` (the uint8 pixels the model sees) differs
    from what the model expects; [] when nothing stands out."""
    warnings = []
    spec = spec_of(record_or_dataset)
    if _colour_spread(model_input) < FLAT_STD:
        warnings.append(
            "Your image is almost one flat colour: there is little in it for the model to "
            "recognise, so the answer may be wrong."
        )
    elif suggests_inverting(spec, model_input):
        subject = spec.subject or "subject"
        warnings.append(
            f"This model expects a light {subject} on a dark background; your image has a "
            "light background, so the answer may be wrong. Try inverting it."
        )
    return warnings


def suggests_inverting(record_or_dataset: Any, model_input: np.ndarray) -> bool:
    """Whether `model_input` has a light border where the model expects a dark background (the
    result page then offers to invert it); False for a flat image, which inverting cannot help."""
    spec = spec_of(record_or_dataset)
    if spec is None or spec.background != "dark" or _colour_spread(model_input) < FLAT_STD:
        return False
    return border_brightness(_grey(model_input)) > spec.light_border


def _colour_spread(model_input: np.ndarray) -> float:
    """The standard deviation of the most varied channel."""
    array = np.asarray(model_input, np.float32)
    channels = array.shape[-1] if array.ndim == 3 else 1
    return float(array.reshape(-1, channels).std(axis=0).max())


def _grey(model_input: np.ndarray) -> np.ndarray:
    array = np.asarray(model_input, np.float32)
    if array.ndim == 3:
        array = array.mean(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"Expected an [H, W] or [H, W, C] image, got shape {array.shape}")
    return array
