"""A whole training run: project images and annotations in, a classifier folder out (or nothing at all)."""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..classifiers import store
from ..classifiers.metadata import (
    MAX_CLASSES,
    PALETTE,
    ClassifierMetadata,
    ClassInfo,
    Results,
    WeightProvenanceInfo,
    software_versions,
)
from ..config import TrainingConfig
from ..data.base import ImageSource, LabelShape, Project, ProjectImage, at_plane, by_plane, select_images
from ..data.patches import DEFAULT_STROKE_PX, UNLABELLED, check_tile_fits, extract_patches, label_counts, split_tiles
from ..data.preprocessing import Preprocessing, dataset_stats, image_stats, resolve_channels, sample_pixels
from ..errors import ConfigError, DataError
from ..runtime.events import CancelToken, Emitter, Listener
from . import distributed
from .method import MethodChoice, choose_method

if TYPE_CHECKING:
    from ..data.patches import PatchCache
    from .trainer import FitResult


@dataclass
class TrainingData:
    """The images chosen for training, opened, with their classified annotations."""

    images: list[ProjectImage]
    sources: list[ImageSource]
    shapes: list[list[LabelShape]]
    classes: list[str]
    colors: dict[str, tuple[int, int, int]]


def gather_training_data(
    project: Project, image_names: Sequence[str] | None, cfg: TrainingConfig, match_classes: bool = False
) -> TrainingData:
    """Open the images that carry classified annotations and settle the class list. With ``match_classes`` (settings
    loaded from another classifier), the listed classes that these images lack are left out instead of refused."""
    chosen, sources, shapes = [], [], []
    try:
        for image in select_images(project, image_names):
            labelled = [s for s in image.annotations() if s.class_name is not None]
            if not labelled:
                if image_names:
                    raise DataError(f"image '{image.name}' has no classified annotations; classify them or leave "
                                    "it out")
                continue
            # One entry per plane (z, t) that carries labels: its annotations train against its own pixels.
            source = image.open()
            for n, (plane, group) in enumerate(by_plane(labelled)):
                try:
                    view = at_plane(source, plane, image.name, owns=n == 0)
                except BaseException:
                    if n == 0:
                        source.close()  # type: ignore[attr-defined]
                    raise
                chosen.append(image)
                sources.append(view)
                shapes.append(group)
        if not chosen:
            raise DataError(
                f"no image in {project.root} has classified annotations; draw annotations and set their class "
                "(unclassified annotations are not labels)"
            )
        found = sorted({s.class_name for per in shapes for s in per if s.class_name})
        if cfg.classes is not None:
            missing = [c for c in cfg.classes if c not in found]
            if missing and not match_classes:
                raise ConfigError(f"classes {missing} have no annotations in the chosen images; found: {found}")
            classes = [c for c in cfg.classes if c in found]
        else:
            classes = found
        if len(classes) < 2:
            raise DataError(f"at least two annotated classes are needed to train; found only {classes}")
        if len(classes) > MAX_CLASSES:
            raise ConfigError(f"{len(classes)} classes; at most {MAX_CLASSES} can be trained (label value "
                              f"{UNLABELLED} means unlabelled): merge classes or list the ones to train (classes=...)")
        unknown = [c for c in cfg.class_weights if c not in classes]
        if unknown:
            raise ConfigError(f"class_weights names classes {unknown} that are not trained; classes: {classes}")
        colors = dict(project.class_colors())
        for per in shapes:
            for s in per:
                if s.class_name and s.color and s.class_name not in colors:
                    colors[s.class_name] = tuple(s.color)  # type: ignore[assignment]
        for i, c in enumerate(classes):
            colors.setdefault(c, PALETTE[i % len(PALETTE)])
    except BaseException:
        for src in sources:
            src.close()
        raise
    return TrainingData(chosen, sources, shapes, classes, colors)


