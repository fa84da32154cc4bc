"""What a training history suggests: the loss-chart patterns of the best-practices guide, each with what to change.

Patterns: validation loss rising while training loss falls (overfitting), both losses flat early at a poor IoU
(underfitting), a loss swinging up and down (learning rate too high), a loss that hardly moves (learning rate too
low, or a data problem), and a class the model gets wrong. A healthy history gives no finding.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..classifiers.metadata import ClassifierMetadata
from ..config import TrainingConfig

MIN_EPOCHS = 4
"""Fewer epochs than this say nothing about the shape of the curves."""
RISE = 0.15
"""Validation loss this much above its minimum, over the last epochs, counts as rising."""
SWING = 0.15
"""A rise from one epoch to the next larger than this share of the loss's whole range counts as a sharp rise."""
MIN_RISES = 3
"""Sharp rises needed, with frequent turnarounds, to call the loss oscillating."""
REVERSALS = 0.5
"""Share of epochs where the loss turns around (down to up or up to down) that counts as oscillating."""
SLOW_DROP = 0.10
"""Training loss that ends less than this much below its first epoch has barely decreased."""
PLATEAU = 0.05
"""Improvement over the second half of the run below this share counts as a plateau."""
UNDERFIT_IOU = 0.6
WEAK_CLASS_IOU = 0.5
WEAK_CLASS_GAP = 0.3
"""A class this far below the best class counts as weak even above ``WEAK_CLASS_IOU``."""

SMALLER_BACKBONE = {"resnet50": "resnet34", "resnet34": "resnet18", "efficientnet-b2": "efficientnet-b0",
                    "efficientnet-b1": "efficientnet-b0"}
LARGER_BACKBONE = {"resnet18": "resnet34", "resnet34": "resnet50", "mobilenet_v2": "resnet34",
                   "efficientnet-lite0": "efficientnet-b0", "efficientnet-b0": "efficientnet-b2"}


@dataclass(frozen=True)
class Finding:
    """One problem the history shows: a short name, the numbers that show it, and what to try."""

    kind: str
    """``overfitting``, ``underfitting``, ``oscillation``, ``slow_learning``, ``weak_class`` or ``no_validation``."""
    title: str
    evidence: str
    advice: tuple[str, ...]


