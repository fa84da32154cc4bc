"""The classifier's ``metadata.json``: the single source of truth about a trained classifier (versioned)."""

from __future__ import annotations

import json
import platform
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import TrainingConfig
from ..data.preprocessing import Preprocessing
from ..errors import ClassifierError

SCHEMA_VERSION = 1

MAX_CLASSES = 254
"""Most classes a classifier can have: class maps and label masks are 8-bit and label value 255 means
"unlabelled"."""


# Colours for classes that come without one (ONNX imports, folder projects without colours).
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
]


class ClassInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    name: str
    color: tuple[int, int, int]


class Results(BaseModel):
    model_config = ConfigDict(extra="forbid")

    best_epoch: int
    epochs_run: int
    stopped_early: bool
    mean_iou: float
    stopped_by_user: bool = False
    """Training was stopped by the user (Ctrl-C, QuPath's Cancel) after ``epochs_run`` epochs; the best so far is
    kept."""
    per_class_iou: dict[str, float | None]
    """IoU per class on validation pixels; None for a class with no validation pixels."""
    pixel_accuracy: float
    train_loss: float
    val_loss: float
    confusion: list[list[int]] = Field(default_factory=list)
    """Validation pixel counts at the best epoch, rows = truth, columns = prediction."""
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "float32"


class WeightProvenanceInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: str
    url: str | None = None
    sha256: str | None = None
    licence: str | None = None


class ClassifierMetadata(BaseModel):
    """What a classifier is, how it was trained, and how to feed it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    description: str = ""
    created: str = Field(default_factory=lambda: datetime.now().astimezone().isoformat(timespec="seconds"))
    architecture: Literal["unet", "features", "custom_onnx"] = "unet"
    method_choice: dict[str, Any] = Field(default_factory=dict)
    """How the method was chosen: ``setting`` (``auto``, ``unet`` or ``features``), ``method`` (what was trained),
    ``reason`` (one line) and, for ``auto``, the ``labelled_pixels`` per class and the ``threshold`` of its rule.
    Empty for classifiers trained before ``method: auto`` existed and for imported ones."""
    backbone: str | None = None
    input_channels: list[str]
    """Names of the model's input channels in order (context channels are the same names again)."""
    classes: list[ClassInfo]
    tile_size: int
    downsample: float
    context_scale: int = 1
    pixel_size_um: float | None = None
    """Size of a pixel at the classifier's resolution (full-resolution size × downsample); None if uncalibrated."""
    preprocessing: Preprocessing
    output: Literal["logits", "probabilities"] = "logits"
    """What the model returns per class."""
    training: TrainingConfig | None = None
    """Every training setting, resolved (None for an imported ONNX model)."""
    images: list[str] = Field(default_factory=list)
    split: dict[str, Any] = Field(default_factory=dict)
    labelled_pixels: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Labelled pixels per class in ``train`` and ``val``."""
    class_weights: dict[str, float] = Field(default_factory=dict)
    frozen_blocks: list[str] = Field(default_factory=list)
    results: Results | None = None
    weights: WeightProvenanceInfo | None = None
    software: dict[str, str] = Field(default_factory=dict)

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[ClassInfo]) -> list[ClassInfo]:
        if not 2 <= len(value) <= MAX_CLASSES:
            raise ValueError(f"a classifier has 2 to {MAX_CLASSES} classes, not {len(value)}")
        if [c.index for c in value] != list(range(len(value))):
            raise ValueError("class indices must be 0, 1, 2, ... in order")
        return value

    @field_validator("tile_size")
    @classmethod
    def _tile_size(cls, value: int) -> int:
        if not 32 <= value <= 8192 or value % 32:
            raise ValueError(f"must be a multiple of 32 from 32 to 8192 (got {value})")
        return value

    @field_validator("downsample")
    @classmethod
    def _downsample(cls, value: float) -> float:
        if not (value > 0 and value < 1e6):
            raise ValueError(f"must be a positive number (got {value})")
        return value

    @field_validator("context_scale")
    @classmethod
    def _context_scale(cls, value: int) -> int:
        from ..config import MAX_CONTEXT_SCALE

        if not 1 <= value <= MAX_CONTEXT_SCALE:
            raise ValueError(f"must be 1 to {MAX_CONTEXT_SCALE} (got {value})")
        return value

    @field_validator("input_channels")
    @classmethod
    def _channels(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a classifier takes at least one channel")
        return value

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> ClassifierMetadata:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClassifierError(f"{path} is missing: this folder is not a dlpixel classifier") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ClassifierError(f"{path} is not valid JSON ({err}); restore it or delete the classifier") from None
        except RecursionError:
            raise ClassifierError(f"{path} is nested too deeply to be classifier metadata") from None
        except OSError as err:
            raise ClassifierError(f"cannot read {path} ({err.strerror or err})") from None
        if not isinstance(data, dict):
            raise ClassifierError(f"{path} must hold a JSON object; restore it or delete the classifier")
        data = migrate(data, path)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ClassifierError(f"{path}: {where}: {first['msg']}") from None


def migrate(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bring older metadata up to ``SCHEMA_VERSION``; refuse metadata from a newer dlpixel."""
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ClassifierError(f"{path}: schema_version must be a whole number, not {str(version)[:40]!r}")
    if version > SCHEMA_VERSION:
        raise ClassifierError(
            f"{path} was written by a newer dlpixel (schema {version}, this one reads up to {SCHEMA_VERSION}); "
            "upgrade dlpixel"
        )
    if version < 1:
        data = {**data, "schema_version": 1}
    return data


def software_versions() -> dict[str, str]:
    """Versions of the software that produced a classifier."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("dlpixel", "torch", "segmentation-models-pytorch", "timm", "onnx", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
