"""Training and inference settings: the one place where defaults live.

The CLI, the Groovy generator, the classifier metadata and the docs all read these models; none repeats a default.
Keys are snake_case and match ``--set key=value`` (nested keys with dots: ``augment.color_jitter=true``). Where the
values come from (settings files, ``--set`` overrides, layers merged in order, one-line errors) is ``layers``.
"""

from __future__ import annotations

import re
import typing
from enum import Enum
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..errors import ConfigError

MAX_CONTEXT_SCALE = 8
"""Largest ``context_scale``: each tile then reads a 64× larger area around it."""

AUTO_UNET_PIXELS = 400_000
"""``method: auto`` trains a U-Net above this many labelled pixels at the training resolution (all classes together)
and a features classifier up to it: the most labelled pixels the features classifier fits its head on
(``training.features.MAX_TRAIN_PIXELS``)."""

NAME_PATTERN = re.compile(r"\A[A-Za-z0-9_-]{1,100}\Z")
"""A classifier name: no path separators, dots, spaces, control characters or trailing newline."""

ENCODER_BLOCKS: tuple[str, ...] = ("stem", "block1", "block2", "block3", "block4", "block5")
"""Encoder stages that ``freeze`` can name, from the input convolution (``stem``) to the deepest block."""

BACKBONES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-lite0",
    "mobilenet_v2",
    "resnet50_lunit-swav",
    "resnet50_lunit-bt",
    "resnet50_kather100k",
    "resnet50_tcga-brca",
)
"""Encoders a U-Net can be built on. ``efficientnet-lite0`` has its ImageNet weights in a Python package, so it
is the one pretrained encoder that works with no download (the demo's U-Net, ``dlpixel demo --method unet``, uses
it)."""


class Scheduler(str, Enum):
    one_cycle = "one_cycle"
    cosine = "cosine"
    step = "step"
    plateau = "plateau"
    none = "none"


class Loss(str, Enum):
    ce_dice = "ce_dice"
    ce = "ce"
    dice = "dice"
    focal = "focal"
    focal_dice = "focal_dice"


class EarlyStopMetric(str, Enum):
    mean_iou = "mean_iou"
    val_loss = "val_loss"


class NormStrategy(str, Enum):
    percentile_99 = "percentile_99"
    min_max = "min_max"
    z_score = "z_score"
    fixed_range = "fixed_range"


Precision = Literal["bf16", "fp16", "fp32"]
"""Floating-point precision of the model's arithmetic on a GPU: ``bf16`` and ``fp16`` run the model under autocast
(``bf16`` falls back to ``fp16`` on a GPU without bfloat16), ``fp32`` in full precision. CPUs always compute in
``fp32``."""


def _map_mixed_precision(data: Any) -> Any:
    """Settings written before ``precision`` existed carry ``mixed_precision``: true is ``bf16``, false ``fp32``."""
    if isinstance(data, dict) and "mixed_precision" in data:
        data = dict(data)
        old = data.pop("mixed_precision")
        if "precision" not in data and old is not None:
            flag = old.strip().lower() not in ("false", "0", "no", "off") if isinstance(old, str) else bool(old)
            data["precision"] = "bf16" if flag else "fp32"
    return data


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True, use_enum_values=True,
                              use_attribute_docstrings=True, allow_inf_nan=False)


class AugmentConfig(_Settings):
    """Random transforms applied alike to a training tile and its labels (never to validation tiles)."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    color_jitter: bool = False
    elastic: bool = False


class NormalizationConfig(_Settings):
    """How pixel values are scaled before the model sees them."""

    strategy: NormStrategy = NormStrategy.percentile_99
    per_channel: bool = False
    image_level: bool = True
    """True: statistics computed once per image (from a downsampled read) and used for each of its tiles.
    False: the training dataset's statistics, stored in the metadata, are used for every image."""
    min: float | None = None
    """Lower bound of ``fixed_range`` (required there, ignored otherwise)."""
    max: float | None = None
    """Upper bound of ``fixed_range`` (required there, ignored otherwise)."""

    @model_validator(mode="after")
    def _fixed_range_bounds(self) -> NormalizationConfig:
        if self.strategy == NormStrategy.fixed_range.value:
            if self.min is None or self.max is None:
                raise ValueError("normalization.strategy=fixed_range needs normalization.min and normalization.max")
            if not self.max > self.min:
                raise ValueError("normalization.max must be greater than normalization.min")
        return self


