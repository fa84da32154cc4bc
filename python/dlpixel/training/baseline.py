"""The baseline a deep classifier has to beat: QuPath's pixel classifier, a random forest on multiscale features.

QuPath trains OpenCV's random trees (50 trees, a minimum of 10 samples to split a node, sqrt(features) tried per
split) on filter responses of the annotated pixels. OpenCV 5 moved its ``ml`` module out of the main wheel, so the
same forest comes from scikit-learn. The features are ``models.features.FilterBank`` at sigma 1, 2, 4 and 8 px
(Gaussian, gradient magnitude, LoG, Hessian and structure-tensor eigenvalues), the multiscale set QuPath offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..runtime.events import Emitter

if TYPE_CHECKING:
    from ..data.patches import PatchCache

BASELINE_SIGMAS = (1.0, 2.0, 4.0, 8.0)
BASELINE_TREES = 50
BASELINE_MIN_SPLIT = 10
MAX_TRAIN_PIXELS = 100_000
"""At most this many labelled pixels (drawn at random) train the forest."""


def _features(tile: np.ndarray) -> np.ndarray:
    from ..models.features import filter_bank_numpy

    f = filter_bank_numpy(tile, BASELINE_SIGMAS)
    return f.reshape(f.shape[0], -1).T


def random_forest_baseline(inputs: Sequence[np.ndarray], train_masks: Sequence[np.ndarray], seed: int,
                           unlabelled: int = 255):
    """A forest fitted on the training-labelled pixels of tiles (C, H, W) with masks (H, W); returns a function
    that maps a tile (and optionally the pixels to classify) to predicted class indices (H, W)."""
    from sklearn.ensemble import RandomForestClassifier

    xs, ys = [], []
    for tile, mask in zip(inputs, train_masks):
        labelled = mask.reshape(-1) != unlabelled
        if labelled.any():
            xs.append(_features(tile)[labelled])
            ys.append(mask.reshape(-1)[labelled])
    x, y = np.concatenate(xs), np.concatenate(ys)
    keep = np.arange(len(y))
    if len(y) > MAX_TRAIN_PIXELS:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), MAX_TRAIN_PIXELS, replace=False))
    forest = RandomForestClassifier(n_estimators=BASELINE_TREES, min_samples_split=BASELINE_MIN_SPLIT,
                                    max_features="sqrt", n_jobs=1, random_state=seed)
    forest.fit(x[keep], y[keep])

    def predict(tile: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """Class per pixel (H, W); with ``where`` (H, W) bool only those pixels are classified (255 elsewhere)."""
        f = _features(tile)
        if where is None:
            return forest.predict(f).reshape(tile.shape[1:]).astype(np.uint8)
        out = np.full(tile.shape[1:], 255, np.uint8)
        if where.any():
            out[where] = forest.predict(f[where.reshape(-1)]).astype(np.uint8)
        return out

    return predict


def agreement(confusion: np.ndarray, classes: Sequence[str]) -> dict:
    """How far a model's class maps agree with a reference's over every pixel (labelled or not), from their counts
    ``confusion[reference, model]``: the mean IoU of the one against the other over the scored classes, and each
    map's share of every class. No label enters it."""
    from .objects import miou, scored_classes

    confusion = np.asarray(confusion, np.int64)
    mean, _ = miou(confusion, scored_classes(list(classes)))
    total = max(int(confusion.sum()), 1)
    return {"mean_iou": None if np.isnan(mean) else round(float(mean), 4),
            "shares": {c: round(float(v) / total, 4) for c, v in zip(classes, confusion.sum(0))},
            "reference_shares": {c: round(float(v) / total, 4) for c, v in zip(classes, confusion.sum(1))},
            "pixels": int(confusion.sum())}


AGREEMENT_TILES = 16
"""Validation tiles (at most, evenly spread) over which a U-Net's map is compared with the forest's."""


