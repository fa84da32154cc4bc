"""Validation on whole annotation objects held out from training, and the figures reported with it.

A stroke, polygon or point is one *object*. Whole objects go to validation, per class, until about
``validation_split`` of the class's labelled area is held out; every training object then lies more than
``margin`` full-resolution pixels from every held-out one (objects closer than that are left out of both), so
no held-out pixel lies within a training pixel's context. The held-out objects' pixels are scored with a
confusion matrix per object, which gives a bootstrap confidence interval over objects.

Stroke pixels are the easy ones (object interiors, background far from objects), so a held-out score alone
overstates the quality of the whole map. ``expected_iou`` is a label-free figure over the whole annotated images:
the IoU the classifier's own probabilities expect (a pixel called class k with probability p counts p as a true
positive and 1 - p as a false positive; a pixel not called k counts its p of k as a false negative). The reported
estimate is the lower of the two. Classes whose name starts with ``Ignore`` are left out of every mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.strtree import STRtree

from ..data.base import LabelShape
from ..data.patches import UNLABELLED, rasterize_labels

IGNORE_PREFIX = "Ignore"
MIN_VAL_OBJECTS = 3
"""Fewer held-out objects of a class than this: the class's validation figure is flagged as too few to judge."""
MAX_VAL_OBJECTS = 250
"""Held-out objects are numbered in an 8-bit mask (255 = none)."""


def scored_classes(classes: Sequence[str]) -> list[int]:
    """Indices of the classes that count in a mean (``Ignore*`` classes do not)."""
    return [i for i, c in enumerate(classes) if not c.startswith(IGNORE_PREFIX)]


@dataclass
class ObjectSplit:
    """Which annotation objects train and which validate, per image (indices into that image's shapes)."""

    train: list[list[int]]
    val: list[list[int]]
    margin: float
    """Full-resolution pixels between any training object and any held-out one."""
    dropped: int = 0
    """Objects within ``margin`` of a held-out object: used for neither side."""
    objects: dict[str, dict[str, int]] = field(default_factory=dict)
    """Objects per class on each side: ``{"train": {...}, "val": {...}}``."""
    warnings: list[str] = field(default_factory=list)

    def val_objects(self) -> list[tuple[int, int]]:
        """(image, shape index) of every held-out object, in the order their ids are numbered."""
        return [(im, i) for im, ids in enumerate(self.val) for i in ids]

    def record(self) -> dict:
        return {"method": "by_objects", "margin_px": self.margin, "dropped_objects": self.dropped,
                "objects": self.objects, "warnings": self.warnings}


def _footprint(shape: LabelShape, half_stroke: float) -> shapely.Geometry:
    return shape.geometry if shape.kind == "area" else shape.geometry.buffer(half_stroke)


