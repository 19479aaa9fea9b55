"""The one seam between research and serving: load a trained model, classify images.

    from research.serving.classifier import Classifier
    clf = Classifier.load("models/cifar10")      # or any workdir written by research.train
    probs = clf.predict([Image.open("cat.jpg")])  # [N, num_classes], rows sum to 1
    clf.top_k(probs, 3)                           # [[(label, probability), ...], ...]
    clf.prediction_sets(probs)                    # [["cat"], ["cat", "dog"], ...]
    result = clf.classify([Image.open("cat.jpg")])  # probs, "unknown" scores and flags
    clf.model_input(Image.open("cat.jpg"))        # the uint8 pixels the model sees

No TensorFlow here: this module imports JAX, Flax, Orbax, NumPy and Pillow only. Which
checkpoint to load and what it needs come from research.serving.model_dir and its ServingRecord; the
same `preprocess_image` (research.serving.preprocess) makes the model input for evaluation of
image folders (research.evaluate) and for serving.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from research.configs import Config
from research.nets import models
from research.serving import calibration, conformal, model_dir, saliency
from research.serving.batching import BATCH_BUCKETS
from research.serving.errors import IncompatibleModelError
from research.serving.preprocess import ImageLike, preprocess, preprocess_image
from research.serving.record import ServingRecord

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class Classification:
    """What the model says about N images."""

    probs: np.ndarray  # float32 [N, classes]: calibrated (at the record's temperature)
    scores: np.ndarray  # float32 [N]: the "unknown" score; higher = more like the known classes
    unknown: np.ndarray  # bool [N]: score < record.unknown_threshold (all False without one)


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


def build_model(record: ServingRecord, *, abstract: bool = False) -> nnx.Module:
    """The network `record` describes, randomly initialised (or only its shapes)."""

    config = Config.from_dict(record.config)
    if record.config.get("compute_dtype", "auto") == "auto":  # before the field was stored
        config = config.replace(compute_dtype="float32")  # as it was trained and calibrated

    def create() -> nnx.Module:
        return models.create_model(
            config,
            num_classes=record.num_classes,
            image_shape=record.image_shape,
            mean=record.mean,
            std=record.std,
            rngs=nnx.Rngs(0),
        )

    try:
        return nnx.eval_shape(create) if abstract else create()
    except (TypeError, ValueError, KeyError) as error:
        raise IncompatibleModelError(
            f"Model {record.name} ({record.version}) has a training config this code cannot "
            f"build: {error}"
        ) from error


class Classifier:
    """A trained model with its serving record, ready to classify images."""

    def __init__(
        self,
        model: nnx.Module,
        record: ServingRecord,
        statistics: dict[str, np.ndarray] | None = None,
    ):
        """`statistics`: the feature statistics of the 'mahalanobis' score (means, precision),
        needed when the record names that score."""
        self.record = record
        model.eval()
        self.model = model  # the NNX module, in eval mode (research.evaluate uses it)
        needed = calibration.needed_statistics(record.unknown_score)
        if needed - set(statistics or ()):
            raise IncompatibleModelError(
                f"Model {record.name} ({record.version}) uses the {record.unknown_score!r} "
                f"unknown score but lacks its feature statistics {sorted(needed)}"
            )
        self.statistics = (
            None if statistics is None else {k: np.asarray(v) for k, v in statistics.items()}
        )
        self._statistics = (
            None
            if statistics is None
            else {k: jnp.asarray(v, jnp.float32) for k, v in statistics.items()}
        )
        graphdef, state = nnx.split(model)
        self._forward = jax.jit(
            functools.partial(_forward, graphdef, score=record.unknown_score, **record.tta)
        )
        self._outputs = jax.jit(functools.partial(_outputs, graphdef, **record.tta))
        self._state = state
        # An argument of the compiled function, not a constant in it: another temperature
        # reuses the same compilation.
        self._temperature = np.float32(record.temperature)
        self._warm = threading.Event()

    @property
    def class_names(self) -> list[str]:
        return list(self.record.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.record.image_shape

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def dataset(self) -> str:
        return self.record.dataset

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.record.metrics)

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """The checkpoint research.serving.model_dir.pick_checkpoint chooses (best eval accuracy,
        else
        latest); if its weights cannot be restored (a truncated file, weights that do not fit
        its record), the next one, with a warning naming the broken step and its path.
        ModelNotFoundError when `path` holds no checkpoint with a readable record, and
        IncompatibleModelError, naming every step tried, when no weights can be restored."""
        directory, ranked = model_dir.rank_checkpoints(path)
        failures = []
        for step, record in ranked:
            try:
                restored = _restore_weights(directory, step, record)
            except Exception as error:  # TensorStore and Orbax raise several kinds
                failures.append(f"step {step} ({directory / str(step)}): {error}")
                log.warning(
                    "Checkpoint step %d in %s could not be restored, trying the next: %s",
                    step,
                    directory,
                    error,
                )
                continue
            model = build_model(record)
            nnx.update(model, restored)
            return cls(model, record, model_dir.read_statistics(directory, step))
        raise IncompatibleModelError(
            f"No checkpoint in {directory} could be restored (unreadable, or weights that do not "
            "fit its record): " + "; ".join(failures)
        )

    def export(self, out_dir: str | Path) -> Path:
        """Writes inference-only weights and the serving record (no optimizer state)."""
        out_dir = Path(out_dir).absolute()
        mngr = _manager(out_dir, read_only=False)
        mngr.save(
            self.record.step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(models.inference_state(self.model)),
                meta=ocp.args.JsonSave(self.record.to_meta()),
            ),
            force=True,
        )
        mngr.wait_until_finished()
        mngr.close()
        if self.statistics is not None:
            model_dir.write_statistics(out_dir, self.record.step, self.statistics)
        return out_dir

    @property
    def is_warm(self) -> bool:
        return self._warm.is_set()

    def warmup(self) -> None:
        """Compiles every batch bucket, so no request ever waits on compilation."""
        for size in BATCH_BUCKETS:
            zeros = np.zeros((size, *self.image_shape), np.uint8)
            jax.block_until_ready(
                self._forward(self._state, self._temperature, self._statistics, zeros)
            )
        self._warm.set()

    def classify_arrays(self, batch: np.ndarray) -> Classification:
        """Probabilities, scores and flags for already-preprocessed uint8 [N, H, W, C] images."""
        n = len(batch)
        probs = np.empty((n, self.record.num_classes), np.float32)
        scores = np.empty(n, np.float32)
        start = 0
        for chunk, kept in _bucketed(batch):
            chunk_probs, chunk_scores = self._forward(
                self._state, self._temperature, self._statistics, chunk
            )
            probs[start : start + kept] = np.asarray(chunk_probs)[:kept]
            scores[start : start + kept] = np.asarray(chunk_scores)[:kept]
            start += kept
        return Classification(probs=probs, scores=scores, unknown=self.is_unknown(scores))

    def is_unknown(self, scores: np.ndarray) -> np.ndarray:
        """bool [N]: which scores fall below the record's threshold (none without one)."""
        threshold = self.record.unknown_threshold
        scores = np.asarray(scores)
        if threshold is None:
            return np.zeros(scores.shape, bool)
        return scores < threshold

    def classify(self, images: Sequence[ImageLike]) -> Classification:
        """PIL images or uint8 HxWxC arrays of any size/mode -> probabilities, "unknown" scores
        and flags (see Classification)."""
        return self.classify_arrays(preprocess(images, self.image_shape))

    def outputs_arrays(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits [N, classes], pooled features [N, D], stage statistics [N, S]) of
        preprocessed uint8 images, before any temperature: what research.calibrate fits on."""
        parts: list[list[np.ndarray]] = [[], [], []]
        for chunk, kept in _bucketed(batch):
            for part, value in zip(parts, self._outputs(self._state, chunk), strict=True):
                part.append(np.asarray(value, np.float32)[:kept])
        if not parts[0]:
            empty = np.zeros((0, 0), np.float32)
            return np.zeros((0, self.record.num_classes), np.float32), empty, empty
        logits, features, stages = (np.concatenate(part) for part in parts)
        return logits, features, stages

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for already-preprocessed uint8 [N, H, W, C] images."""
        return self.classify_arrays(batch).probs

    def predict(self, images: Sequence[ImageLike]) -> np.ndarray:
        """PIL images or uint8 HxWxC arrays of any size/mode -> probabilities [N, classes]."""
        return self.classify(images).probs

    def model_input(self, image: ImageLike) -> np.ndarray:
        """uint8 [H, W, C]: exactly the pixels the model sees for `image` (preprocess_image)."""
        return preprocess_image(image, self.image_shape)

    def explain(self, image: ImageLike) -> np.ndarray:
        """float32 [H0, W0] in [0, 1] over the original image: where the model looked
        (research.serving.saliency)."""
        return saliency.explain(self, image)

    def prediction_sets(self, probs: np.ndarray) -> list[list[str]]:
        """The class names of each row's conformal prediction set (research.serving.conformal),
        most probable first; the top class alone when the record has no set threshold."""
        probs = np.asarray(probs)
        names = self.record.class_names
        if self.record.set_threshold is None:
            return [[names[int(i)]] for i in probs.argmax(-1)]
        keep = conformal.prediction_sets(self.record.set_method, probs, self.record.set_threshold)
        order = np.argsort(-probs, axis=-1, kind="stable")
        return [
            [names[i] for i in row_order if row_keep[i]]
            for row_order, row_keep in zip(order, keep, strict=True)
        ]

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """[(label, probability), ...] best first, for each row of `probs`: the one ranking
        of predictions, for the CLI and the web alike."""
        names = self.record.class_names
        k = max(1, min(k, len(names)))
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        return [
            [(names[i], float(row[i])) for i in idx] for row, idx in zip(probs, order, strict=True)
        ]


