"""``report.html``: one self-contained page that shows how a classifier trained, so people can judge it by looking.

Loss, IoU and learning-rate curves with the early-stopping point, the validation confusion matrix, labelled pixels
and class weights, validation tiles beside their labels and predictions, and what the history suggests. Figures are
inline (SVG and PNG/JPEG ``data:`` URIs); the history and metadata are embedded as JSON, so the page is also data.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classifiers import store
from ..classifiers.metadata import ClassifierMetadata
from ..config import TrainingConfig
from ..data.patches import UNLABELLED, label_counts
from .diagnosis import MIN_EPOCHS, Finding, diagnose
from .plots import (
    Series,
    colour_mask,
    display_image,
    jpeg_data_uri,
    line_chart,
    png_data_uri,
    readable_on_white,
    rgb_hex,
    svg_data_uri,
)

__all__ = ["Finding", "ReportSample", "changed_settings", "diagnose", "pick_sample_tiles", "predict_samples",
           "summary_text", "write_report"]

MAX_SAMPLES = 6


@dataclass
class ReportSample:
    """A validation tile to show: the model's input (H, W, C float32), its labels and the model's prediction
    (H, W uint8 class indices; 255 in ``labels`` = unlabelled)."""

    image: np.ndarray
    labels: np.ndarray
    prediction: np.ndarray
    caption: str = ""


def method_line(meta: ClassifierMetadata) -> str:
    """The method trained and why, e.g. ``features (auto: 4,321 labelled pixels, at most 400,000: ...)``; for a
    classifier trained before ``method_choice`` was recorded, or imported, just its architecture."""
    choice = meta.method_choice
    if not choice:
        return meta.architecture
    if choice.get("setting") == "auto":
        return f"{choice.get('method', meta.architecture)} (auto: {choice.get('reason', '')})"
    return f"{choice.get('method', meta.architecture)} (set)"


def changed_settings(cfg: TrainingConfig, meta: ClassifierMetadata | None = None) -> list[tuple[str, Any, Any]]:
    """``(key, value, default)`` for every training setting that differs from its default; nested keys dotted.
    With ``meta``, a ``method`` that ``auto`` chose is not listed (``method_line`` says it)."""
    default = TrainingConfig()
    if meta is not None and meta.method_choice.get("setting") == "auto":
        default = default.model_copy(update={"method": cfg.method})
    out: list[tuple[str, Any, Any]] = []

    def walk(model: Any, base: Any, prefix: str) -> None:
        for key in type(model).model_fields:
            value, ref = getattr(model, key), getattr(base, key)
            if hasattr(type(value), "model_fields"):
                walk(value, ref, f"{prefix}{key}.")
            elif value != ref:
                out.append((f"{prefix}{key}", value, ref))

    walk(cfg, default, "")
    return out


def pick_sample_tiles(masks: np.ndarray, candidates: Sequence[int], n_classes: int,
                      count: int = MAX_SAMPLES) -> list[int]:
    """Up to ``count`` tiles to show: each next one adds the most classes not shown yet, then the most labels."""
    counts = {int(i): label_counts(masks[i], n_classes) for i in candidates}
    chosen: list[int] = []
    shown: set[int] = set()
    while counts and len(chosen) < count:
        best = max(counts, key=lambda i: (len(set(np.flatnonzero(counts[i])) - shown), int(counts[i].sum()), -i))
        shown |= set(np.flatnonzero(counts.pop(best)).tolist())
        chosen.append(best)
    return chosen


def predict_samples(model: Any, images: np.ndarray, masks: np.ndarray, indices: Sequence[int],
                    captions: Sequence[str] | None = None) -> list[ReportSample]:
    """Run the model (eval mode, on its current device) on cached tiles (N, C, H, W) and pair the results with
    their labels."""
    import torch

    if not len(indices):
        return []
    model.eval()
    device = next(model.parameters()).device
    # One tile at a time: the patch cache's inputs are normalised as they are read.
    x = torch.from_numpy(np.stack([np.asarray(images[int(i)], dtype=np.float32) for i in indices])).to(device)
    with torch.inference_mode():
        pred = model(x).argmax(1).to(torch.uint8).cpu().numpy()
    return [ReportSample(np.ascontiguousarray(images[i].transpose(1, 2, 0)), np.asarray(masks[i]), pred[k],
                         captions[k] if captions else "") for k, i in enumerate(indices)]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _e(value: Any) -> str:
    return html.escape(str(value))


def _td(text: Any, value: Any = None, style: str = "") -> str:
    attrs = f' data-value="{_e(json.dumps(value))}"' if value is not None else ""
    attrs += f' style="{style}"' if style else ""
    return f"<td{attrs}>{_e(text)}</td>"


def _swatch(meta: ClassifierMetadata, name: str) -> str:
    color = next((c.color for c in meta.classes if c.name == name), (128, 128, 128))
    return f'<th scope="row"><span class="sw" style="background:{rgb_hex(color)}"></span>{_e(name)}</th>'


def _table(table_id: str, caption: str, header: Sequence[str], rows: Sequence[str]) -> str:
    """A table; no header row when ``header`` is empty (a table of names and values)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f"<tr>{r}</tr>" for r in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f'<table id="{table_id}"><caption>{_e(caption)}</caption>{thead}<tbody>{body}</tbody></table>'


