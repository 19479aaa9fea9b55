"""The one typed record of what serving needs from training, stored in every checkpoint.

Training writes it (`ServingRecord.to_meta`) into each checkpoint's ``meta`` item beside the
training config and metrics; export copies it; evaluation, inference and the web read it with
`ServingRecord.from_meta`, which checks it and names what is wrong with an old or foreign
checkpoint. No JAX or TensorFlow here, so the web can read records without loading a model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from research.serving.errors import IncompatibleModelError

# The layout of the record in the meta JSON. Checkpoints from before the field was added
# have every field below but `record_format`, and are read as format 1.
RECORD_FORMAT = 1
# What `unknown_threshold` compares against (defined in research.serving.calibration).
UNKNOWN_SCORES = (
    "max_softmax",
    "energy",
    "mahalanobis",
    "energy+mahalanobis",
    "activations",
    "energy+activations",
    "pixels",
    "energy+activations+pixels",
)
# The scores computed from the network's outputs alone (no input pixels): what
# research.calibrate fits and compares on stored outputs.
OUTPUT_SCORES = tuple(score for score in UNKNOWN_SCORES if "pixels" not in score)
# How the prediction set is made (defined in research.serving.conformal).
SET_METHODS = ("lac", "aps")


@dataclasses.dataclass(frozen=True)
class ServingRecord:
    """What a model needs at serving time besides its weights."""

    name: str  # '<dataset>-<model>', e.g. 'cifar10-airbench94'
    dataset: str
    version: str  # '<yyyymmdd>-step<N>'
    step: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # height, width, channels of the model's input
    mean: tuple[float, ...]  # per channel, uint8 units; the model normalizes on the device
    std: tuple[float, ...]
    flip_tta: bool  # average the prediction over the image and its mirror
    temperature: float = 1.0  # logits are divided by it before the softmax (1: uncalibrated)
    unknown_threshold: float | None = None  # a score below it answers "unknown"; None: never
    unknown_score: str = "max_softmax"  # which score (UNKNOWN_SCORES); all but the first two
    # need the feature statistics research.serving.model_dir stores beside the record
    translate_tta: bool = False  # and over 1-pixel shifts (models.tta_views)
    # The conformal prediction set (research.serving.conformal): the classes whose score under
    # `set_method` is at most `set_threshold`; None: no set, the top class alone.
    set_method: str = "lac"
    set_threshold: float | None = None
    set_coverage: float = 0.95  # the coverage `set_threshold` was fitted for
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # training Config.to_dict()
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # eval_accuracy, ...
    created: str = ""  # ISO time the checkpoint was written

    def __post_init__(self) -> None:
        problems = []
        if not self.class_names or not all(isinstance(c, str) for c in self.class_names):
            problems.append("class_names must be a non-empty list of strings")
        if len(self.image_shape) != 3 or not all(
            isinstance(d, int) and d > 0 for d in self.image_shape
        ):
            problems.append(f"image_shape must be [height, width, channels]: {self.image_shape}")
        elif self.image_shape[-1] not in (1, 3):
            problems.append(f"image_shape must have 1 or 3 channels, not {self.image_shape[-1]}")
        elif len(self.mean) != self.image_shape[-1] or len(self.std) != self.image_shape[-1]:
            problems.append("mean and std need one value per channel")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            problems.append(f"temperature must be a finite number, not {self.temperature!r}")
        elif self.temperature <= 0:
            problems.append(f"temperature must be positive, not {self.temperature}")
        if self.unknown_score not in UNKNOWN_SCORES:
            problems.append(
                f"unknown_score must be one of {', '.join(UNKNOWN_SCORES)}, not "
                f"{self.unknown_score!r}"
            )
        if self.unknown_threshold is not None and not math.isfinite(self.unknown_threshold):
            problems.append(f"unknown_threshold must be finite, not {self.unknown_threshold}")
        if self.set_method not in SET_METHODS:
            problems.append(
                f"set_method must be one of {', '.join(SET_METHODS)}, not {self.set_method!r}"
            )
        if self.set_threshold is not None and not math.isfinite(self.set_threshold):
            problems.append(f"set_threshold must be finite, not {self.set_threshold}")
        if not 0 < self.set_coverage < 1:
            problems.append(f"set_coverage must be between 0 and 1, not {self.set_coverage}")
        if problems:
            raise IncompatibleModelError("Invalid serving record: " + "; ".join(problems))

    @property
    def tta(self) -> dict[str, bool]:
        """The test-time augmentation served (and evaluated), as the keyword arguments of
        models.tta_views and the forwards built on it."""
        return {"flip_tta": self.flip_tta, "translate_tta": self.translate_tta}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def eval_accuracy(self) -> float | None:
        value = self.metrics.get("eval_accuracy")
        return float(value) if value is not None else None

    def replace(self, **changes: Any) -> ServingRecord:
        return dataclasses.replace(self, **changes)

    def to_meta(self) -> dict[str, Any]:
        """The JSON object stored as a checkpoint's ``meta`` item."""
        meta = dataclasses.asdict(self)
        meta["class_names"] = list(self.class_names)
        meta["image_shape"] = list(self.image_shape)
        meta["mean"], meta["std"] = list(self.mean), list(self.std)
        meta["model"] = meta.pop("config")  # the key checkpoints have always used
        meta["record_format"] = RECORD_FORMAT
        return meta

    @classmethod
    def from_meta(cls, meta: Any, *, source: str = "the checkpoint") -> ServingRecord:
        """Reads and checks a ``meta`` item; IncompatibleModelError names what is wrong."""
        if not isinstance(meta, dict):
            raise IncompatibleModelError(
                f"{source} has no serving record (its metadata is not a JSON object): it was "
                "not written by research.train or research.export."
            )
        found = meta.get("record_format", 1)
        if found != RECORD_FORMAT:
            raise IncompatibleModelError(
                f"{source} has serving record format {found!r}; this code reads format "
                f"{RECORD_FORMAT}. Load it with the version of the project that wrote it."
            )
        required = ("name", "dataset", "version", "step", "class_names", "image_shape")
        required += ("mean", "std", "flip_tta")
        missing = [key for key in required if key not in meta]
        if missing:
            raise IncompatibleModelError(
                f"{source} lacks serving-record fields {missing}: it was written by an older "
                "research.train or by another program. Retrain it, or export it again with "
                "the version that trained it."
            )
        # A string is iterable too: "323" must not read as the shape (3, 2, 3).
        not_lists = [
            k
            for k in ("class_names", "image_shape", "mean", "std")
            if not isinstance(meta[k], (list, tuple))
        ]
        if not_lists:
            raise IncompatibleModelError(
                f"{source} has a malformed serving record: {not_lists} must be JSON lists"
            )
        try:
            return cls(
                name=str(meta["name"]),
                dataset=str(meta["dataset"]),
                version=str(meta["version"]),
                step=int(meta["step"]),
                class_names=tuple(meta["class_names"]),
                image_shape=tuple(int(d) for d in meta["image_shape"]),
                mean=tuple(float(v) for v in meta["mean"]),
                std=tuple(float(v) for v in meta["std"]),
                flip_tta=bool(meta["flip_tta"]),
                translate_tta=bool(meta.get("translate_tta", False)),
                temperature=float(meta.get("temperature", 1.0)),
                unknown_threshold=(
                    None
                    if meta.get("unknown_threshold") is None
                    else float(meta["unknown_threshold"])
                ),
                unknown_score=str(meta.get("unknown_score", "max_softmax")),
                set_method=str(meta.get("set_method", "lac")),
                set_threshold=(
                    None if meta.get("set_threshold") is None else float(meta["set_threshold"])
                ),
                set_coverage=float(meta.get("set_coverage", 0.95)),
                config=dict(meta.get("model") or {}),
                metrics=dict(meta.get("metrics") or {}),
                created=str(meta.get("created", "")),
            )
        except (TypeError, ValueError) as error:
            if isinstance(error, IncompatibleModelError):
                raise IncompatibleModelError(f"{source}: {error}") from None
            message = f"{source} has a malformed serving record: {error}"
            raise IncompatibleModelError(message) from None