def _shared_fields(name: str, cfg: TrainingConfig, data: TrainingData, pre: Preprocessing, names: list[str],
                   emit: Emitter) -> dict[str, Any]:
    """The metadata fields a U-Net and a features classifier fill alike."""
    return dict(
        name=name,
        description=cfg.description,
        input_channels=pre.channel_names * (2 if cfg.context_scale > 1 else 1),
        classes=[ClassInfo(index=i, name=c, color=data.colors[c]) for i, c in enumerate(data.classes)],
        tile_size=cfg.tile_size,
        downsample=cfg.downsample,
        context_scale=cfg.context_scale,
        pixel_size_um=_pixel_size(data.sources, cfg.downsample, emit),
        preprocessing=pre,
        training=cfg,
        images=names,
    )


def _pixel_size(sources: Sequence[ImageSource], downsample: float, emit: Emitter) -> float | None:
    sizes = [s.pixel_size_um for s in sources]
    if any(v is None for v in sizes):
        return None
    lo, hi = min(sizes), max(sizes)  # type: ignore[type-var]
    if hi > lo * 1.1:
        emit.log(f"the training images have different pixel sizes ({lo:.4g}-{hi:.4g} µm)", level="warning")
    return float(np.median(sizes)) * downsample  # type: ignore[arg-type]


def _write_report(folder: Path, meta: ClassifierMetadata, result: FitResult, cache: PatchCache,
                  val: Sequence[int], names: Sequence[str], emit: Emitter) -> None:
    """``report.html`` with the best model's predictions on a few validation tiles; a failure only warns, since
    the classifier itself is complete."""
    from ..report.page import pick_sample_tiles, predict_samples, write_report

    try:
        tiles = pick_sample_tiles(cache.masks, val, len(meta.classes))
        captions = [f"{names[cache.tiles[i].image]} at ({cache.tiles[i].x}, {cache.tiles[i].y})" for i in tiles]
        write_report(folder, meta, result.history,
                     predict_samples(result.model, cache.images, cache.masks, tiles, captions))
    except Exception as err:  # noqa: BLE001
        emit.log(f"the training report ({store.REPORT}) could not be written: {err}", level="warning")


def train_classifier(
    project: Project,
    name: str,
    cfg: TrainingConfig,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
    listeners: Iterable[Listener] = (),
    cancel: CancelToken | None = None,
    match_classes: bool = False,
    init_weights_from: str | None = None,
) -> store.ClassifierEntry:
    """Train a classifier on the project's annotations and save it to ``classifiers/dl/<name>/``; ``match_classes``
    keeps, of the classes listed in the settings, those the images have (for settings taken from another model);
    ``init_weights_from`` names a classifier of the project whose trained weights the model starts from."""
    emit = Emitter(listeners if distributed.is_main() else ())  # under DDP, rank 0 alone reports and saves
    cancel = cancel or CancelToken()
    store.check_free(project.root, name, overwrite)
    if init_weights_from:
        from .init_weights import check_start_classifier

        check_start_classifier(project.root, init_weights_from, cfg)
    elif cfg.pretrained and cfg.method == "unet":
        from ..models.pretrained import ensure_available

        ensure_available(cfg.backbone)  # before any tile is read: missing weights are one line at once
    # The name is held for the whole run: a second run with the same name stops at once with a one-line error.
    with distributed.main_only(store.name_lock(project.root, name)):
        emit("stage", stage="reading", message="reading images and annotations")
        data = gather_training_data(project, image_names, cfg, match_classes)
        try:
            cfg, choice = resolve_method(cfg, data, emit, init_weights_from)
            cfg, pre, cache = _extract(data, cfg, emit, cancel)
        finally:
            for src in data.sources:
                src.close()
        names = [im.name for im in data.images]
        return _train_and_save(project, name, cfg, data, names, pre, cache, overwrite, emit, cancel,
                               init_weights_from, choice)


