"""Shared fixtures: tiny exported models for the inference and web tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from flax import nnx

from research import configs
from research.nets import models
from research.serving.classifier import Classifier
from research.train.checkpoints import serving_record

CIFAR10_CLASSES = configs.DATASETS["cifar10"].class_names
FASHION_MNIST_CLASSES = configs.DATASETS["fashion_mnist"].class_names


def export_random_model(
    out_dir: Path, *, dataset: str, class_names: tuple[str, ...], image_shape: tuple[int, ...]
) -> Path:
    """Exports a randomly initialised tiny model with the serving record research.train writes."""
    config = configs.get_config("tiny", dataset=dataset)
    spec = configs.DATASETS[dataset]
    model = models.create_model(
        config,
        num_classes=len(class_names),
        image_shape=image_shape,
        mean=spec.mean,
        std=spec.std,
        rngs=nnx.Rngs(0),
    )
    record = serving_record(
        config,
        class_names=class_names,
        image_shape=image_shape,
        mean=spec.mean,
        std=spec.std,
        step=1,
        metrics={"eval_accuracy": 0.1, "eval_split": "test"},
    )
    return Classifier(model, record).export(out_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random CIFAR-10-shaped model (32x32x3, CIFAR-10 class names)."""
    return export_random_model(
        tmp_path_factory.mktemp("models") / "cifar10",
        dataset="cifar10",
        class_names=CIFAR10_CLASSES,
        image_shape=(32, 32, 3),
    )


@pytest.fixture(scope="session")
def tiny_fmnist_model_dir(tmp_path_factory) -> Path:
    """A tiny random Fashion-MNIST-shaped model (28x28x1)."""
    return export_random_model(
        tmp_path_factory.mktemp("models") / "fashion_mnist",
        dataset="fashion_mnist",
        class_names=FASHION_MNIST_CLASSES,
        image_shape=(28, 28, 1),
    )
