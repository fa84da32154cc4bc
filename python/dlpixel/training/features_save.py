"""Saving a features classifier (``method: features``): held-out annotations, the fit, the metadata, the ONNX
export and the report, written into the classifier folder at once or not at all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..classifiers import store
from ..classifiers.metadata import ClassifierMetadata, Results, software_versions
from ..config import TrainingConfig
from ..data.base import Project
from ..data.patches import DEFAULT_STROKE_PX
from ..data.preprocessing import Preprocessing
from ..errors import DataError
from ..runtime.events import CancelToken, Emitter
from .method import MethodChoice

if TYPE_CHECKING:
    from ..data.patches import PatchCache
    from .run import TrainingData


def train_features_and_save(project: Project, name: str, cfg: TrainingConfig, data: TrainingData,
                            pre: Preprocessing, cache: PatchCache, overwrite: bool, emit: Emitter,
                            cancel: CancelToken, choice: MethodChoice, shared: dict[str, Any],
                            names: Sequence[str]) -> store.ClassifierEntry:
    """``method: features``: hold out whole annotations, fit the features classifier and the random-forest
    baseline on the rest, and save the classifier folder (``shared``: the metadata fields every method fills).
    """
    from ..models.onnx import export_onnx
    from .features import fit_features

    if not len(cache):
        raise DataError("no labelled pixels were found under the classified annotations")
    stroke = cfg.line_stroke_width or DEFAULT_STROKE_PX
    result = fit_features(cache, data.shapes, data.classes, cfg, stroke, emit, cancel)
    validation = result.validation
    base = validation.get("baseline") or {}
    emit.log(f"held-out annotations: mean IoU {validation['held_out_mean_iou']} (95% interval "
             f"{validation['held_out_ci95'][0]}-{validation['held_out_ci95'][1]}); label-free expected IoU over the "
             f"annotated images {validation['expected_mean_iou']}; random-forest baseline on the same split "
             f"{base.get('held_out_mean_iou')}")
    meta = ClassifierMetadata(
        **shared,
        architecture="features",
        method_choice=choice.record(),
        backbone=None,
        split=validation,
        labelled_pixels={"train": dict(zip(data.classes, map(int, result.train_counts))),  # type: ignore[arg-type]
                         "val": dict(zip(data.classes, map(int, result.val_counts)))},  # type: ignore[arg-type]
        class_weights=dict(zip(data.classes, map(float, result.class_weights))),  # type: ignore[arg-type]
        results=Results(
            best_epoch=1, epochs_run=1, stopped_early=False, mean_iou=result.mean_iou,
            per_class_iou=dict(zip(data.classes, result.per_class_iou)), pixel_accuracy=result.pixel_accuracy,
            train_loss=result.train_loss, val_loss=result.val_loss, confusion=result.confusion,
            seconds=result.seconds, device="cpu", precision="float32",
        ),
        software=software_versions(),
    )
    cancel.check()
    emit("stage", stage="saving", message="saving the classifier")
    with store.staging_folder(project.root, name, overwrite) as tmp:
        torch.save(result.model.state_dict(), tmp / store.WEIGHTS)
        export_onnx(result.model, tmp / store.ONNX, pre.n_inputs, len(data.classes))
        store.write_json(tmp / store.HISTORY, result.history)
        meta.write(tmp / store.METADATA)
        write_features_report(tmp, meta, result, cache, names, emit)
        cancel.check()
    entry = store.load_classifier(project.root, name)
    emit("done", name=name, path=str(entry.path), mean_iou=result.mean_iou, best_epoch=1, stopped_by_user=False,
         message=f"saved '{name}' to {entry.path} (estimated mean IoU {result.mean_iou:.3f})")
    return entry


def write_features_report(folder: Path, meta: ClassifierMetadata, result, cache: PatchCache,
                           names: Sequence[str], emit: Emitter) -> None:
    """``report.html`` of a features classifier, with its predictions on tiles that hold held-out annotations."""
    from ..report.page import pick_sample_tiles, predict_samples, write_report

    try:
        tiles = pick_sample_tiles(cache.masks, result.val_tiles, len(meta.classes))
        captions = [f"{names[cache.tiles[i].image]} at ({cache.tiles[i].x}, {cache.tiles[i].y})" for i in tiles]
        inputs = np.stack([cache.input(i) for i in tiles]) if tiles else np.zeros((0,))
        samples = predict_samples(result.model, inputs, cache.masks[list(tiles)], list(range(len(tiles))), captions)
        write_report(folder, meta, result.history, samples)
    except Exception as err:  # noqa: BLE001
        emit.log(f"the training report ({store.REPORT}) could not be written: {err}", level="warning")