def _figure(fig_id: str, svg: str, alt: str) -> str:
    return f'<figure><img id="{fig_id}" src="{svg_data_uri(svg)}" alt="{_e(alt)}"></figure>'


def _curves(meta: ClassifierMetadata, history: Sequence[dict[str, Any]]) -> str:
    r = meta.results
    best = r.best_epoch if r else (history[-1].get("best_epoch") if history else None)
    markers = [(float(best), f"best epoch {best}")] if best else []

    def col(key: str) -> list[Any]:
        return [row.get(key) for row in history]

    loss = line_chart([Series("training loss", col("train_loss"), "#1f77b4"),
                       Series("validation loss", col("val_loss"), "#ff7f0e")],
                      "Loss per epoch", "loss", markers=markers)
    per_class = [Series(c.name, [row["per_class_iou"][c.index] if len(row.get("per_class_iou") or []) > c.index
                                 else None for row in history], readable_on_white(c.color), 1.5)
                 for c in meta.classes]
    iou = line_chart([Series("mean IoU", col("mean_iou"), "#222222", 3), *per_class],
                     "Validation IoU per epoch", "IoU", markers=markers, y_range=(0.0, 1.0))
    lr = line_chart([Series("learning rate", col("learning_rate"), "#2ca02c")], "Learning rate (end of epoch)",
                    "learning rate", markers=markers)
    return (_figure("loss-chart", loss, "training and validation loss per epoch")
            + _figure("iou-chart", iou, "mean and per-class validation IoU per epoch")
            + _figure("lr-chart", lr, "learning rate per epoch"))


def _confusion(meta: ClassifierMetadata) -> str:
    r = meta.results
    if r is None or not r.confusion:
        return "<p>No confusion matrix was recorded.</p>"
    names = meta.class_names
    m = np.array(r.confusion, np.int64)
    header = ["truth \\ predicted", *names, "labelled"]
    counts, norm = [], []
    for i, name in enumerate(names):
        total = int(m[i].sum())
        cells_c, cells_n = [], []
        for j in range(len(names)):
            share = m[i, j] / total if total else None
            shade = f"background:rgba(31,119,180,{0.85 * share:.3f})" if share else ""
            cells_c.append(_td(f"{int(m[i, j]):,}", int(m[i, j]), shade))
            cells_n.append(_td(f"{share:.1%}" if share is not None else "–", share, shade))
        counts.append(_swatch(meta, name) + "".join(cells_c) + _td(f"{total:,}", total))
        norm.append(_swatch(meta, name) + "".join(cells_n) + _td(f"{total:,}", total))
    return (_table("confusion-counts", f"Validation pixels at epoch {r.best_epoch} (rows: truth, columns: "
                   "prediction)", header, counts)
            + _table("confusion-normalised", "The same, each row as a share of that class's pixels", header, norm))


