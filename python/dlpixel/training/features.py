"""The features tier: train ``models.features.FeaturesNet`` on the labelled pixels, validate on held-out objects.

Steps: hold out whole annotation objects (``training.objects``); compute the filter bank of every cached tile;
standardise the features of the training pixels and fit the linear head (class-weighted cross-entropy, AdamW,
full batch); shift its output bias so that it predicts the class prior of the annotated images rather than the
one its weighted loss implies (``correct_prior``, EM over the unlabelled pixels); score the held-out objects
(confusion per object, bootstrap interval over objects); compute the label-free expected IoU and the fraction of
each class over every cached tile; fit the random-forest baseline on the same training objects and score it on the
same held-out objects. Seconds on a CPU for a megapixel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import AUTO_UNET_PIXELS, TrainingConfig
from ..data.patches import UNLABELLED, PatchCache
from ..errors import DataError
from ..runtime.events import CancelToken, Emitter
from . import objects

HEAD_STEPS = 300
HEAD_LEARNING_RATE = 0.01
HEAD_WEIGHT_DECAY = 1e-3
MAX_TRAIN_PIXELS = AUTO_UNET_PIXELS
"""At most this many training pixels (drawn at random) fit the head; ``method: auto`` trains a U-Net above it."""


@dataclass
class FeaturesResult:
    """The trained classifier and what validation measured (the shape ``metadata.Results`` is filled from)."""

    model: Any
    history: list[dict[str, Any]]
    mean_iou: float
    per_class_iou: list[float | None]
    pixel_accuracy: float
    confusion: list[list[int]]
    train_loss: float
    val_loss: float
    seconds: float
    validation: dict[str, Any] = field(default_factory=dict)
    val_tiles: list[int] = field(default_factory=list)
    train_masks: list[np.ndarray] = field(default_factory=list)
    """Per cached tile: labels of the training annotations (255 elsewhere)."""
    held_masks: list[np.ndarray] = field(default_factory=list)
    """Per cached tile: ids of the held-out annotations (255 elsewhere)."""
    train_counts: np.ndarray | None = None
    val_counts: np.ndarray | None = None
    class_weights: np.ndarray | None = None

    best_epoch: int = 1
    stopped_early: bool = False
    stopped_by_user: bool = False
    device: str = "cpu"
    precision: str = "float32"


def _bank(model: Any, tile: np.ndarray) -> torch.Tensor:
    """The model's filter bank of one tile (C, H, W) -> (F, H, W), through OpenCV (equal to ``model.bank``)."""
    from ..models.features import filter_bank_numpy

    return torch.from_numpy(filter_bank_numpy(tile, model.bank.sigmas))


def _probabilities(model: Any, tile: np.ndarray) -> torch.Tensor:
    """Class probabilities (K, H, W) of one tile, as the saved model computes them."""
    with torch.no_grad():
        z = (_bank(model, tile)[None] - model.feature_mean) / model.feature_std
        return torch.softmax(model.head(z)[0], 0)


