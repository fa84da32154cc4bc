"""How a classifier validated on held-out annotations, in words: for ``models show`` and ``report.html``."""

from __future__ import annotations

from typing import Any

from ..classifiers.metadata import ClassifierMetadata


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def validation_lines(meta: ClassifierMetadata) -> list[str]:
    """Lines about the held-out-annotation validation and the baseline (for a tile split: the baseline only)."""
    v = meta.split
    if v and v.get("method") != "by_objects" and v.get("baseline"):
        base = v["baseline"]
        per = ", ".join(f"{c} {_f(base.get('per_class_iou', {}).get(c))}" for c in meta.class_names)
        mean = _f(base.get("val_mean_iou"))
        lines = [f"random-forest baseline on the same validation tiles: mean IoU {mean} ({per})"]
        agree = v.get("agreement_with_forest") or {}
        if agree:
            shares = ", ".join(f"{c} {_f(agree['shares'].get(c))} / {_f(agree['reference_shares'].get(c))}"
                               for c in meta.class_names)
            lines.append(f"label-free agreement of the map with the forest's over every pixel of the validation "
                         f"tiles: mean IoU {_f(agree.get('mean_iou'))} (share called each class, U-Net / forest: "
                         f"{shares}); tile validation {_f(v.get('tile_mean_iou'))}; reported estimate (the lower) "
                         f"{_f(v.get('reported_mean_iou'))}")
        return lines + [f"warning: {w}" for w in v.get("warnings", [])]
    if not v or v.get("method") != "by_objects":
        return []
    lo, hi = v.get("held_out_ci95") or [None, None]
    objects = v.get("objects", {})
    lines = [
        (f"held-out annotations: mean IoU {_f(v.get('held_out_mean_iou'))} (95% interval {_f(lo)}-{_f(hi)} over "
        f"annotations), {sum(objects.get('val', {}).values())} held out, {sum(objects.get('train', {}).values())} "
        f"trained on, {v.get('dropped_objects', 0)} within {v.get('margin_px', 0):g} px of a held-out one left out"),
        (f"label-free expected mean IoU over the annotated images {_f(v.get('expected_mean_iou'))}; reported estimate "
        f"(the lower) {_f(v.get('reported_mean_iou'))}"),
    ]
    base = v.get("baseline") or {}
    if base:
        blo, bhi = base.get("held_out_ci95") or [None, None]
        lines.append(f"random-forest baseline on the same split: mean IoU {_f(base.get('held_out_mean_iou'))} "
                     f"(95% interval {_f(blo)}-{_f(bhi)})")
    fractions = v.get("class_fractions") or {}
    for name in meta.class_names:
        lines.append(f"  {name}: annotations {objects.get('train', {}).get(name, 0)} training / "
                     f"{objects.get('val', {}).get(name, 0)} held out; share of the annotated images called "
                     f"{name}: {_f(fractions.get(name))}; baseline IoU "
                     f"{_f((base.get('per_class_iou') or {}).get(name))}")
    lines += [f"warning: {w}" for w in v.get("warnings", [])]
    ignored = [c for c in meta.class_names if c not in v.get("scored_classes", meta.class_names)]
    if ignored:
        lines.append(f"not in the means: {', '.join(ignored)}")
    return lines