def _class_tables(meta: ClassifierMetadata) -> str:
    r = meta.results
    cfg = meta.training or TrainingConfig()
    train = meta.labelled_pixels.get("train", {})
    val = meta.labelled_pixels.get("val", {})
    t_sum, v_sum = sum(train.values()) or 1, sum(val.values()) or 1
    iou_rows, px_rows, w_rows = [], [], []
    for name in meta.class_names:
        iou = r.per_class_iou.get(name) if r else None
        iou_rows.append(_swatch(meta, name) + _td(f"{iou:.3f}" if iou is not None else "no validation pixels", iou))
        t, v = train.get(name, 0), val.get(name, 0)
        px_rows.append(_swatch(meta, name) + _td(f"{t:,}", t) + _td(f"{t / t_sum:.1%}") + _td(f"{v:,}", v)
                       + _td(f"{v / v_sum:.1%}"))
        w = meta.class_weights.get(name)
        mult = cfg.class_weights.get(name, 1.0)
        w_rows.append(_swatch(meta, name) + _td(f"{w:.4g}" if w is not None else "–", w) + _td(f"{mult:g}", mult))
    out = _table("per-class", "Validation IoU per class at the best epoch", ["class", "IoU"], iou_rows)
    out += _table("labelled-pixels", "Labelled pixels per class",
                  ["class", "training", "share", "validation", "share"], px_rows)
    out += _table("class-weights", "Loss weight per class (inverse pixel frequency × the class_weights multiplier)",
                  ["class", "weight used", "multiplier set"], w_rows)
    return out


def _settings(meta: ClassifierMetadata) -> str:
    r = meta.results
    run = [("images", ", ".join(meta.images)), ("method", method_line(meta)),
           ("backbone", f"{meta.architecture} {meta.backbone or ''}"),
           ("pretrained weights", meta.weights.source if meta.weights else "none"),
           ("frozen encoder blocks", ", ".join(meta.frozen_blocks) or "none"),
           ("input channels", ", ".join(meta.input_channels)),
           ("tiles", (f"{meta.split.get('train_tiles', '?')} training, {meta.split.get('val_tiles', '?')} "
                      f"validation ({meta.split.get('method', '?')} split)"))]
    if r:
        run += [("device", f"{r.device} ({r.precision})"), ("training time", f"{r.seconds:.0f} s")]
    rows = [f'<th scope="row">{_e(k)}</th>' + _td(v) for k, v in run]
    out = _table("run", "Run", [], rows)
    if meta.training is None:
        return out + "<p>No training settings were recorded.</p>"
    changed = changed_settings(meta.training, meta)
    rows = [f'<th scope="row">{_e(k)}</th>' + _td(_show(v), _json_safe(_plain(v))) + _td(_show(d), _plain(d))
            for k, v, d in changed]
    if not rows:
        return out + '<p id="settings-changed">Every training setting had its default value.</p>'
    return out + _table("settings-changed", "Settings that differ from the defaults", ["setting", "value",
                                                                                       "default"], rows)


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


def _show(value: Any) -> str:
    value = _plain(value)
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def _findings(findings: Sequence[Finding], epochs: int) -> str:
    if not findings:
        note = (f" With only {epochs} epoch(s), the shape of the curves could not be judged."
                if epochs < MIN_EPOCHS else "")
        return f'<p id="no-findings">No problems found in the training history or the per-class results.{note}</p>'
    parts = []
    for f in findings:
        advice = "".join(f"<li>{_e(a)}</li>" for a in f.advice)
        parts.append(f'<div class="finding" data-kind="{_e(f.kind)}"><h3>{_e(f.title)}</h3><p>{_e(f.evidence)}'
                     f"</p><ul>{advice}</ul></div>")
    return "".join(parts)