def _bucketed(batch: np.ndarray):
    """(chunk zero-padded to a batch bucket, how many of its rows are real) over `batch`."""
    largest = BATCH_BUCKETS[-1]
    for start in range(0, len(batch), largest):
        chunk = batch[start : start + largest]
        kept = len(chunk)
        size = next(b for b in BATCH_BUCKETS if b >= kept)
        if kept < size:
            padding = np.zeros((size - kept, *chunk.shape[1:]), np.uint8)
            chunk = np.concatenate([chunk, padding])
        yield chunk, kept


def _outputs(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    images: jax.Array,
    *,
    flip_tta: bool,
    translate_tta: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    return models.predict_logits_and_features(
        model, images, flip_tta=flip_tta, translate_tta=translate_tta
    )


def _restore_weights(directory: Path, step: int, record: ServingRecord) -> Any:
    abstract = models.inference_state(build_model(record, abstract=True))
    # Onto this process's first device, whatever devices wrote it (several processes, a GPU):
    # a target without a sharding would ask Orbax for the writer's topology.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract
    )
    mngr = _manager(directory, read_only=True)
    try:
        return mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))[
            "model"
        ]
    finally:
        mngr.close()


def _forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    temperature: jax.Array,
    statistics: dict[str, jax.Array] | None,
    images: jax.Array,
    *,
    flip_tta: bool,
    score: str,
    translate_tta: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(probabilities [N, classes] at `temperature`, "unknown" scores [N] of kind `score`)."""
    model = nnx.merge(graphdef, state)
    logits, features, stages = models.predict_logits_and_features(
        model, images, flip_tta=flip_tta, translate_tta=translate_tta
    )
    probs = jnp.exp(models.log_probabilities(logits, temperature))
    scores = calibration.unknown_scores(
        score, logits, features, temperature, statistics, stages, images
    )
    return probs, scores
