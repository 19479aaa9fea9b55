"""Teaching a shipped network new classes from a few examples: transfer learning.

    backbone = Classifier.load("models/cifar10")
    result = teach(backbone, {"cup": [img, ...], "rocket": [...]}, name="my-things")
    result.classifier.export("models/my-things")

The backbone's layers are kept frozen; only a new head is trained, on the pooled features of
augmented views of the training examples (random shifts and, where the backbone's data is
mirrored, flips). Part of each class's examples is held out before anything is fitted: the
accuracy on them is the honest figure the model page shows, and the temperature and the
"unknown" threshold are fitted on them (neither changes which class is ranked first, so the
accuracy stays unbiased; the threshold's acceptance rate is an estimate from few images).
The result is an ordinary model directory: the backbone's network with a head of the new
width and a serving record, so research.serving loads it like any trained model.

A few seconds of the 2-core CPU teach 3 classes from 20 examples each; see docs/teach.md for
accuracy against training the same classes from scratch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from research import configs
from research.serving import calibration
from research.serving.classifier import Classifier
from research.serving.preprocess import ImageLike, preprocess_image

MIN_CLASSES, MAX_CLASSES = 2, 20
MIN_EXAMPLES = 2  # per class: one to learn from, one held out
# Below these the held-out accuracy is too rough to lean on: the page says so.
FEW_HELD_OUT, FEW_HELD_OUT_PER_CLASS = 30, 5
UNKNOWN_SCORE = "energy"  # needs no feature statistics, which few examples cannot fit
PROGRESS_CHUNKS = 10  # the head's steps are reported this many times (at most 2 compiles)


@dataclasses.dataclass(frozen=True)
class TeachSettings:
    """How a head is taught. The defaults were chosen on Fashion-MNIST's training split
    (benchmarks/training/few_shot.py), never on a split the figures are reported on."""

    holdout: float = 0.25  # share of each class's examples held out (at least one)
    views: int = 16  # augmented views of each training example
    shift: int = 3  # random translation by up to this many pixels (reflect padding)
    flip: bool | None = None  # mirror views; None: as the backbone's dataset is mirrored
    steps: int = 300  # full-batch Adam steps on the head
    learning_rate: float = 0.01
    weight_decay: float = 1e-3  # L2 on the head's weights
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TeachResult:
    classifier: Classifier
    accuracy: float | None  # on the held-out examples (None when none could be held out)
    held_out: int
    trained_on: int
    few_examples: bool  # too few held out for the accuracy to mean much
    seconds: float
    previous_accuracy: float | None = None  # compare_with's, on the same held-out examples


def split_examples(
    labels: np.ndarray, holdout: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices): round(holdout * n) of each class's n examples,
    at least one and never all, picked at random with `seed`."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        count = min(max(1, round(holdout * len(index))), len(index) - 1)
        held += index[:count].tolist()
        train += index[count:].tolist()
    return np.sort(np.array(train, int)), np.sort(np.array(held, int))


def augmented_views(
    images: np.ndarray, views: int, *, shift: int, flip: bool, seed: int = 0
) -> np.ndarray:
    """uint8 [N * views, H, W, C]: each image, then `views - 1` randomly shifted (reflect
    padding) and, with `flip`, randomly mirrored copies of it."""
    rng = np.random.default_rng(seed)
    n, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
    out = np.empty((n, views, *images.shape[1:]), np.uint8)
    out[:, 0] = images
    for v in range(1, views):
        dy, dx = rng.integers(0, 2 * shift + 1, (2, n))
        mirror = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
        for i in range(n):
            view = padded[i, dy[i] : dy[i] + height, dx[i] : dx[i] + width]
            out[i, v] = view[:, ::-1] if mirror[i] else view
    return out.reshape(n * views, *images.shape[1:])


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    settings: TeachSettings,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """float32 [D, classes]: a bias-free linear head (the networks' head has no bias) fitted
    by full-batch Adam on cross-entropy plus L2, from zeros (so the result is deterministic).
    The steps run in PROGRESS_CHUNKS scans (the same updates as one), and `on_step(done,
    steps)` is called after each."""
    x = jnp.asarray(features, jnp.float32)
    scale = jnp.maximum(x.std(), 1e-6)  # steps of a useful size whatever the features' scale
    x = x / scale
    y = jax.nn.one_hot(jnp.asarray(labels), num_classes)
    optimizer = optax.adam(settings.learning_rate)

    def loss(w: jax.Array) -> jax.Array:
        logits = x @ w
        data = optax.softmax_cross_entropy(logits, y).mean()
        return data + settings.weight_decay * jnp.sum(w * w)

    def step(carry, _):
        w, opt_state = carry
        grads = jax.grad(loss)(w)
        updates, opt_state = optimizer.update(grads, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), None

    @functools.partial(jax.jit, static_argnums=1)
    def run(carry, length: int):
        carry, _ = jax.lax.scan(step, carry, None, length=length)
        return carry

    w = jnp.zeros((x.shape[1], num_classes), jnp.float32)
    carry = (w, optimizer.init(w))
    chunk = max(1, math.ceil(settings.steps / PROGRESS_CHUNKS))
    done = 0
    while done < settings.steps:
        length = min(chunk, settings.steps - done)
        carry = run(carry, length)
        done += length
        if on_step is not None:
            jax.block_until_ready(carry)
            on_step(done, settings.steps)
    return np.asarray(carry[0] / scale, np.float32)


def fit_smoothed_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the held-out NLL against labels smoothed by 1 / (n + 2),
    on a grid of log T. Plain NLL on a few examples that are all right drives T to its floor
    (certainty from a dozen images); the smoothing is the belief that the next example could
    be wrong, which a handful of examples cannot rule out."""
    n, k = logits.shape
    target = np.full((n, k), 1.0 / (n + 2) / k)
    target[np.arange(n), labels] += 1.0 - 1.0 / (n + 2)
    grid = np.exp(
        np.linspace(
            math.log(calibration.MIN_TEMPERATURE), math.log(calibration.MAX_TEMPERATURE), 400
        )
    )
    losses = [
        -np.sum(target * np.asarray(calibration.log_probabilities(logits, t))) / n for t in grid
    ]
    return float(grid[int(np.argmin(losses))])


def backbone_features(backbone: Classifier, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """float32 [N, D]: the backbone's pooled features (what its head reads) of uint8 images."""
    graphdef, state = nnx.split(backbone.model)

    @jax.jit
    def features(state, images):
        return nnx.merge(graphdef, state).features(images)

    parts = [
        np.asarray(features(state, images[start : start + batch]), np.float32)
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def with_head(backbone: Classifier, kernel: np.ndarray) -> nnx.Module:
    """A copy of the backbone's network whose head is `kernel` [D, classes] (the network
    multiplies its head's output by its head_scale, so the stored kernel is divided by it)."""
    graphdef, state = nnx.split(backbone.model)
    model = nnx.merge(graphdef, state)  # shares the (immutable) backbone arrays
    head = nnx.Linear(kernel.shape[0], kernel.shape[1], use_bias=False, rngs=nnx.Rngs(0))
    head.kernel[...] = jnp.asarray(kernel / model.head_scale, head.kernel[...].dtype)
    model.head = head
    return model


def teach(
    backbone: Classifier,
    examples: Mapping[str, Sequence[ImageLike]],
    *,
    name: str,
    settings: TeachSettings = TeachSettings(),
    progress: Callable[[str], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    compare_with: Classifier | None = None,
) -> TeachResult:
    """A classifier of `examples`' classes ({class name: images}, PIL images or uint8 arrays
    of any size), on `backbone`'s frozen network. ValueError for too few classes or examples.
    `progress` gets each phase in words, `on_step(done, steps)` the head's fitting steps.
    With `compare_with` (an earlier version of the same classes), its accuracy on the same
    held-out examples, scored the same way, is `previous_accuracy` (in the record's metrics
    too): the one fair comparison of the two versions."""
    start = time.perf_counter()
    say = progress or (lambda message: None)
    class_names = tuple(examples)
    if not MIN_CLASSES <= len(class_names) <= MAX_CLASSES:
        raise ValueError(f"Teach {MIN_CLASSES} to {MAX_CLASSES} classes, not {len(class_names)}")
    short = [c for c in class_names if len(examples[c]) < MIN_EXAMPLES]
    if short:
        raise ValueError(
            f"Every class needs at least {MIN_EXAMPLES} examples; too few: {', '.join(short)}"
        )
    say("preparing the examples")
    shape = backbone.image_shape
    images = np.stack([preprocess_image(im, shape) for c in class_names for im in examples[c]])
    labels = np.concatenate([np.full(len(examples[c]), i) for i, c in enumerate(class_names)])
    train_index, held_index = split_examples(labels, settings.holdout, settings.seed)

    flip = settings.flip
    if flip is None:
        spec = configs.DATASETS.get(backbone.dataset)
        flip = spec.flip if spec is not None else True
    views = augmented_views(
        images[train_index], settings.views, shift=settings.shift, flip=flip, seed=settings.seed
    )
    say(f"reading {len(views)} views of {len(train_index)} examples")
    features = backbone_features(backbone, views)
    say("fitting the head")
    kernel = fit_head(
        features,
        np.repeat(labels[train_index], settings.views),
        len(class_names),
        settings,
        on_step=on_step,
    )
    model = with_head(backbone, kernel)

    now = dt.datetime.now(dt.UTC)
    record = backbone.record.replace(
        name=name,
        dataset=name,  # its data are the examples, not the backbone's dataset (pages name it)
        class_names=class_names,
        version=now.strftime("%Y%m%d-%H%M%S"),
        step=settings.steps,
        temperature=1.0,
        unknown_threshold=None,
        unknown_score=UNKNOWN_SCORE,
        # The backbone's prediction set was fitted on its own classes; a few held-out examples
        # cannot fit one with a guarantee worth stating, so the new model answers its top class.
        set_threshold=None,
        created=now.isoformat(timespec="seconds"),
        metrics={},
    )
    clf = Classifier(model, record)
    say("calibrating on the held-out examples")
    logits, _, _ = clf.outputs_arrays(images[held_index])
    held_labels = labels[held_index]
    temperature = fit_smoothed_temperature(logits, held_labels)
    scores = np.asarray(calibration.unknown_scores(UNKNOWN_SCORE, logits, None, temperature))
    accuracy = float(np.mean(logits.argmax(-1) == held_labels))
    previous = None
    if compare_with is not None:
        previous = held_out_accuracy(compare_with, images[held_index], held_labels, class_names)
    per_class = np.bincount(held_labels, minlength=len(class_names))
    few = len(held_index) < FEW_HELD_OUT or int(per_class.min()) < FEW_HELD_OUT_PER_CLASS
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {
        "eval_accuracy": accuracy,
        "eval_split": "held-out examples",
        "held_out_examples": int(len(held_index)),
        "training_examples": int(len(train_index)),
        "few_examples": few,
        "backbone": f"{backbone.name} ({backbone.version})",
        "teach_seconds": round(seconds, 2),
        "teach_settings": dataclasses.asdict(settings),
    }
    if previous is not None:
        metrics["previous_accuracy"] = previous
    record = record.replace(
        temperature=float(temperature),
        unknown_threshold=calibration.acceptance_threshold(scores),
        metrics=metrics,
    )
    return TeachResult(
        classifier=Classifier(model, record),
        accuracy=accuracy,
        held_out=int(len(held_index)),
        trained_on=int(len(train_index)),
        few_examples=few,
        seconds=seconds,
        previous_accuracy=previous,
    )


def held_out_accuracy(
    clf: Classifier, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> float:
    """Top-1 accuracy of `clf`'s logits (no test-time views, as a taught head is scored) on
    preprocessed uint8 images whose labels index `class_names`; an image of a class `clf`
    does not know counts as wrong."""
    if len(images) == 0:
        return math.nan
    logits, _, _ = clf.outputs_arrays(images)
    known = {name: i for i, name in enumerate(clf.record.class_names)}
    wanted = np.array([known.get(class_names[label], -1) for label in labels])
    return float(np.mean(np.asarray(logits).argmax(-1) == wanted))


def accuracy_on(clf: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of `clf` (with its test-time views) on preprocessed uint8 images."""
    if len(images) == 0:
        return math.nan
    return float(np.mean(clf.classify_arrays(images).probs.argmax(-1) == labels))