Freeze = Union[Literal["auto", "none", "small", "medium", "large"], list[str]]


class TrainingConfig(_Settings):
    """Every setting of a training run. Defaults follow the training guide unless docs/PARAMETERS.md says why not."""

    # classifier info
    description: str = ""
    # architecture
    architecture: Literal["unet"] = "unet"
    method: Literal["auto", "unet", "features"] = "auto"
    """``auto``: ``features`` when the annotations label at most 400,000 pixels at the training resolution (all
    classes together; strokes and small regions), ``unet`` above that, and ``unet`` when fine-tuning
    (``init_weights_from``) or training on several GPUs; the method trained is what the classifier records, so
    ``--from-model`` trains it again. ``unet``: a U-Net on ``backbone``, trained on tiles over the annotations.
    ``features``: a per-pixel classifier on a fixed multiscale filter bank (Gaussian, gradient magnitude, Laplacian
    of Gaussian, Hessian and structure-tensor eigenvalues at 1, 2 and 4 px) with a linear head, trained on the
    labelled pixels in seconds on a CPU and validated on whole annotations held out from training, beside a
    random-forest baseline; it ignores the U-Net settings (backbone, epochs, freezing, augmentation)."""
    pseudo_labels: bool = False
    """U-Net only: before training, fit the features classifier on the training tiles' labels and add the unlabelled
    pixels of those tiles that it calls with probability >= 0.9 as extra labels (validation tiles are untouched), so
    the U-Net learns where objects end rather than that an object is nearby."""
    prior_correction: bool = True
    """Features only: after fitting, estimate the class fractions of the annotated images from the classifier's own
    probabilities over their pixels (EM, Saerens et al. 2002) and shift its output bias by log(fraction / the
    fraction its class-weighted training assumed), so strokes drawn in other proportions than the classes cover do
    not bias the boundary. Baked into the model (ONNX included); the priors and the bias are in the metadata's
    ``split.prior_correction``. Off: the head as fitted."""
    backbone: str = "resnet34"
    pretrained: bool = True
    freeze: Freeze = "auto"
    """``auto`` picks ``small``/``medium``/``large`` from the number of training tiles (<500, 500-5000, >5000);
    ``none`` trains every layer; a list names encoder blocks to freeze (``stem``, ``block1`` … ``block5``)."""
    # data
    tile_size: int = 512
    downsample: float = 1.0
    context_scale: int = 1
    """1: the model sees the tile only. N > 1: it also sees N× the area around it, downsampled N× more, as extra
    channels (the same channels again)."""
    tile_overlap: float = 0.0
    """Percent of a tile shared with its neighbours when tiles are sampled over the annotations (0-50)."""
    line_stroke_width: float = 0.0
    """Width in training pixels of line annotations in the label mask; 0 = 5 px, a typical QuPath annotation stroke
    (neither QuPath projects nor GeoJSON record the stroke a line was drawn with)."""
    validation_split: float = 0.2
    # training parameters
    epochs: int = 50
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    # strategy
    scheduler: Scheduler = Scheduler.one_cycle
    loss: Loss = Loss.ce_dice
    early_stop_metric: EarlyStopMetric = EarlyStopMetric.mean_iou
    early_stop_patience: int = 15
    precision: Precision = "bf16"
    """``bf16``, ``fp16`` or ``fp32`` on a GPU (CPUs compute in fp32); the old ``mixed_precision`` true/false maps to
    bf16/fp32."""
    compile: bool = False
    """Compile the model with ``torch.compile`` on CUDA (slower start, faster steps on large runs); ignored on CPUs."""
    log_every: int = 10
    """Training batches between loss read-outs (and the non-finite-loss check) on a GPU: each read-out waits for the
    GPU, so fewer read-outs keep it busy. 1 reads every batch (always so on a CPU)."""
    # augmentation
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    # channels and classes
    channels: list[Union[int, str]] | None = None
    """Channel names or 0-based indices, in the order the model sees them; None = every channel of the image."""
    classes: list[str] | None = None
    """Class names to train, in output order; None = every class found in the annotations (sorted by name)."""
    class_weights: dict[str, float] = Field(default_factory=dict)
    """Multipliers on top of the automatic inverse-pixel-frequency weights (>1 boosts a class)."""
    normalization: NormalizationConfig = Field(default_factory=NormalizationConfig)
    # reproducibility and hardware
    seed: int = 42
    num_workers: int | Literal["auto"] = "auto"
    """DataLoader worker processes (augmentation and batching beside the training steps). ``auto``: none on a CPU
    (patches are cached in memory, and workers would take cores from the model); on a CUDA GPU none when the patch
    cache fits on the GPU (batches are then gathered, turned and normalised there: ``training.batches.DeviceCache``),
    else up to 4 persistent workers (one core left for the training loop); none inside QuPath (workers are spawned
    there, with a copy of the patch cache each, rather than forked from its Java VM)."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _old_precision(cls, data: Any) -> Any:
        return _map_mixed_precision(data)

    @field_validator("freeze", mode="before")
    @classmethod
    def _split_blocks(cls, value: Any) -> Any:
        """A block name (``--set freeze=stem``) or comma-separated block names make a list."""
        if isinstance(value, str) and (value in ENCODER_BLOCKS or "," in value):
            return [v.strip() for v in value.split(",")]
        if isinstance(value, str) and value not in typing.get_args(Freeze.__args__[0]):
            raise ValueError(f"'{value}' is not a choice: use auto, none, small, medium or large, or name encoder "
                             f"blocks ({', '.join(ENCODER_BLOCKS)}, comma-separated)")
        return value

    @field_validator("channels", "classes", mode="before")
    @classmethod
    def _split_names(cls, value: Any, info: ValidationInfo) -> Any:
        """A single name (``--set channels=DAPI``) or comma-separated names make a list; a channel written as
        digits (``channels=0,2``) is an index."""
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            if not isinstance(value, str):
                return [value]
            parts = [v.strip() for v in value.split(",")]
            return [int(v) if info.field_name == "channels" and v.isdigit() else v for v in parts]
        return value

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(f"unknown backbone '{value}'; choose one of: {', '.join(BACKBONES)}")
        return value

    @field_validator("tile_size")
    @classmethod
    def _tile_size(cls, value: int) -> int:
        if value < 32 or value % 32:
            raise ValueError(f"tile_size must be a positive multiple of 32 (got {value}); try 256 or 512")
        return value

    @field_validator("downsample")
    @classmethod
    def _downsample(cls, value: float) -> float:
        if value < 1:
            raise ValueError(f"downsample must be at least 1 (got {value})")
        return value

    @field_validator("context_scale", "epochs", "batch_size", "log_every")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1 (got {value})")
        return value

    @field_validator("context_scale")
    @classmethod
    def _context_scale(cls, value: int) -> int:
        if value > MAX_CONTEXT_SCALE:
            raise ValueError(f"must be at most {MAX_CONTEXT_SCALE} (got {value}): the context area grows with its "
                             "square")
        return value

    @field_validator("tile_overlap", "validation_split", mode="before")
    @classmethod
    def _percent_sign(cls, value: Any, info: ValidationInfo) -> Any:
        """``25%`` is unambiguous in either unit: a percent for ``tile_overlap``, a fraction for
        ``validation_split``."""
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                percent = float(value.strip()[:-1])
            except ValueError:
                raise ValueError(f"'{value}' is not a percentage") from None
            return percent if info.field_name == "tile_overlap" else percent / 100
        return value

    @field_validator("tile_overlap")
    @classmethod
    def _overlap(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError(f"is a percentage from 0 to 50, and {value:g} looks like a fraction: write "
                             f"{value * 100:g} (or '{value * 100:g}%') for {value * 100:g}% of a tile")
        if not 0 <= value <= 50:
            raise ValueError(f"tile_overlap is a percentage from 0 to 50 (got {value})")
        return value

    @field_validator("validation_split")
    @classmethod
    def _split(cls, value: float) -> float:
        if 1 <= value < 100:
            raise ValueError(f"is a fraction between 0 and 1, and {value:g} looks like a percentage: write "
                             f"{value / 100:g} (or '{value:g}%')")
        if not 0 < value < 1:
            raise ValueError(f"validation_split is a fraction between 0 and 1 (got {value}); 0.2 is typical")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"learning_rate must be positive (got {value})")
        return value

    @field_validator("early_stop_patience", "num_workers")
    @classmethod
    def _non_negative(cls, value: Any) -> Any:
        if value != "auto" and value < 0:
            raise ValueError(f"must be 0 or more (got {value})")
        return value

    @field_validator("line_stroke_width")
    @classmethod
    def _stroke(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"line_stroke_width must be 0 (QuPath's stroke) or more (got {value})")
        return value

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) < 2:
                raise ValueError("at least two classes are needed to train a pixel classifier")
            if len(set(value)) != len(value):
                raise ValueError(f"classes are listed twice: {value}")
        return value

    @field_validator("class_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not weight > 0:
                raise ValueError(f"class weight of '{name}' must be positive (got {weight})")
        return value

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, value: Freeze) -> Freeze:
        if isinstance(value, list):
            unknown = [b for b in value if b not in ENCODER_BLOCKS]
            if unknown:
                raise ValueError(f"unknown encoder blocks {unknown}; choose from {list(ENCODER_BLOCKS)}")
        return value


WHOLE_IMAGE_OUTPUTS = ("map", "probabilities", "overlay")
"""Outputs whose ``scope`` defaults to the whole image."""


class InferenceConfig(_Settings):
    """Settings of ``dlpixel apply``; a None takes the classifier's own value."""

    output: Literal["measurements", "objects", "map", "probabilities", "overlay"] = "measurements"
    """``overlay``: the class map (as ``map``) and a PNG of it in the class colours that QuPath's helper shows on
    the open image (``DLPixel.applyOverlay``)."""
    scope: Literal["annotations", "selected", "image"] = "annotations"
    """Where to compute: every classified or unclassified annotation, the selected ones (QuPath only), or the
    whole image. Left unset, ``map``, ``probabilities`` and ``overlay`` cover the whole image."""
    tile_size: int | None = None
    overlap: int | None = None
    """Pixels (at the classifier's resolution) shared by neighbouring tiles and blended; None = a quarter tile."""
    batch_size: int = 8
    """Tiles per model call (on a GPU 16-64 keeps it busy; batches span rows of tiles)."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    backend: Literal["auto", "torch", "onnx"] = "auto"
    precision: Precision = "bf16"
    """``bf16``, ``fp16`` or ``fp32`` for PyTorch on a GPU (CPUs and ONNX Runtime compute in fp32)."""
    cuda_graphs: bool = True
    """PyTorch on a CUDA GPU: replay the model as a CUDA graph (one launch per batch instead of one per layer, so
    reading and writing on the host do not hold up the device). Off for a custom model that cannot be captured
    (such a model also falls back by itself, with a warning)."""
    reader_threads: int | Literal["auto"] = "auto"
    """Readers of rows of tiles ahead of the model: threads, each with a child process that decodes where
    ``row_readers`` puts them there. ``auto``: 2 where the model runs on a CPU (it is the bottleneck there), 8 (at
    most half the cores) where it runs on a CUDA GPU, which takes rows faster."""
    row_readers: Literal["auto", "separate_processes", "same_process"] = "auto"
    """Where rows of tiles of an image file are read and decoded: ``separate_processes``, one child process per
    reader (``reader_threads`` of them; each opens the file itself and sends the raw block back, received straight
    into the memory it is uploaded from), so decoding never holds the interpreter lock that the thread launching
    the model needs; ``same_process``: threads of this one. ``auto``: separate processes where the model runs on
    a CUDA GPU, threads on a CPU. Images served by QuPath are always read in this process."""
    map_writer: Literal["auto", "separate_process", "same_process"] = "auto"
    """Where ``map``, ``probabilities`` and ``overlay`` files are compressed and their pyramid levels built:
    ``separate_process`` in a child process (each strip crosses a pipe once; the file is the same byte for byte),
    so its Python never holds the interpreter lock that the thread launching the model needs; ``same_process``
    in a thread of this one. ``auto``: a separate process where the model runs on a CUDA GPU, this process on a
    CPU (there the model is the bottleneck)."""
    refine: Literal["auto", "none", "watershed"] = "auto"
    """``watershed``: pixels called with probability > 0.95 seed their class and the others take the class whose
    flood over the image's gradient (Gaussian 1.5 px) reaches them first, so boundaries sit on edges
    (``inference.refine``; streamed in bands of 256 rows with 32 rows of context, equal to refining the whole map
    wherever uncertain areas are narrower than that); probabilities become 0.5 × model + 0.5 × the watershed's
    class. ``auto``: ``watershed`` for features classifiers (on real nuclei and bacteria +0.026 and +0.009 foreground
    IoU on top of the prior correction, docs/BEST_PRACTICES.md), ``none`` for U-Nets (not measured there)."""
    object_type: Literal["detection", "annotation"] = "detection"
    min_object_area: float | None = None
    """Smallest object kept, in µm² when the image is calibrated, else px²; None = 9 pixels at the classifier's
    resolution (a 3 × 3 block), which drops the specks of one to a few pixels a class map has along borders."""
    min_hole_area: float = 0.0
    """Smallest hole kept inside an object, in µm² when calibrated, else px²."""
    simplify: float = 0.0
    """Polygon simplification tolerance in full-resolution pixels (0 = exact pixel outlines)."""

    @model_validator(mode="before")
    @classmethod
    def _old_precision(cls, data: Any) -> Any:
        return _map_mixed_precision(data)

    @model_validator(mode="before")
    @classmethod
    def _maps_cover_the_image(cls, data: Any) -> Any:
        """A map is of the whole image unless a scope is given (annotations may be lines only, or none)."""
        if isinstance(data, dict) and data.get("scope") is None and data.get("output") in WHOLE_IMAGE_OUTPUTS:
            data = {**data, "scope": "image"}
        return data

    @field_validator("tile_size")
    @classmethod
    def _tile_size(cls, value: int | None) -> int | None:
        if value is not None and (value < 32 or value % 32):
            raise ValueError(f"tile_size must be a positive multiple of 32 (got {value})")
        return value

    @field_validator("batch_size", "reader_threads")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if value != "auto" and value < 1:
            raise ValueError(f"must be at least 1 (got {value})")
        return value

    @field_validator("overlap", "min_object_area", "min_hole_area", "simplify")
    @classmethod
    def _not_negative(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError(f"must be 0 or more (got {value})")
        return value


def default_overlap(tile_size: int) -> int:
    """The blending overlap when ``overlap`` is not set: a quarter tile (seam-free at the fewest tiles)."""
    return tile_size // 4


def validate_name(name: Any) -> str:
    """The one check of a classifier name, from every entry point (command line, requests, Groovy, import): letters,
    digits, '_' and '-' only, so a name can never reach outside ``classifiers/dl/`` or ``results/``."""
    if not isinstance(name, str):
        raise ConfigError(f"a classifier name must be text, not {type(name).__name__} ({str(name)[:40]})")
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"classifier name {name[:120]!r} may use only letters, digits, '_' and '-' (1-100 "
                          "characters, no spaces, dots or path separators)")
    return name