def resolve_method(cfg: TrainingConfig, data: TrainingData, emit: Emitter, init_weights_from: str | None = None
                   ) -> tuple[TrainingConfig, MethodChoice]:
    """The settings with ``method`` as trained (``auto`` decided from the labels) and the choice, said in one log
    line (its event also carries ``method`` and ``method_setting``)."""
    choice = choose_method(cfg, data.shapes, data.classes, init_weights_from, distributed.is_distributed())
    emit("log", level="info", message=choice.line(), method=choice.method, method_setting=choice.setting)
    if cfg.method == choice.method:
        return cfg, choice
    if choice.method == "unet" and cfg.pretrained and not init_weights_from:
        from ..models.pretrained import ensure_available

        ensure_available(cfg.backbone)  # before any tile is read
    return cfg.model_copy(update={"method": choice.method}), choice


def _extract(data: TrainingData, cfg: TrainingConfig, emit: Emitter, cancel: CancelToken) -> tuple[
        TrainingConfig, Preprocessing, PatchCache]:
    """Check channels and tile size, compute normalisation statistics and read every training tile once."""
    if cfg.classes is not None and data.classes != list(cfg.classes):
        emit.log(f"classes matched by name: training {data.classes}; not in these images: "
                 f"{[c for c in cfg.classes if c not in data.classes]}", level="warning")
    cfg = cfg.model_copy(update={"classes": data.classes}) if cfg.classes is not None else cfg
    names = [im.name for im in data.images]
    channel_names = list(data.sources[0].channel_names)
    channels = resolve_channels(cfg.channels, channel_names, names[0])
    selected = [channel_names[c] for c in channels]
    # Indices chosen explicitly say "these planes, whatever they are called"; otherwise channels are found by name
    # in each image, wherever they sit (as apply finds them), so an RGB image and a fluorescence image with as many
    # channels are never mixed silently.
    by_index = cfg.channels is not None and all(isinstance(c, int) for c in cfg.channels)
    per_image = [channels]
    for src, image in zip(data.sources[1:], data.images[1:]):
        if by_index:
            per_image.append(resolve_channels(cfg.channels, src.channel_names, image.name))
            continue
        if cfg.channels is None and sorted(src.channel_names) != sorted(channel_names):
            raise DataError(
                f"image '{image.name}' has channels {list(src.channel_names)}, unlike '{names[0]}' "
                f"{channel_names}; train on images with the same channels (--image), or name the channels to train "
                "(--set channels=...)"
            )
        per_image.append(resolve_channels(selected, src.channel_names, image.name))
    if cfg.method == "features":
        # The features classifier has no tile size of its own: tiles only bound memory, so they shrink to fit.
        side = min(min(s.width, s.height) for s in data.sources) / cfg.downsample
        fit = max(64, 32 * int(side // 32))
        if fit < cfg.tile_size:
            cfg = cfg.model_copy(update={"tile_size": fit})
    elif "tile_size" not in cfg.model_fields_set:
        # Left at its default, the tile shrinks until the largest image holds at least 2 × 2 tiles (small images
        # such as a 512 px field of view would otherwise give a single tile and no split).
        side = max(min(s.width, s.height) for s in data.sources) / cfg.downsample
        fit = max(64, 32 * int(side / 2 // 32))
        if fit < cfg.tile_size:
            emit.log(f"tile_size {cfg.tile_size} → {fit}: the images are small (set tile_size to choose)")
            cfg = cfg.model_copy(update={"tile_size": fit})
    check_tile_fits(data.sources, names, cfg.tile_size, cfg.downsample)

    pre = Preprocessing(channels=channels, channel_names=[channel_names[c] for c in channels],
                        normalization=cfg.normalization, context_scale=cfg.context_scale)
    if cfg.pretrained and cfg.method == "unet":
        from ..models.pretrained import input_normalisation

        # The encoder's pretrained weights expect their own input statistics; every tile (training, validation,
        # apply) passes through the same data.preprocessing.normalize, which applies them.
        pre.input_mean, pre.input_std = input_normalisation(cfg.backbone, len(channels))
    emit("stage", stage="statistics", message="computing normalisation statistics")
    samples = [sample_pixels(src, idx) for src, idx in zip(data.sources, per_image)]
    pre.dataset_stats = dataset_stats(samples, cfg.normalization)
    stats = [image_stats(src, pre, pixels) if cfg.normalization.image_level else pre.dataset_stats
             for src, pixels in zip(data.sources, samples)]

    stroke = cfg.line_stroke_width or DEFAULT_STROKE_PX
    class_index = {c: i for i, c in enumerate(data.classes)}

    def on_extract(done: int, total: int) -> None:
        cancel.check()
        emit("extract", done=done, total=total)

    emit("stage", stage="patches", message="extracting training tiles")
    cache = extract_patches(data.sources, data.shapes, stats, pre, class_index, cfg.tile_size, cfg.downsample,
                            cfg.tile_overlap, stroke, progress=on_extract, channels_per_image=per_image)
    return cfg, pre, cache


def check_split_classes(classes: Sequence[str], train_counts: np.ndarray, val_counts: np.ndarray,
                        emit: Emitter) -> None:
    """After the final split (training tiles that overlap validation already dropped): refuse to train when a class
    has no training pixels; warn, by name, about a class with no validation pixels."""
    none_train = [c for c, n in zip(classes, train_counts) if n == 0]
    if none_train:
        raise DataError(
            f"class {', '.join(repr(c) for c in none_train)} has no training pixels once the validation area is set "
            "aside (its annotations all lie in or beside it): annotate it in another place or image, or lower "
            "validation_split")
    none_val = [c for c, n in zip(classes, val_counts) if n == 0]
    if none_val:
        emit.log(f"class {', '.join(repr(c) for c in none_val)} has no labelled pixels in validation, so its IoU "
                 "cannot be measured: annotate it in more places", level="warning")


def _train_and_save(project: Project, name: str, cfg: TrainingConfig, data: TrainingData, names: list[str],
                    pre: Preprocessing, cache: PatchCache, overwrite: bool, emit: Emitter,
                    cancel: CancelToken, init_weights_from: str | None,
                    choice: MethodChoice) -> store.ClassifierEntry:
    """Split the tiles, build and train the model (``cfg.method`` as ``resolve_method`` settled it), and save the
    classifier folder."""
    if cfg.method == "features":
        from .features_save import train_features_and_save

        return train_features_and_save(project, name, cfg, data, pre, cache, overwrite, emit, cancel, choice,
                                       _shared_fields(name, cfg, data, pre, names, emit), names)
    from ..models.factory import create_model, freeze_blocks, resolve_freeze
    from ..models.onnx import export_onnx
    from .baseline import tile_baseline, unet_agreement
    from .losses import class_weights_from_counts
    from .trainer import fit

    if len(cache) < 2:
        raise DataError(f"only {len(cache)} labelled tile(s) at tile_size {cfg.tile_size}; annotate more, or use a "
                        "smaller tile_size or a larger tile_overlap")
    n_classes = len(data.classes)
    tile_counts = np.stack([label_counts(m, n_classes) for m in cache.masks])
    split = split_tiles(cache.tiles, tile_counts, names, cfg.validation_split, cfg.tile_size, cfg.downsample,
                        cfg.context_scale, cfg.seed)
    for w in split.warnings:
        emit.log(w, level="warning")
    train_counts = tile_counts[split.train].sum(0)
    val_counts = tile_counts[split.val].sum(0)
    check_split_classes(data.classes, train_counts, val_counts, emit)
    emit.log(f"{len(split.train)} training and {len(split.val)} validation tiles ({split.method} split)")

    multipliers = [cfg.class_weights.get(c, 1.0) for c in data.classes]
    weights = class_weights_from_counts(train_counts.tolist(), multipliers)
    forest_maps: dict[int, np.ndarray] = {}
    baseline = tile_baseline(cache, split, data.classes, cfg.seed, emit, forest_maps)
    if cfg.pseudo_labels:
        from .features import pseudo_label_masks

        cache.masks, filled = pseudo_label_masks(cache, split.train, n_classes, cfg, cancel)
        emit.log(f"pseudo-labels: {filled} unlabelled pixels of the training tiles added where the features "
                 "classifier is confident")

    torch.manual_seed(cfg.seed)
    model, provenance = create_model(cfg.backbone, pre.n_inputs, n_classes, cfg.pretrained and not init_weights_from)
    weights_info = WeightProvenanceInfo(**provenance.to_dict()) if provenance else None
    if init_weights_from:
        from .init_weights import start_from_classifier

        weights_info = start_from_classifier(project.root, init_weights_from, model, cfg, pre.n_inputs,
                                             data.classes, emit)
    frozen = resolve_freeze(cfg.freeze, len(split.train), cfg.pretrained)
    freeze_blocks(model, frozen)
    if frozen:
        emit.log(f"frozen encoder blocks: {', '.join(frozen)}")

    result = fit(model, cache, split.train, split.val, n_classes, cfg, weights, frozen, emit, cancel, forest_maps)
    if result.stopped_by_user:
        # The stop asked for is done: the best epoch so far is saved (a second Ctrl-C still aborts the save).
        cancel = CancelToken()
    label_free, estimate, warnings = unet_agreement(result, len(forest_maps), data.classes, emit)

    meta = ClassifierMetadata(
        **_shared_fields(name, cfg, data, pre, names, emit),
        architecture="unet",
        method_choice=choice.record(),
        backbone=cfg.backbone,
        split={**split.record(), **({"baseline": baseline} if baseline else {}), **label_free,
               "warnings": [*split.warnings, *warnings]},
        labelled_pixels={"train": dict(zip(data.classes, map(int, train_counts))),
                         "val": dict(zip(data.classes, map(int, val_counts)))},
        class_weights=dict(zip(data.classes, map(float, weights))),
        frozen_blocks=list(frozen),
        results=Results(
            best_epoch=result.best_epoch,
            epochs_run=len(result.history),
            stopped_early=result.stopped_early,
            stopped_by_user=result.stopped_by_user,
            mean_iou=estimate,
            per_class_iou=dict(zip(data.classes, result.per_class_iou)),
            pixel_accuracy=result.pixel_accuracy,
            train_loss=result.history[result.best_epoch - 1]["train_loss"],
            val_loss=result.history[result.best_epoch - 1]["val_loss"],
            confusion=result.confusion,
            seconds=result.seconds,
            device=result.device,
            precision=result.precision,
        ),
        weights=weights_info,
        software=software_versions(),
    )
    cancel.check()
    if not distributed.is_main():
        return None  # type: ignore[return-value]
    emit("stage", stage="saving", message="saving the classifier")
    with store.staging_folder(project.root, name, overwrite) as tmp:
        try:
            torch.save(result.model.state_dict(), tmp / store.WEIGHTS)
        except RuntimeError as err:  # torch reports a failed write (a full disk) as a RuntimeError
            full = "unexpected pos" in str(err) or "write" in str(err)
            raise OSError(errno.ENOSPC, f"No space left on device (writing {store.WEIGHTS})") if full else OSError(
                errno.EIO, f"writing {store.WEIGHTS} failed ({str(err).splitlines()[0][:120]})") from None
        export_onnx(result.model, tmp / store.ONNX, pre.n_inputs, n_classes)
        store.write_json(tmp / store.HISTORY, result.history)
        meta.write(tmp / store.METADATA)
        _write_report(tmp, meta, result, cache, split.val, names, emit)
        cancel.check()
    entry = store.load_classifier(project.root, name)
    emit("done", name=name, path=str(entry.path), mean_iou=estimate, best_epoch=result.best_epoch,
         stopped_by_user=result.stopped_by_user,
         message=f"saved '{name}' to {entry.path} (validation mean IoU {estimate:.3f}"
                 + (f"; stopped by the user after epoch {len(result.history)}, best epoch {result.best_epoch})"
                    if result.stopped_by_user else ")"))
    return entry