def baseline_on_tiles(cache, train_tiles, val_tiles, classes: Sequence[str], seed: int,
                      maps: dict | None = None) -> dict:
    """The forest fitted on the training tiles' labels and scored on the validation tiles' labels (the U-Net's own
    split): mean IoU over the scored classes and IoU per class, for ``metadata.split['baseline']``. ``maps``, when
    given, receives the forest's whole class map of up to ``AGREEMENT_TILES`` validation tiles, by tile index."""
    from .objects import miou, scored_classes

    if not len(train_tiles) or not len(val_tiles):
        return {}
    predict = random_forest_baseline([cache.input(i) for i in train_tiles], [cache.masks[i] for i in train_tiles],
                                     seed)
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    step = max(1, -(-len(val_tiles) // AGREEMENT_TILES))
    whole_tiles = set(list(val_tiles)[::step]) if maps is not None else set()
    for i in val_tiles:
        truth = cache.masks[i].reshape(-1)
        where = truth != 255
        if i in whole_tiles:
            whole = predict(cache.input(i))
            maps[i] = whole  # type: ignore[index]
            pred = whole.reshape(-1)
        elif where.any():
            pred = predict(cache.input(i), where.reshape(cache.masks[i].shape)).reshape(-1)
        if where.any():
            np.add.at(confusion, (truth[where].astype(np.int64), pred[where].astype(np.int64)), 1)
    mean, per = miou(confusion, scored_classes(classes))
    return {"name": "random forest (QuPath's pixel classifier: 50 trees on Gaussian, gradient, LoG, Hessian and "
                    "structure-tensor features at 1-8 px)",
            "val_mean_iou": None if np.isnan(mean) else round(float(mean), 4),
            "per_class_iou": {c: None if v is None else round(v, 4) for c, v in zip(classes, per)}}


def tile_baseline(cache: PatchCache, split, classes: list[str], seed: int, emit: Emitter,
                   maps: dict[int, np.ndarray]) -> dict:
    """QuPath's random forest on the same training tiles, scored on the same validation tiles (its whole maps of them
    go to ``maps``); a failure only warns."""
    try:
        baseline = baseline_on_tiles(cache, split.train, split.val, classes, seed, maps)
    except Exception as err:  # noqa: BLE001
        emit.log(f"the random-forest baseline could not be computed: {err}", level="warning")
        return {}
    if baseline:
        emit.log(f"random-forest baseline on the same split: validation mean IoU {baseline['val_mean_iou']}")
    return baseline


AGREEMENT_WARNING_GAP = 0.1
"""A U-Net's tile validation above its agreement with the forest by more than this is flagged."""


def unet_agreement(result, n_reference_tiles: int, classes: list[str], emit: Emitter
                    ) -> tuple[dict, float, list[str]]:
    """The best epoch's whole maps of the validation tiles against the forest's (trained on the same training
    tiles), as ``fit`` counted them: a figure no label enters, which sees a map spreading or shrinking where no
    annotation lies. The reported estimate is the lower of it and the tile validation (stroke pixels are the easy
    ones: on real images with 30 strokes the tile validation said 0.69-1.00 where the truth was 0.56-0.84, and the
    agreement was within 0.08 of the truth)."""
    tile_iou = float(result.mean_iou)
    if result.agreement_confusion is None:
        return {}, tile_iou, []
    agree = agreement(result.agreement_confusion, classes)
    agree["tiles"] = n_reference_tiles
    if agree["mean_iou"] is None:
        return {}, tile_iou, []
    estimate = min(tile_iou, agree["mean_iou"])
    warnings = []
    if tile_iou - agree["mean_iou"] > AGREEMENT_WARNING_GAP:
        warnings.append(f"the validation tiles' annotations say mean IoU {tile_iou:.3f}, but over every pixel of those "
                        f"tiles the U-Net's map agrees with the random forest's only {agree['mean_iou']:.3f}: "
                        f"annotations check only the pixels they cover; the reported figure is the lower one. Look "
                        f"at the map where nobody drew, or train method features")
        emit.log(warnings[-1], level="warning")
    emit.log(f"label-free agreement with the random forest over the validation tiles {agree['mean_iou']:.3f}; "
             f"reported estimate {estimate:.3f}")
    return ({"tile_mean_iou": round(tile_iou, 4), "agreement_with_forest": agree,
             "reported_mean_iou": round(estimate, 4)}, estimate, warnings)