def _column(history: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([math.nan if row.get(key) is None else float(row[key]) for row in history], np.float64)


def _lr(cfg: TrainingConfig) -> str:
    return f"{cfg.learning_rate:g}"


def _overfitting(train: np.ndarray, val: np.ndarray, cfg: TrainingConfig, frozen: Sequence[str]) -> Finding | None:
    if np.isnan(val).all():
        return None
    m = int(np.nanargmin(val))
    if len(val) - 1 - m < 3 or not val[m] > 0:
        return None
    val_end, train_end = float(np.nanmean(val[-3:])), float(np.nanmean(train[-3:]))
    rise = val_end / val[m] - 1
    if rise < RISE or not train_end < train[m] * 0.98:
        return None
    advice = ["Give the model more examples: annotate more regions, or train on more images."]
    if len(frozen) < 4:
        now = f"{len(frozen)} encoder blocks are frozen" if frozen else "no encoder block is frozen"
        advice.append(f"Freeze more of the encoder ({now}): --set freeze=medium or freeze=small "
                      "(small freezes the most).")
    off = [k for k in ("color_jitter", "elastic") if not getattr(cfg.augment, k)]
    if off:
        advice.append("Turn on more augmentation: " + ", ".join(f"--set augment.{k}=true" for k in off) + ".")
    smaller = SMALLER_BACKBONE.get(cfg.backbone)
    advice.append(f"Lower learning_rate (now {_lr(cfg)})"
                  + (f" or use a smaller backbone ({smaller} instead of {cfg.backbone})." if smaller else "."))
    advice.append(f"A larger validation_split (now {cfg.validation_split:g}) shows the divergence sooner.")
    return Finding(
        "overfitting", "Overfitting: validation loss rises while training loss falls",
        f"Validation loss was lowest at epoch {m + 1} ({val[m]:.4g}) and averaged {val_end:.4g} over the last "
        f"3 epochs ({rise:+.0%}), while training loss fell from {train[m]:.4g} to {train_end:.4g}. The model is "
        "learning the training tiles rather than what generalises.",
        tuple(advice),
    )


def _jumps(loss: np.ndarray) -> tuple[float, int, float]:
    """Share of epochs where the loss turns around, how often it rose by more than ``SWING`` of its range, and
    the largest rise."""
    d = np.diff(loss)
    d = d[np.isfinite(d)]
    signs = np.sign(d[d != 0])
    if len(signs) < 3:
        return 0.0, 0, 0.0
    reversals = float(np.mean(signs[1:] != signs[:-1]))
    spread = float(np.nanmax(loss) - np.nanmin(loss))
    return reversals, int((d > SWING * spread).sum()), float(d.max())


def _oscillation(train: np.ndarray, val: np.ndarray, cfg: TrainingConfig) -> Finding | None:
    wild = []
    for name, loss in (("validation", val), ("training", train)):
        reversals, rises, largest = _jumps(loss)
        if reversals >= REVERSALS and rises >= MIN_RISES:
            wild.append(f"{name} loss rose sharply {rises} times (by up to {largest:.3g}) and turned around at "
                        f"{reversals:.0%} of epochs")
    if not wild:
        return None
    advice = [f"Lower learning_rate (now {_lr(cfg)}; try {cfg.learning_rate / 10:g})."]
    if cfg.scheduler != "one_cycle":
        advice.append(f"Use the one_cycle scheduler (now {cfg.scheduler}): it warms up and then anneals the rate.")
    if cfg.batch_size > 2:
        advice.append(f"Try a smaller batch_size (now {cfg.batch_size}).")
    advice.append("Look for mislabelled regions: an annotation of the wrong class makes the loss jump.")
    return Finding("oscillation", "Unstable training: the loss swings up and down",
                   "The " + "; the ".join(wild) + ". The learning rate is probably too high.", tuple(advice))


def _slow(train: np.ndarray, mean_iou: np.ndarray, cfg: TrainingConfig) -> Finding | None:
    first, late = train[0], float(np.nanmin(train[-3:]))
    best_iou = float(np.nanmax(mean_iou)) if not np.isnan(mean_iou).all() else 0.0
    if not first > 0 or 1 - late / first >= SLOW_DROP or best_iou >= 0.8:
        return None
    return Finding(
        "slow_learning", "The loss barely decreases",
        f"Training loss went from {first:.4g} in epoch 1 to {late:.4g} by epoch {len(train)} "
        f"({1 - late / first:.0%} lower); the best mean IoU was {best_iou:.3f}.",
        (f"Raise learning_rate (now {_lr(cfg)}; try {cfg.learning_rate * 3:g} to {cfg.learning_rate * 10:g}).",
         "Check the annotations: each class drawn on what it names, and consistently so across regions.",
         "Check the input: the channels and normalization the model sees (the validation tiles below show it)."),
    )


def _underfitting(train: np.ndarray, val: np.ndarray, mean_iou: np.ndarray, cfg: TrainingConfig,
                  frozen: Sequence[str]) -> Finding | None:
    if len(train) < 6 or np.isnan(mean_iou).all():
        return None
    half = len(train) // 2
    gains = []
    for loss in (train, val):
        before, after = float(np.nanmin(loss[:half])), float(np.nanmin(loss[half:]))
        gains.append((before - after) / before if before > 0 else 0.0)
    best_iou = float(np.nanmax(mean_iou))
    if max(gains) >= PLATEAU or best_iou >= UNDERFIT_IOU:
        return None
    larger = LARGER_BACKBONE.get(cfg.backbone)
    advice = [f"Train longer (epochs is {cfg.epochs})"
              + (f" or with a larger backbone ({larger} instead of {cfg.backbone})." if larger else ".")]
    if frozen:
        advice.append(f"Unfreeze encoder blocks ({', '.join(frozen)} frozen): --set freeze=large (stem only) "
                      "or freeze=none.")
    if cfg.tile_overlap > 0:
        advice.append(f"Lower tile_overlap (now {cfg.tile_overlap:g}%) if many tiles are near copies.")
    advice.append("Check the annotations: classes that overlap or are drawn inconsistently cannot be learned.")
    return Finding(
        "underfitting", "Underfitting: both losses stopped improving early at a poor result",
        f"Over the second half of the run (epochs {half + 1}-{len(train)}) training and validation loss improved "
        f"by at most {max(gains):.0%}, and the best validation mean IoU was {best_iou:.3f}.",
        tuple(advice),
    )


def _class_findings(meta: ClassifierMetadata, cfg: TrainingConfig) -> list[Finding]:
    r = meta.results
    if r is None:
        return []
    names = meta.class_names
    findings = []
    known = {k: v for k, v in r.per_class_iou.items() if v is not None}
    for name, iou in r.per_class_iou.items():
        if iou is None:
            findings.append(Finding(
                "no_validation", f"'{name}' has no validation pixels",
                f"None of the validation tiles holds a labelled pixel of '{name}', so how well it is recognised "
                "is unknown.",
                (f"Annotate '{name}' in more places (or on more images), so that some of it falls in validation.",
                 f"Raise validation_split (now {cfg.validation_split:g})."),
            ))
            continue
        best_other = max((v for k, v in known.items() if k != name), default=iou)
        if iou >= WEAK_CLASS_IOU and iou >= best_other - WEAK_CLASS_GAP:
            continue
        evidence = [f"IoU {iou:.3f} on validation pixels (mean over classes {r.mean_iou:.3f})."]
        confused = None
        if r.confusion and name in names:
            i = names.index(name)
            row = np.array(r.confusion[i], np.float64)
            wrong = row.copy()
            wrong[i] = 0
            if row.sum() > 0 and wrong.sum() > 0:
                j = int(wrong.argmax())
                confused = names[j]
                evidence.append(f"{wrong[j] / row.sum():.0%} of its validation pixels were predicted as "
                                f"'{confused}'.")
        train_px = meta.labelled_pixels.get("train", {})
        total = sum(train_px.values())
        if total and name in train_px:
            evidence.append(f"It has {train_px[name]:,} labelled training pixels ({train_px[name] / total:.0%} "
                            "of all).")
        weight = cfg.class_weights.get(name, 1.0)
        findings.append(Finding(
            "weak_class", f"'{name}' is recognised poorly", " ".join(evidence),
            (f"Raise its weight: --set {shlex.quote(f'class_weights.{name}={weight * 2:g}')} (now {weight:g}).",
             f"Annotate more of '{name}'" + (f", especially where it borders '{confused}'." if confused else "."),
             f"Check that '{name}' looks consistent; if it covers things that look different, split it."),
        ))
    return findings


def diagnose(history: Sequence[dict[str, Any]], meta: ClassifierMetadata) -> list[Finding]:
    """Apply the loss-chart diagnosis to a training history and the final results; empty when nothing is wrong."""
    cfg = meta.training or TrainingConfig()
    findings: list[Finding] = []
    if len(history) >= MIN_EPOCHS:
        train, val = _column(history, "train_loss"), _column(history, "val_loss")
        mean_iou = _column(history, "mean_iou")
        slow = _slow(train, mean_iou, cfg)
        for finding in (_overfitting(train, val, cfg, meta.frozen_blocks), _oscillation(train, val, cfg), slow,
                        None if slow else _underfitting(train, val, mean_iou, cfg, meta.frozen_blocks)):
            if finding is not None:
                findings.append(finding)
    return findings + _class_findings(meta, cfg)