def split_objects(shapes_per_image: Sequence[Sequence[LabelShape]], classes: Sequence[str], fraction: float,
                  margin: float, stroke_width: float, seed: int) -> ObjectSplit:
    """Hold out whole objects, rarest class first, about ``fraction`` of each class's labelled area; keep for
    training only the objects farther than ``margin`` (full-resolution pixels) from every held-out one.
    ``stroke_width`` is the width of lines in full-resolution pixels."""
    rng = np.random.default_rng(seed)
    half = max(stroke_width, 1.0) / 2
    objects = [(im, i, s.class_name, _footprint(s, half)) for im, shapes in enumerate(shapes_per_image)
               for i, s in enumerate(shapes) if s.class_name in classes]
    area = {c: sum(g.area for _, _, k, g in objects if k == c) for c in classes}
    total = {c: sum(1 for o in objects if o[2] == c) for c in classes}
    trees = {im: STRtree([o[3] for o in objects if o[0] == im]) for im in range(len(shapes_per_image))}
    members = {im: [n for n, o in enumerate(objects) if o[0] == im] for im in range(len(shapes_per_image))}
    near = []
    for n, (im, _, _, geom) in enumerate(objects):
        hits = trees[im].query(geom.buffer(margin), predicate="intersects")
        near.append({members[im][h] for h in hits} - {n})
    val: set[int] = set()
    out: set[int] = set()
    """Objects held out, and objects left out because they lie within the margin of a held-out one."""
    warnings: list[str] = []

    def training_left(extra_val: int, extra_out: set[int]) -> dict[str, int]:
        gone = val | out | {extra_val} | extra_out
        return {c: total[c] - sum(1 for n in gone if objects[n][2] == c) for c in classes}

    for c in sorted(classes, key=lambda k: area[k]):
        mine = [n for n, o in enumerate(objects) if o[2] == c]
        if len(mine) < 2:
            warnings.append(f"class '{c}' has {len(mine)} annotation object(s): none can be held out to validate it")
            continue
        # Isolated objects first (holding them out costs the fewest training objects), random among equals.
        order = sorted(mine, key=lambda n: (len(near[n] - val - out), rng.random()))
        held_area = 0.0
        for n in order:
            if held_area >= fraction * area[c] or len(val) >= MAX_VAL_OBJECTS:
                break
            if n in val or n in out:
                continue
            drop = near[n] - val
            left = training_left(n, drop)
            # Every class keeps at least half of its objects (and one) for training.
            if any(left[k] < max(1, total[k] // 2) for k in classes if total[k]):
                continue
            val.add(n)
            out |= drop
            held_area += objects[n][3].area
    train: list[list[int]] = [[] for _ in shapes_per_image]
    val_lists: list[list[int]] = [[] for _ in shapes_per_image]
    for n, (im, i, _, _) in enumerate(objects):
        if n in val:
            val_lists[im].append(i)
        elif n not in out:
            train[im].append(i)
    dropped = len(out - val)
    counts = {side: {c: 0 for c in classes} for side in ("train", "val")}
    for side, lists in (("train", train), ("val", val_lists)):
        for im, ids in enumerate(lists):
            for i in ids:
                counts[side][shapes_per_image[im][i].class_name] += 1  # type: ignore[index]
    for c in classes:
        if counts["train"][c] == 0:
            warnings.append(f"class '{c}' has no training object left once held-out objects and their "
                            f"surroundings ({margin:g} px) are set aside")
        elif 0 < counts["val"][c] < MIN_VAL_OBJECTS:
            warnings.append(f"class '{c}' has only {counts['val'][c]} held-out object(s): too few to judge it; "
                            "draw more, separate annotations of it")
    return ObjectSplit(train, [sorted(v) for v in val_lists], margin, dropped, counts, warnings)


def object_masks(shapes: Sequence[LabelShape], split: ObjectSplit, image: int, class_index: dict[str, int],
                 x0: float, y0: float, downsample: float, size: tuple[int, int], stroke_width: float,
                 first_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Training label mask and held-out object-id mask (ids from ``first_id`` in ``split.val_objects()`` order,
    255 = none) of one tile."""
    train = rasterize_labels([shapes[i] for i in split.train[image]], class_index, x0, y0, downsample, size,
                             stroke_width)
    ids = {str(first_id + n): first_id + n for n in range(len(split.val[image]))}
    renamed = [dataclasses.replace(shapes[i], class_name=str(first_id + n)) for n, i in enumerate(split.val[image])]
    held = rasterize_labels(renamed, ids, x0, y0, downsample, size, stroke_width)
    return train, held


def miou(confusion: np.ndarray, scored: Sequence[int]) -> tuple[float, list[float | None]]:
    """Mean IoU over the scored classes that have labelled pixels, and IoU per class (None without pixels)."""
    tp = np.diag(confusion).astype(np.float64)
    truth = confusion.sum(1)
    denom = truth + confusion.sum(0) - tp
    per = [float(tp[k] / denom[k]) if truth[k] > 0 else None for k in range(len(tp))]
    values = [per[k] for k in scored if per[k] is not None]
    return (float(np.mean(values)) if values else float("nan")), per


def bootstrap_ci(per_object: np.ndarray, scored: Sequence[int], n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean IoU when the held-out objects (confusion matrices (M, K, K)) are resampled."""
    if len(per_object) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(per_object), size=(n, len(per_object)))
    values = [miou(per_object[p].sum(0), scored)[0] for p in picks]
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


class ExpectedIoU:
    """Label-free expected confusion over whole images from class probabilities (K, H, W), accumulated."""

    def __init__(self, n_classes: int) -> None:
        self.tp = np.zeros(n_classes)
        self.fp = np.zeros(n_classes)
        self.fn = np.zeros(n_classes)
        self.called = np.zeros(n_classes)

    def update(self, probabilities: np.ndarray) -> None:
        k = probabilities.shape[0]
        flat = probabilities.reshape(k, -1).astype(np.float64)
        call = flat.argmax(0)
        for c in range(k):
            mine = call == c
            self.tp[c] += flat[c, mine].sum()
            self.fp[c] += (1 - flat[c, mine]).sum()
            self.fn[c] += flat[c, ~mine].sum()
            self.called[c] += mine.sum()

    def iou(self, scored: Sequence[int]) -> tuple[float, list[float]]:
        per = self.tp / np.maximum(self.tp + self.fp + self.fn, 1e-12)
        return float(np.mean([per[k] for k in scored])), [float(v) for v in per]

    def fractions(self) -> list[float]:
        return [float(v) for v in self.called / max(self.called.sum(), 1)]


def held_out_confusions(pred: np.ndarray, held: np.ndarray, val_class: Sequence[int], n_classes: int,
                        out: np.ndarray) -> None:
    """Add the predicted classes (H, W) of each held-out object's pixels (``held`` ids, 255 none) to ``out``
    (M, K, K)."""
    ids = held.reshape(-1)
    mask = ids != UNLABELLED
    if not mask.any():
        return
    obj = ids[mask].astype(np.int64)
    p = pred.reshape(-1)[mask].astype(np.int64)
    truth = np.asarray(val_class, dtype=np.int64)[obj]
    np.add.at(out, (obj, truth, p), 1)
