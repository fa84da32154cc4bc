"""``method: auto``: which model a training run fits, decided from the labels before any tile is read.

The rule: a ``features`` classifier unless the annotations label more pixels (at the training resolution) than it
fits its head on (``config.AUTO_UNET_PIXELS``, the features tier's ``MAX_TRAIN_PIXELS``). Up to there every
labelled pixel teaches it, and on real images it beat a U-Net both from 30 strokes and from a densely labelled half
image, and the random forest from strokes (docs/BEST_PRACTICES.md); beyond it, labels it would leave unused are what
a U-Net learns from. A run that asks for a U-Net by other means (``init_weights_from``, several GPUs) gets one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import shapely
from shapely.strtree import STRtree

from ..config import AUTO_UNET_PIXELS, TrainingConfig
from ..data.base import LabelShape
from ..data.geometry import _parts, _shape_order, stroke_polygon
from ..data.patches import DEFAULT_STROKE_PX


@dataclass
class MethodChoice:
    """The method a run trains, and why (recorded in the classifier's ``method_choice``)."""

    setting: str
    """``method`` as set: ``auto``, ``unet`` or ``features``."""
    method: str
    """What was trained: ``unet`` or ``features``."""
    reason: str
    labelled_pixels: dict[str, int] = field(default_factory=dict)
    """Per class, labelled pixels at the training resolution (counted for ``auto`` only)."""

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"setting": self.setting, "method": self.method, "reason": self.reason}
        if self.labelled_pixels:
            out["labelled_pixels"] = dict(self.labelled_pixels)
            out["threshold"] = AUTO_UNET_PIXELS
        return out

    def line(self) -> str:
        """One line for the log: the method and why."""
        return f"method {self.method}" + (" (auto)" if self.setting == "auto" else "") + f": {self.reason}"


def labelled_pixels(shapes_per_image: Sequence[Sequence[LabelShape]], classes: Sequence[str], downsample: float,
                    stroke_width: float) -> dict[str, int]:
    """Pixels per class that the annotations label at the training resolution, as the label masks draw them: areas
    as themselves, lines ``stroke_width`` training pixels wide, points as discs of that diameter; where annotations
    overlap, the one drawn last (the smaller) keeps the pixels."""
    index = set(classes)
    area = dict.fromkeys(classes, 0.0)
    width = max(stroke_width, 1.0) * downsample
    for shapes in shapes_per_image:
        drawn = sorted((s for s in shapes if s.class_name in index), key=_shape_order)
        footprints = []
        for s in drawn:
            parts = [p if p.geom_type in ("Polygon", "MultiPolygon") else stroke_polygon(p, width)
                     for p in _parts(s.geometry) if not p.is_empty]
            footprints.append(shapely.union_all(parts) if parts else shapely.Polygon())
        tree = STRtree(footprints)
        for i, (s, geom) in enumerate(zip(drawn, footprints)):
            later = [j for j in tree.query(geom, predicate="intersects") if j > i]
            own = geom.difference(shapely.union_all([footprints[j] for j in later])) if later else geom
            area[s.class_name] += own.area  # type: ignore[index]
    return {c: round(a / downsample ** 2) for c, a in area.items()}


def choose_method(cfg: TrainingConfig, shapes_per_image: Sequence[Sequence[LabelShape]], classes: Sequence[str],
                  init_weights_from: str | None = None, several_gpus: bool = False) -> MethodChoice:
    """The method ``cfg`` trains on these annotations: the one set, or for ``auto`` the rule of this module."""
    if cfg.method != "auto":
        return MethodChoice(cfg.method, cfg.method, "set in the settings")
    if init_weights_from:
        return MethodChoice("auto", "unet", f"fine-tuning the U-Net of classifier '{init_weights_from}'")
    if several_gpus:
        return MethodChoice("auto", "unet", "training on several GPUs trains a U-Net")
    counts = labelled_pixels(shapes_per_image, classes, cfg.downsample, cfg.line_stroke_width or DEFAULT_STROKE_PX)
    total = sum(counts.values())
    if total > AUTO_UNET_PIXELS:
        reason = (f"{total:,} labelled pixels, more than the {AUTO_UNET_PIXELS:,} a features classifier learns from: "
                  "a U-Net learns from them all")
        return MethodChoice("auto", "unet", reason, counts)
    reason = (f"{total:,} labelled pixels, at most {AUTO_UNET_PIXELS:,}: with as few, a features classifier beat a "
              "U-Net on real images")
    return MethodChoice("auto", "features", reason, counts)
