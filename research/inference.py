"""The one seam between research and serving: load a trained model, classify images.

    from research.inference import Classifier
    clf = Classifier.load("models/cifar10")      # or any workdir written by research.train
    probs = clf.predict([Image.open("cat.jpg")])  # [N, num_classes], rows sum to 1

No TensorFlow here: this module imports JAX, Flax, Orbax, NumPy and Pillow only. The same
`preprocess` feeds evaluation of image folders (research.evaluate) and serving.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from PIL import Image, ImageOps

from research import models
from research.configs import Config

# Compiled batch sizes: a request of n images runs in the smallest bucket >= n (zero-padded),
# larger requests in chunks of the largest, so no new image count or size ever recompiles.
BATCH_BUCKETS = (1, 8, 32, 128)

ImageLike = Image.Image | np.ndarray


class ModelNotFoundError(FileNotFoundError):
    pass


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"Image arrays must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"Expected an HxW, HxWx1, HxWx3 or HxWx4 array, got {array.shape}")
    return Image.fromarray(array)


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> 'RGB' or 'L'; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array / 257.0  # 16-bit range onto 8-bit
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB" if channels == 3 else "L")


def preprocess_image(image: ImageLike, image_shape: Sequence[int]) -> np.ndarray:
    """One image of any size and mode -> uint8 [H, W, C] at the model's input size."""
    height, width, channels = image_shape
    pil = _to_mode(ImageOps.exif_transpose(_to_pil(image)), channels)
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.BILINEAR)  # antialiased when shrinking
    return np.asarray(pil, np.uint8).reshape(height, width, channels)


def preprocess(images: Sequence[ImageLike], image_shape: Sequence[int]) -> np.ndarray:
    """Images of any size and mode -> uint8 [N, H, W, C]; what evaluation and serving use."""
    height, width, channels = image_shape
    out = np.empty((len(images), height, width, channels), np.uint8)
    for i, image in enumerate(images):
        out[i] = preprocess_image(image, image_shape)
    return out


def find_checkpoints(path: str | Path) -> Path:
    """The Orbax checkpoint directory under a workdir, an exported model, or itself."""
    path = Path(path)
    for candidate in (path / "checkpoints", path):
        if candidate.is_dir() and any(p.name.isdigit() for p in candidate.iterdir()):
            return candidate.absolute()
    raise ModelNotFoundError(
        f"No model checkpoint in {path}: expected a workdir written by `python -m research.train`"
        " or a model exported by `python -m research.export`."
    )


def _manager(directory: Path, *, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        read_only=read_only, create=not read_only, save_interval_steps=0 if read_only else 1
    )
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # Orbax warns that a read-only directory is read-only
    try:
        return ocp.CheckpointManager(directory, item_names=("model", "meta"), options=options)
    finally:
        absl_logger.setLevel(level)


def _pick_step(mngr: ocp.CheckpointManager) -> tuple[int, dict[str, Any]]:
    """The step with the best eval accuracy, else the latest; with its metadata."""
    best: tuple[float, int, dict[str, Any]] | None = None
    for step in mngr.all_steps():
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        key = (meta.get("metrics", {}).get("eval_accuracy", -1.0), step, meta)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise ModelNotFoundError(f"No finished checkpoint in {mngr.directory}")
    return best[1], best[2]


def build_model(meta: dict[str, Any], *, abstract: bool = False) -> nnx.Module:
    config = Config.from_dict(meta["model"])

    def create() -> nnx.Module:
        return models.create_model(
            config,
            num_classes=len(meta["class_names"]),
            image_shape=tuple(meta["image_shape"]),
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            rngs=nnx.Rngs(0),
        )

    return nnx.eval_shape(create) if abstract else create()


class Classifier:
    """A trained model with its class names and preprocessing, ready to classify images."""

    def __init__(self, model: nnx.Module, meta: dict[str, Any]):
        self.meta = meta
        self.class_names: list[str] = list(meta["class_names"])
        self.image_shape: tuple[int, int, int] = tuple(meta["image_shape"])
        self.name: str = meta["name"]
        self.dataset: str = meta["dataset"]
        self.version: str = meta["version"]
        self.metrics: dict[str, Any] = dict(meta.get("metrics", {}))
        model.eval()
        self.model = model  # the NNX module, in eval mode (research.evaluate uses it)
        graphdef, state = nnx.split(model)
        self._forward = jax.jit(
            functools.partial(_forward, graphdef, flip_tta=bool(meta.get("flip_tta", False)))
        )
        self._state = state
        self._warm = threading.Event()

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        directory = find_checkpoints(path)
        mngr = _manager(directory, read_only=True)
        try:
            step, meta = _pick_step(mngr)
            abstract = models.inference_state(build_model(meta, abstract=True))
            target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
            restored = mngr.restore(
                step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target))
            )["model"]
        finally:
            mngr.close()
        model = build_model(meta)
        nnx.update(model, restored)
        return cls(model, meta)

    def export(self, out_dir: str | Path) -> Path:
        """Writes inference-only weights and metadata (no optimizer state) to `out_dir`."""
        out_dir = Path(out_dir).absolute()
        mngr = _manager(out_dir, read_only=False)
        step = int(self.meta.get("step", 0))
        mngr.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(models.inference_state(self.model)),
                meta=ocp.args.JsonSave(self.meta),
            ),
            force=True,
        )
        mngr.wait_until_finished()
        mngr.close()
        return out_dir

    @property
    def is_warm(self) -> bool:
        return self._warm.is_set()

    def warmup(self) -> None:
        """Compiles every batch bucket, so no request ever waits on compilation."""
        for size in BATCH_BUCKETS:
            zeros = np.zeros((size, *self.image_shape), np.uint8)
            jax.block_until_ready(self._forward(self._state, zeros))
        self._warm.set()

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for already-preprocessed uint8 [N, H, W, C] images."""
        n = len(batch)
        out = np.empty((n, len(self.class_names)), np.float32)
        largest = BATCH_BUCKETS[-1]
        for start in range(0, n, largest):
            chunk = batch[start : start + largest]
            size = next(b for b in BATCH_BUCKETS if b >= len(chunk))
            if len(chunk) < size:
                padding = np.zeros((size - len(chunk), *chunk.shape[1:]), np.uint8)
                chunk = np.concatenate([chunk, padding])
            probs = np.asarray(self._forward(self._state, chunk))
            out[start : start + largest] = probs[: min(largest, n - start)]
        return out

    def predict(self, images: Sequence[ImageLike]) -> np.ndarray:
        """PIL images or uint8 HxWxC arrays of any size/mode -> probabilities [N, classes]."""
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        return self.predict_arrays(preprocess(images, self.image_shape))

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """[(label, probability), ...] best first, for each row of `probs`."""
        k = max(1, min(k, len(self.class_names)))
        order = np.argsort(-probs, axis=-1)[:, :k]
        return [
            [(self.class_names[i], float(row[i])) for i in idx]
            for row, idx in zip(probs, order, strict=True)
        ]


def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, *, flip_tta: bool):
    model = nnx.merge(graphdef, state)
    logits = models.predict_logits(model, images, flip_tta=flip_tta)
    return jax.nn.softmax(logits.astype(np.float32), axis=-1)