def _samples(meta: ClassifierMetadata, samples: Sequence[ReportSample]) -> str:
    if not samples:
        return "<p>No validation tiles to show.</p>"
    colors = [c.color for c in sorted(meta.classes, key=lambda c: c.index)]
    legend = "".join(f'<span class="key"><span class="sw" style="background:{rgb_hex(c.color)}"></span>'
                     f"{_e(c.name)}</span>" for c in meta.classes)
    legend += '<span class="key"><span class="sw checker"></span>unlabelled</span>'
    rows = []
    for k, s in enumerate(samples):
        labelled = s.labels != UNLABELLED
        n = int(labelled.sum())
        right = float((s.prediction[labelled] == s.labels[labelled]).mean()) if n else None
        note = f"{n:,} labelled pixels" + (f", {right:.1%} predicted right" if right is not None else "")
        cells = [("image", jpeg_data_uri(display_image(s.image))),
                 ("labels", png_data_uri(colour_mask(s.labels, colors))),
                 ("prediction", png_data_uri(colour_mask(s.prediction, colors)))]
        imgs = "".join(f'<figure><img class="tile {kind}" src="{uri}" alt="{kind} of validation tile {k + 1}">'
                       f"<figcaption>{kind}</figcaption></figure>" for kind, uri in cells)
        rows.append(f'<div class="sample"><p>{_e(s.caption or f"tile {k + 1}")}: {_e(note)}</p>'
                    f'<div class="row">{imgs}</div></div>')
    return f'<p class="legend">{legend}</p>' + "".join(rows)


CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;line-height:1.4}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:12px 24px 12px 0;display:inline-table;vertical-align:top}
caption{text-align:left;font-weight:600;padding-bottom:4px} td,th{border:1px solid #ccc;padding:3px 8px}
td{text-align:right;font-variant-numeric:tabular-nums} th{text-align:left;background:#f4f4f4}
figure{margin:8px 0} .sw{display:inline-block;width:12px;height:12px;margin-right:6px;border:1px solid #888;
vertical-align:-1px} .key{margin-right:16px} .summary{font-size:1.1em}
.checker,.tile.labels{background:repeating-conic-gradient(#6e6e6e 0 25%,#858585 0 50%) 0 0/16px 16px}
.finding{border-left:4px solid #d62728;padding:2px 12px;margin:12px 0;background:#fff6f4}
.sample .row{display:flex;gap:12px} .sample figure{margin:0;text-align:center}
.tile{width:240px;height:auto;image-rendering:pixelated;border:1px solid #999}
#no-findings{border-left:4px solid #2ca02c;padding:6px 12px;background:#f3fbf3}
"""

CHECK_IMAGES = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken-images', String(broken.length));
  if (broken.length) {
    var p = document.createElement('p');
    p.textContent = broken.length + ' figure(s) of this report could not be shown.';
    document.body.insertBefore(p, document.body.firstChild);
  }
});
"""


def _validation_section(meta: ClassifierMetadata) -> str:
    from .validation import validation_lines

    lines = validation_lines(meta)
    if not lines:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    title = ("Validation on held-out annotations" if meta.split.get("method") == "by_objects"
             else "Random-forest baseline")
    return f'<section id="validation"><h2>{title}</h2><ul>{items}</ul></section>'


def write_report(folder: Path, meta: ClassifierMetadata, history: list[dict[str, Any]],
                 samples: list[ReportSample]) -> Path:
    """Write ``report.html`` into the classifier folder and return its path."""
    r = meta.results
    findings = diagnose(history, meta)
    if r:
        stop = (f"stopped by the user after {r.epochs_run} of {meta.training.epochs if meta.training else '?'} "
                "epochs" if r.stopped_by_user else f"stopped early after {r.epochs_run} epochs" if r.stopped_early
                else f"ran all {r.epochs_run} epochs")
        summary = (f"Best epoch <b>{r.best_epoch}</b> ({stop}): validation mean IoU <b>{r.mean_iou:.3f}</b>, "
                   f"pixel accuracy {r.pixel_accuracy:.3f}, training loss {r.train_loss:.4g}, validation loss "
                   f"{r.val_loss:.4g}. The saved model holds the weights of the best epoch.")
    else:
        summary = "No results were recorded."
    data = json.dumps(_json_safe({"history": history, "metadata": meta.model_dump(mode="json")}))
    data = data.replace("</", "<\\/")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(meta.name)}: training report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{_e(meta.name)}</h1>
<p>{_e(meta.description)}</p>
<p>Trained {_e(meta.created)} · {_e(", ".join(meta.class_names))} · {_e(meta.tile_size)} px tiles at downsample
{_e(meta.downsample)}{f" ({meta.pixel_size_um:.3g} µm/px)" if meta.pixel_size_um else ""}</p>
<p class="summary" id="summary">{summary}</p>
{_validation_section(meta)}
<section id="diagnosis"><h2>What this suggests</h2>{_findings(findings, len(history))}</section>
<section id="curves"><h2>Training curves</h2>{_curves(meta, history)}</section>
<section id="confusion"><h2>Confusion matrix</h2>{_confusion(meta)}</section>
<section id="classes"><h2>Classes</h2>{_class_tables(meta)}</section>
<section id="samples"><h2>Validation tiles</h2>{_samples(meta, samples)}</section>
<section id="settings"><h2>Settings</h2>{_settings(meta)}</section>
<script type="application/json" id="report-data">{data}</script>
<script>{CHECK_IMAGES}</script>
</body></html>
"""
    path = Path(folder) / store.REPORT
    path.write_text(page, encoding="utf-8")
    return path


def summary_text(meta: ClassifierMetadata, folder: Path) -> str:
    """A few readable lines about a classifier: what it is, settings that differ from defaults, results per class
    and where its files are (``dlpixel models show``)."""
    lines = [f"{meta.name}" + (f": {meta.description}" if meta.description else ""),
             f"  created      {meta.created}",
             f"  method       {method_line(meta)}",
             f"  model        {meta.architecture} {meta.backbone or ''}".rstrip()
             + (f", frozen encoder blocks: {', '.join(meta.frozen_blocks)}" if meta.frozen_blocks else ""),
             f"  weights      {meta.weights.source if meta.weights else 'no pretrained weights'}",
             f"  input        {', '.join(meta.input_channels)}; {meta.tile_size} px tiles at downsample "
             f"{meta.downsample:g}" + (f" ({meta.pixel_size_um:.3g} µm/px)" if meta.pixel_size_um else ""),
             f"  images       {', '.join(meta.images) or '-'}"]
    from .validation import validation_lines

    if meta.split and meta.split.get("method") != "by_objects":
        split = meta.split
        lines.append(f"  tiles        {split.get('train_tiles', '?')} training, {split.get('val_tiles', '?')} "
                     f"validation ({split.get('method', '?')} split)")
    lines += ["  validation   " + line for line in validation_lines(meta)]
    if meta.training is not None:
        changed = changed_settings(meta.training, meta)
        lines.append("  settings     " + ("all defaults" if not changed else "differ from the defaults:"))
        lines += [f"    {k} = {_show(v)}  (default {_show(d)})" for k, v, d in changed]
    r = meta.results
    if r:
        stop = "stopped by the user" if r.stopped_by_user else "stopped early" if r.stopped_early else "all epochs"
        lines.append(f"  results      best epoch {r.best_epoch} of {r.epochs_run} ({stop}), validation mean IoU "
                     f"{r.mean_iou:.3f}, pixel accuracy {r.pixel_accuracy:.3f}")
        train = meta.labelled_pixels.get("train", {})
        val = meta.labelled_pixels.get("val", {})
        width = max(len(n) for n in meta.class_names)
        lines.append(f"    {'class':{width}s}    IoU  labelled px: training  validation   weight")
        for name in meta.class_names:
            iou = r.per_class_iou.get(name)
            shown = f"{iou:.3f}" if iou is not None else "  n/a"
            w = meta.class_weights.get(name)
            lines.append(f"    {name:{width}s}  {shown}  {train.get(name, 0):>21,}  {val.get(name, 0):>10,}   "
                         + (f"{w:.3g}" if w is not None else "-"))
    lines.append(f"  folder       {folder}")
    files = [p.name for p in sorted(Path(folder).iterdir()) if p.is_file()] if Path(folder).is_dir() else []
    lines.append(f"  files        {', '.join(files)}")
    report = Path(folder) / store.REPORT
    lines.append(f"  report       {report if report.exists() else 'none'}")
    return "\n".join(lines)