def _labelled_features(model: Any, cache: PatchCache, masks: list, seed: int, cancel: CancelToken
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter-bank features (N, F) and labels (N,) of the labelled pixels of every tile (at most
    ``MAX_TRAIN_PIXELS``, drawn at random)."""
    xs, ys = [], []
    with torch.no_grad():
        for t_index in range(len(cache)):
            cancel.check()
            labelled = masks[t_index].reshape(-1) != UNLABELLED
            if not labelled.any():
                continue
            f = _bank(model, cache.input(t_index))
            xs.append(f.reshape(f.shape[0], -1)[:, torch.from_numpy(labelled)].T.contiguous())
            ys.append(torch.from_numpy(masks[t_index].reshape(-1)[labelled].astype(np.int64)))
    x, y = torch.cat(xs), torch.cat(ys)
    if len(y) > MAX_TRAIN_PIXELS:
        keep = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(y), MAX_TRAIN_PIXELS, replace=False)))
        x, y = x[keep], y[keep]
    return x, y


def _fit_head(model: Any, x: torch.Tensor, y: torch.Tensor, weights: np.ndarray) -> float:
    """Standardise the features (statistics stored in the model) and fit the 1x1 head: class-weighted
    cross-entropy, AdamW, full batch. Returns the final training loss."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    model.feature_mean.copy_(mean.view(1, -1, 1, 1))
    model.feature_std.copy_(std.view(1, -1, 1, 1))
    z = (x - mean) / std
    n_classes = model.head.out_channels
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    w = torch.as_tensor(weights, dtype=torch.float32)
    optimiser = torch.optim.AdamW(model.head.parameters(), lr=HEAD_LEARNING_RATE, weight_decay=HEAD_WEIGHT_DECAY)
    loss = torch.zeros(())
    with torch.enable_grad():
        for _ in range(HEAD_STEPS):
            optimiser.zero_grad(set_to_none=True)
            logits = z @ model.head.weight.view(n_classes, -1).T + model.head.bias
            loss = F.cross_entropy(logits, y, weight=w)
            loss.backward()
            optimiser.step()
    return float(loss.detach())


PRIOR_SAMPLE_PIXELS = 1_000_000
"""At most this many pixels of the cached tiles (evenly spaced) estimate the images' class prior."""
PRIOR_ITERATIONS = 100
PRIOR_TOLERANCE = 1e-6
PRIOR_FLOOR = 1e-4
"""Smallest class prior kept (a class the images seem to lack still gets a finite bias)."""


def training_prior(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The class prior the class-weighted loss trains the head for: labelled pixels × class weight, normalised."""
    p = np.asarray(counts, np.float64) * np.asarray(weights, np.float64)
    return p / p.sum()


def estimate_prior(probabilities: np.ndarray, prior_train: np.ndarray) -> np.ndarray:
    """The class prior of unlabelled pixels from the head's posteriors (K, N) by EM (Saerens, Latinne & Decaestecker
    2002): q ∝ p · π / π_train, π ← mean of q, until π moves less than ``PRIOR_TOLERANCE``."""
    p = np.asarray(probabilities, np.float64)
    ratio_base = 1.0 / np.asarray(prior_train, np.float64)
    pi = np.asarray(prior_train, np.float64).copy()
    for _ in range(PRIOR_ITERATIONS):
        q = p * (pi * ratio_base)[:, None]
        q /= q.sum(0, keepdims=True)
        new = q.mean(1)
        done = np.abs(new - pi).max() < PRIOR_TOLERANCE
        pi = new
        if done:
            break
    pi = np.maximum(pi, PRIOR_FLOOR)
    return pi / pi.sum()


def correct_prior(model: Any, cache: PatchCache, counts: np.ndarray, weights: np.ndarray, cancel: CancelToken
                  ) -> dict[str, list[float]]:
    """Shift the head's output bias by log(π / π_train): π estimated by ``estimate_prior`` over at most
    ``PRIOR_SAMPLE_PIXELS`` pixels of the cached tiles (the annotated images), π_train by ``training_prior``. The
    softmax of the shifted logits is the EM-corrected posterior, so the saved model (and its ONNX export) gives it
    directly. Returns the two priors and the bias added."""
    prior_train = training_prior(counts, weights)
    total = sum(int(np.prod(cache.input(i).shape[1:])) for i in range(len(cache)))
    step = max(1, -(-total // PRIOR_SAMPLE_PIXELS))
    sample, offset = [], 0
    with torch.inference_mode():
        for t_index in range(len(cache)):
            cancel.check()
            p = _probabilities(model, cache.input(t_index)).numpy()
            flat = p.reshape(p.shape[0], -1)
            sample.append(flat[:, (-offset) % step::step])
            offset += flat.shape[1]
    pi = estimate_prior(np.concatenate(sample, 1), prior_train)
    bias = np.log(pi / prior_train)
    with torch.no_grad():
        model.head.bias += torch.as_tensor(bias, dtype=model.head.bias.dtype)
    return {"training_prior": [float(v) for v in prior_train], "image_prior": [float(v) for v in pi],
            "bias": [float(v) for v in bias], "pixels": int(sum(s.shape[1] for s in sample))}


def _rounded(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 4)


def fit_features(cache: PatchCache, shapes_per_image: list, classes: list[str], cfg: TrainingConfig,
                 stroke_px: float, emit: Emitter, cancel: CancelToken) -> FeaturesResult:
    """Split by objects, fit the head on training pixels, validate on held-out objects, fit the baseline."""
    from ..models.features import FeaturesNet, receptive_radius
    from .baseline import random_forest_baseline
    from .losses import class_weights_from_counts

    start = time.perf_counter()
    n_classes = len(classes)
    class_index = {c: i for i, c in enumerate(classes)}
    scored = objects.scored_classes(classes)
    ds = cfg.downsample
    margin = float(receptive_radius()) * ds
    split = objects.split_objects(shapes_per_image, classes, cfg.validation_split, margin, stroke_px * ds, cfg.seed)
    for w in split.warnings:
        emit.log(w, level="warning")
    val_objects = split.val_objects()
    val_class = [class_index[shapes_per_image[im][i].class_name] for im, i in val_objects]
    first_id = {}
    n = 0
    for im in range(len(shapes_per_image)):
        first_id[im] = n
        n += len(split.val[im])

    torch.manual_seed(cfg.seed)
    model = FeaturesNet(cache.input(0).shape[0] if len(cache) else 1, n_classes).eval()
    size = cache.masks.shape[-1] if len(cache) else cfg.tile_size
    train_masks, held_masks, features = [], [], []
    for tile in cache.tiles:
        cancel.check()
        train, held = objects.object_masks(shapes_per_image[tile.image], split, tile.image, class_index, tile.x,
                                           tile.y, ds, (size, size), stroke_px, first_id[tile.image])
        train_masks.append(train)
        held_masks.append(held)
    train_counts = np.stack([np.bincount(m.reshape(-1), minlength=256)[:n_classes] for m in train_masks]).sum(0)
    if (train_counts == 0).any():
        missing = [c for c, k in zip(classes, train_counts) if k == 0]
        raise DataError(f"classes {missing} have no training pixels once held-out annotations and their "
                        f"surroundings ({margin:g} px) are set aside; draw more, separate annotations of them")

    emit("stage", stage="training", message=f"fitting the features classifier on {int(train_counts.sum())} labelled "
         f"pixels ({len(val_objects)} annotations held out)", device="cpu", precision="float32")
    weights = class_weights_from_counts(train_counts.tolist(), [cfg.class_weights.get(c, 1.0) for c in classes])
    features = _labelled_features(model, cache, train_masks, cfg.seed, cancel)
    _fit_head(model, *features, weights)
    del features
    cancel.check()
    if cfg.prior_correction:
        correct_prior(model, cache, train_counts, weights, cancel)

    emit("stage", stage="validating", message="scoring held-out annotations and the random-forest baseline")
    per_object = np.zeros((len(val_objects), n_classes, n_classes), np.int64)
    val_tiles, val_loss_sum, val_pixels = [], 0.0, 0
    with torch.inference_mode():
        for t_index in range(len(cache)):
            cancel.check()
            held = held_masks[t_index]
            if (held != UNLABELLED).any():
                probabilities = _probabilities(model, cache.input(t_index))
                logits = torch.log(probabilities.clamp_min(1e-12))
                val_tiles.append(t_index)
                pred = probabilities.argmax(0).numpy()
                objects.held_out_confusions(pred, held, val_class, n_classes, per_object)
                ids = held.reshape(-1)
                where = ids != UNLABELLED
                truth = torch.as_tensor(np.asarray(val_class)[ids[where].astype(np.int64)])
                val_loss_sum += float(F.cross_entropy(logits.reshape(n_classes, -1)[:, torch.from_numpy(where)].T,
                                                      truth, reduction="sum"))
                val_pixels += int(where.sum())
    confusion = per_object.sum(0) if len(per_object) else np.zeros((n_classes, n_classes), np.int64)
    held_iou, per_class = objects.miou(confusion, scored)
    lo, hi = objects.bootstrap_ci(per_object, scored, seed=cfg.seed)

    # The saved classifier learns from every annotation; the held-out figures describe one that saw fewer.
    all_counts = np.stack([np.bincount(m.reshape(-1), minlength=256)[:n_classes] for m in cache.masks]).sum(0)
    final_weights = class_weights_from_counts(all_counts.tolist(), [cfg.class_weights.get(c, 1.0) for c in classes])
    train_loss = _fit_head(model, *_labelled_features(model, cache, list(cache.masks), cfg.seed, cancel),
                           final_weights)
    prior = correct_prior(model, cache, all_counts, final_weights, cancel) if cfg.prior_correction else None
    expected = objects.ExpectedIoU(n_classes)
    with torch.inference_mode():
        for t_index in range(len(cache)):
            cancel.check()
            expected.update(_probabilities(model, cache.input(t_index)).numpy())
    expected_iou, expected_per = expected.iou(scored)
    weights = final_weights
    estimate = min(held_iou, expected_iou) if not np.isnan(held_iou) else expected_iou

    baseline: dict[str, Any] = {}
    if val_tiles:
        cancel.check()
        predict = random_forest_baseline([cache.input(i) for i in range(len(cache))], train_masks, cfg.seed)
        base_objects = np.zeros_like(per_object)
        for t_index in val_tiles:
            held = held_masks[t_index]
            objects.held_out_confusions(predict(cache.input(t_index), held != UNLABELLED), held, val_class,
                                        n_classes, base_objects)
        base_iou, base_per = objects.miou(base_objects.sum(0), scored)
        base_lo, base_hi = objects.bootstrap_ci(base_objects, scored, seed=cfg.seed)
        baseline = {"name": "random forest (QuPath's pixel classifier: 50 trees on Gaussian, gradient, LoG, Hessian "
                            "and structure-tensor features at 1-8 px)",
                    "held_out_mean_iou": _rounded(base_iou),
                    "held_out_ci95": [_rounded(base_lo), _rounded(base_hi)],
                    "per_class_iou": dict(zip(classes, map(_rounded, base_per)))}

    val_counts = confusion.sum(1)
    validation = {
        **split.record(),
        "held_out_mean_iou": _rounded(held_iou),
        "held_out_ci95": [_rounded(lo), _rounded(hi)],
        "expected_mean_iou": _rounded(expected_iou),
        "expected_per_class_iou": dict(zip(classes, map(_rounded, expected_per))),
        "class_fractions": dict(zip(classes, map(_rounded, expected.fractions()))),
        "reported_mean_iou": _rounded(estimate),
        "scored_classes": [classes[k] for k in scored],
        "baseline": baseline,
    }
    if val_objects and held_iou >= 1.0 and lo >= 1.0:
        # Every held-out annotation right: the interval collapses to [1, 1], which says "not checked", not "perfect".
        note = (f"all {len(val_objects)} held-out annotations were classified without an error pixel: they cannot "
                f"show how good the map is away from them (at object borders especially); the reported figure is "
                f"the label-free estimate ({expected_iou:.2f}), which trusts the classifier's own confidence. Draw "
                f"strokes along the borders that matter, and more of them, to have some held out there")
        validation["warnings"] = [*validation.get("warnings", []), note]
        emit.log(note, level="warning")
    if prior is not None:
        validation["prior_correction"] = {key: dict(zip(classes, (round(v, 6) for v in prior[key])))
                                          for key in ("training_prior", "image_prior", "bias")}
        validation["prior_correction"]["pixels"] = prior["pixels"]
    seconds = time.perf_counter() - start
    history = [{"epoch": 1, "train_loss": train_loss, "val_loss": val_loss_sum / max(val_pixels, 1),
                "mean_iou": estimate, "per_class_iou": per_class,
                "pixel_accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)), "learning_rate":
                HEAD_LEARNING_RATE, "best_epoch": 1, "epochs_without_improvement": 0, "seconds": seconds}]
    return FeaturesResult(
        model=model, history=history, mean_iou=float(estimate), per_class_iou=per_class,
        pixel_accuracy=history[0]["pixel_accuracy"], confusion=confusion.tolist(), train_loss=train_loss,
        val_loss=history[0]["val_loss"], seconds=seconds, validation=validation, val_tiles=val_tiles,
        train_masks=train_masks, held_masks=held_masks,
        train_counts=all_counts - val_counts, val_counts=val_counts, class_weights=np.asarray(weights))


PSEUDO_LABEL_CONFIDENCE = 0.9
"""Unlabelled pixels the features classifier calls with at least this probability become U-Net training labels."""


def pseudo_label_masks(cache: PatchCache, train_tiles: list[int], n_classes: int, cfg: TrainingConfig,
                       cancel: CancelToken) -> tuple[np.ndarray, int]:
    """The patch cache's masks with the training tiles' unlabelled pixels filled in where a features classifier,
    fitted on the training tiles' labels only, is confident; validation tiles keep their masks. Returns the masks
    and the number of pixels filled in."""
    from ..models.features import FeaturesNet
    from .losses import class_weights_from_counts

    train = set(train_tiles)
    empty = np.full(cache.masks.shape[1:], UNLABELLED, np.uint8)
    masks = [cache.masks[i] if i in train else empty for i in range(len(cache))]
    counts = np.stack([np.bincount(m.reshape(-1), minlength=256)[:n_classes] for m in masks]).sum(0)
    model = FeaturesNet(cache.input(train_tiles[0]).shape[0], n_classes).eval()
    _fit_head(model, *_labelled_features(model, cache, masks, cfg.seed, cancel),
              class_weights_from_counts(counts.tolist(), [1.0] * n_classes))
    out = cache.masks.copy()
    filled = 0
    with torch.inference_mode():
        for i in train_tiles:
            cancel.check()
            p = _probabilities(model, cache.input(i))
            best, call = p.max(0)
            add = (out[i] == UNLABELLED) & (best.numpy() >= PSEUDO_LABEL_CONFIDENCE)
            out[i][add] = call.numpy()[add]
            filled += int(add.sum())
    return out, filled
