"""Wrap an external ONNX segmentation model into a classifier folder that ``apply`` uses like any other
("Custom ONNX"): NCHW float input, one output channel per class (logits or probabilities)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import NormalizationConfig, NormStrategy, validate_name
from ..data.preprocessing import Preprocessing, fixed_stats
from ..errors import ClassifierError, ConfigError
from . import store
from .metadata import MAX_CLASSES, PALETTE, ClassifierMetadata, ClassInfo, WeightProvenanceInfo, software_versions


def check_onnx(path: Path, n_channels: int, n_classes: int, tile_size: int) -> None:
    """Refuse an ONNX file whose input or output does not fit the declared channels, classes and tile size."""
    import onnx

    from ..models.onnx import OnnxSession

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises several unrelated types for unreadable files
        raise ClassifierError(f"{path} is not a readable ONNX model: {err}") from None
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise ClassifierError(f"{path} has {len(inputs)} inputs; a segmentation model takes one NCHW image batch")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ClassifierError(f"{path}: input '{inputs[0].name}' has {len(dims)} dimensions; expected NCHW (4)")
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if declared[1] is not None and declared[1] != n_channels:
        raise ClassifierError(
            f"{path}: input '{inputs[0].name}' takes {declared[1]} channels, but {n_channels} channel(s) were given"
        )
    for axis, name in ((2, "height"), (3, "width")):
        if declared[axis] is not None and declared[axis] != tile_size:
            raise ClassifierError(f"{path}: input {name} is fixed at {declared[axis]}; "
                                  f"use --tile-size {declared[axis]}")
    try:
        out = OnnxSession(path, providers=["CPUExecutionProvider"]).run(
            np.zeros((1, n_channels, tile_size, tile_size), np.float32))
    except Exception as err:  # onnxruntime reports shape problems as generic runtime errors
        raise ClassifierError(f"{path} failed on a {n_channels}×{tile_size}×{tile_size} input: {err}") from None
    if out.ndim != 4 or out.shape[1] != n_classes or out.shape[2:] != (tile_size, tile_size):
        raise ClassifierError(
            f"{path} returns shape {tuple(out.shape)}; expected (N, {n_classes}, {tile_size}, {tile_size}) "
            f"for {n_classes} classes"
        )


def import_onnx(
    project_root: Path,
    name: str,
    onnx_path: Path,
    classes: list[str],
    channels: list[str],
    tile_size: int,
    downsample: float = 1.0,
    normalization: NormalizationConfig | None = None,
    outputs: Literal["logits", "probabilities"] = "logits",
    pixel_size_um: float | None = None,
    description: str = "",
    overwrite: bool = False,
) -> store.ClassifierEntry:
    """Check the ONNX model against the declared classes, channels and tile size, then save it as a classifier."""
    validate_name(name)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ClassifierError(f"ONNX file not found: {onnx_path}")
    if len(classes) < 2:
        raise ConfigError("an imported classifier needs at least two classes (--classes A,B)")
    if not channels:
        raise ConfigError("name the image channels the model takes, in order (--channels Red,Green,Blue)")
    if tile_size % 32 or not 32 <= tile_size <= 8192:
        raise ConfigError(f"tile size must be a multiple of 32 from 32 to 8192 (got {tile_size})")
    if not (downsample > 0 and downsample < 1e6):  # also refuses NaN
        raise ConfigError(f"--downsample must be a positive number (got {downsample})")
    if len(classes) > MAX_CLASSES:
        raise ConfigError(f"{len(classes)} classes; a classifier has at most {MAX_CLASSES}")
    check_onnx(onnx_path, len(channels), len(classes), tile_size)
    from ..models.pretrained import sha256_of

    norm = normalization or NormalizationConfig()
    fixed = None
    if not norm.image_level:
        # The same statistics for every image: an imported model has no training data to take them from, so only
        # a fixed range (the one the model was trained with) can give them.
        if norm.strategy != NormStrategy.fixed_range.value:
            raise ConfigError("an imported classifier has no training data for normalization.image_level=false: "
                              "set normalization.strategy=fixed_range with the min and max the model was trained "
                              "with, or normalization.image_level=true")
        fixed = fixed_stats(norm, len(channels))

    meta = ClassifierMetadata(
        name=name,
        description=description,
        architecture="custom_onnx",
        input_channels=channels,
        classes=[ClassInfo(index=i, name=c, color=PALETTE[i % len(PALETTE)]) for i, c in enumerate(classes)],
        tile_size=tile_size,
        downsample=downsample,
        pixel_size_um=pixel_size_um,
        preprocessing=Preprocessing(channels=list(range(len(channels))), channel_names=channels,
                                    normalization=norm, dataset_stats=fixed),
        output=outputs,
        weights=WeightProvenanceInfo(source=f"imported ONNX file {onnx_path.name}", sha256=sha256_of(onnx_path)),
        software=software_versions(),
    )
    with store.staging_folder(project_root, name, overwrite) as tmp:
        shutil.copyfile(onnx_path, tmp / store.ONNX)
        meta.write(tmp / store.METADATA)
    return store.load_classifier(project_root, name)
