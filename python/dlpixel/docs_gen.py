"""docs/PARAMETERS.md, generated from the settings models so that the docs never disagree with the code.

Keys, defaults, allowed values and descriptions come from ``TrainingConfig`` and ``InferenceConfig`` (a field's
attribute docstring is its description); the sections are the ones generated scripts use. Only the advice, and a
short meaning for fields that have no docstring, are written here. Regenerate with
``python -m dlpixel.docs_gen > docs/PARAMETERS.md``; ``tests/test_docs.py`` fails when the file is stale.
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from .config import BACKBONES, ENCODER_BLOCKS, InferenceConfig, TrainingConfig
from .qupath.scripting import INFERENCE_SECTIONS, TRAINING_SECTIONS

MEANING: dict[str, str] = {
    # training
    "description": "Free text stored with the classifier; `dlpixel models show` prints it.",
    "architecture": "The network design of `method: unet`. A U-Net is the network dlpixel trains; a network "
    "trained elsewhere comes in through `dlpixel models import-onnx`.",
    "backbone": "The encoder half of the U-Net, the part that can start from pretrained weights.",
    "pretrained": "Start the encoder from published weights (ImageNet or histology) instead of random values.",
    "tile_size": "Side of the square training tiles, in pixels at the training resolution.",
    "downsample": "Resolution of the classifier: 1 = full resolution, 2 = half, and so on. `apply` reads the images "
    "at the same downsample.",
    "validation_split": "Share of the labelled pixels held out to validate each epoch.",
    "epochs": "Most passes over the training tiles; early stopping can end the run sooner.",
    "batch_size": "Tiles per optimisation step (and per validation batch).",
    "learning_rate": "Peak step size of the AdamW optimiser.",
    "weight_decay": "AdamW's weight decay, a mild pull of the weights towards zero.",
    "scheduler": "How the learning rate changes over the run.",
    "loss": "What training minimises; unlabelled pixels never count.",
    "early_stop_metric": "The validation measure that picks the best epoch and drives early stopping.",
    "early_stop_patience": "Epochs without improvement before training stops; 0 never stops early.",
    "precision": "`bf16` or `fp16`: the model computes in 16-bit floats on CUDA GPUs (bf16 falls back to fp16 where "
    "the GPU lacks it); `fp32`: full precision. No effect on CPU or Apple MPS. Replaces `mixed_precision` "
    "(true = bf16, false = fp32), which older settings still accept.",
    "compile": "Compile the model with `torch.compile` on CUDA: a minute more at the start, faster steps on long runs.",
    "log_every": "On a GPU, batches between loss read-outs (and the non-finite-loss check): each read-out makes the "
    "CPU wait for the GPU.",
    "augment.hflip": "Random left-right flips of training tiles.",
    "augment.vflip": "Random top-bottom flips of training tiles.",
    "augment.rot90": "Random quarter turns of training tiles.",
    "augment.color_jitter": "Random brightness and contrast changes, drawn separately for each channel.",
    "augment.elastic": "Smooth random warps of tile and labels together (typical shift: 1% of the tile side).",
    "normalization.strategy": "How raw pixel values are scaled before the model sees them.",
    "normalization.per_channel": "Compute the statistics for each channel on its own instead of pooling all channels.",
    "seed": "Seed of the train/validation split, the new layers' initial weights, shuffling and augmentation.",
    "device": "Where training runs: `auto` takes a CUDA GPU, then Apple MPS, then the CPU.",
    # inference
    "inference.output": "What `apply` writes: areas per annotation, one object per class region, a class map, or "
    "one probability map per class.",
    "inference.tile_size": "Tile side at apply time; null = the classifier's training tile size.",
    "inference.batch_size": "Tiles per model call.",
    "inference.device": "`auto` takes a CUDA GPU, then Apple MPS, then the CPU (ONNX Runtime: its CUDA provider when "
    "`onnxruntime-gpu` is installed, else the CPU).",
    "inference.backend": "`torch` (PyTorch), `onnx` (ONNX Runtime) or `auto`: PyTorch on a CUDA GPU, otherwise ONNX "
    "Runtime when the classifier has `model.onnx`.",
    "inference.reader_threads": "Background threads that read rows of tiles (decoding off the GIL) while the model "
    "runs; on the CPU path they also normalise.",
    "inference.precision": "`bf16` or `fp16`: PyTorch computes in 16-bit floats on CUDA GPUs; `fp32`: full precision. "
    "ONNX Runtime and CPUs compute in fp32. Recorded in the run's events.",
    "inference.object_type": "QuPath object type of the objects written by `output: objects`.",
}
"""What a setting does, for fields whose docstring in ``config/__init__.py`` does not say it."""

GUIDANCE: dict[str, str] = {
    # training
    "description": "Name the tissue, the stain and the classes.",
    "architecture": "Leave as is.",
    "pseudo_labels": "Try it when a U-Net trained on strokes paints halos around objects or fills gaps between "
    "them: on real nuclei it raised the U-Net from 0.45 to 0.68 object IoU (BEST_PRACTICES.md), still below "
    "`method=features`.",
    "prior_correction": "Keep on: strokes rarely cover the classes in the proportions the image does; on real "
    "nuclei and bacteria it raised the foreground IoU by 0.02 (BEST_PRACTICES.md). Off to compare with the raw head.",
    "method": "Leave `auto`: on real images the features classifier beat QuPath's random forest from 30 strokes and "
    "a U-Net both from strokes and from a densely labelled half image (131,072 labelled pixels; BEST_PRACTICES.md); "
    "above 400,000 labelled pixels, more than it learns from, `auto` trains a U-Net. Set `unet` to train a U-Net on "
    "fewer labels, `features` to keep the features classifier on more. The report and `dlpixel models show` say "
    "which was trained and why.",
    "backbone": "`resnet34` is a sound first choice. `efficientnet-lite0` is small and needs no download. For H&E "
    "at about 20x try a histology ResNet-50 (`resnet50_lunit-swav` …). See BEST_PRACTICES.md.",
    "pretrained": "Keep on: pretrained encoders learn from far fewer annotations.",
    "freeze": "`auto` suits most projects. Freeze more when validation loss climbs (overfitting), less when both "
    "losses stall at a poor IoU.",
    "tile_size": "256 for cell-scale structures, 512 for tissue regions. Smaller tiles give more tiles from small "
    "annotations (the demo's U-Net uses 64 on a 512 px image).",
    "downsample": "1 when cells decide the class; 2–4 when tissue architecture does (faster, more context per tile).",
    "context_scale": "Try 2–4 when a tile alone is too small to tell the classes apart; costs a second read per tile.",
    "tile_overlap": "10–25 draws more tiles from few annotations. The extra tiles are near copies, so going higher "
    "adds little.",
    "line_stroke_width": "Widen it when polylines trace broad structures; keep it narrow along thin ones. At 0, "
    "lines are drawn 5 px wide.",
    "validation_split": "0.15–0.25 is usual; 0.1 when annotations are scarce. The split moves whole images or blocks "
    "of tiles, so the share reached is approximate.",
    "epochs": "50–200 for few tiles, 20–100 for many. Overshooting is safe: early stopping ends the run and the "
    "best epoch's weights are kept.",
    "batch_size": "8 fits 512 px tiles on an 8 GB GPU; lower it after an out-of-memory error.",
    "learning_rate": "1e-3 works for most runs; try 1e-4 when the loss jumps up and down.",
    "weight_decay": "Rarely worth changing.",
    "scheduler": "`one_cycle` (warm-up, then anneal, per batch) is the best default. `cosine` anneals per epoch, "
    "`step` divides the rate by 10 every third of the epochs, `plateau` halves it when the early-stopping metric "
    "stalls for a third of the patience.",
    "loss": "`ce_dice` (cross-entropy + Dice) is the default to beat. `focal` and `focal_dice` weight hard pixels "
    "more. Class weights apply to every loss.",
    "early_stop_metric": "`mean_iou` follows what you will look at more closely than `val_loss` does.",
    "early_stop_patience": "10–20 for full runs; shorter (the demo's U-Net uses 8) for quick trials.",
    "precision": "Leave `bf16`; `fp32` only to rule it out when a GPU run gives a non-finite loss.",
    "compile": "Off for short runs; on for runs of many epochs on a CUDA GPU.",
    "log_every": "Leave 10.",
    "augment.hflip": "Keep on: sections have no left or right.",
    "augment.vflip": "Keep on for most histology.",
    "augment.rot90": "Together with both flips this gives all 8 orientations of a tile.",
    "augment.color_jitter": "Turn on when stain strength differs between slides (H&E, IHC); leave off for "
    "fluorescence when brightness carries meaning.",
    "augment.elastic": "For tissue that is stretched or folded; training slows down.",
    "channels": "Leave null for RGB. For fluorescence pick the channels that matter, by name: `apply` finds them by "
    "name in each image, whatever their position.",
    "classes": "Leave null to train every annotated class. List classes to leave some out or fix the output order.",
    "class_weights": "Raise a class that scores poorly to 2–3, e.g. `--set class_weights.Tumor=2`.",
    "normalization.strategy": "`percentile_99` suits most images. `min_max` for clean images without outliers, "
    "`z_score` for fluorescence with stable intensities, `fixed_range` when the value range is known (with min/max).",
    "normalization.per_channel": "On for fluorescence channels of very different brightness; off for RGB, so that "
    "colour balance is kept.",
    "normalization.image_level": "Keep on: each image is scaled by its own statistics, which evens out brightness "
    "differences between slides. Off scales every image by the training images' pooled statistics.",
    "normalization.min": "E.g. 0 for 12-bit data.",
    "normalization.max": "E.g. 4095 for 12-bit data, 255 for 8-bit.",
    "seed": "Change it to see how much results vary from run to run.",
    "num_workers": "auto is measured: on an H100 with 16 cores, 4 workers took the training loop from 0.43 to 0.77 "
                   "of the step alone.",
    "device": "Leave `auto` unless you need to keep a GPU free.",
    # inference
    "inference.output": "`measurements` to quantify regions, `objects` to see and count regions in QuPath, `map` for "
    "a class-map image of the whole slide, `overlay` to see the map on the open image in QuPath, `probabilities` for "
    "further analysis.",
    "inference.scope": "`image` for whole slides; `annotations` to measure regions you drew; `selected` from "
    "QuPath only.",
    "inference.tile_size": "Larger tiles keep a GPU busier; the classifier's own size is safe.",
    "inference.overlap": "A quarter tile is enough to hide seams; more only costs time.",
    "inference.batch_size": "Raise on a large GPU; lower after an out-of-memory error.",
    "inference.device": "Leave `auto`.",
    "inference.backend": "Leave `auto`; ONNX Runtime is usually the faster of the two on CPUs.",
    "inference.reader_threads": "Leave `auto`; raise when images sit on slow or network storage.",
    "inference.refine": "Leave `auto`. `none` to see the model's own boundaries; `watershed` to try it on a U-Net.",
    "inference.precision": "Leave `bf16` on a GPU (about 2× the tiles/s of fp32 on tensor cores).",
    "inference.cuda_graphs": "Leave on.",
    "inference.row_readers": "Leave `auto`; `same_process` where a system forbids starting child processes.",
    "inference.map_writer": "Leave `auto`; `same_process` where a system forbids starting child processes.",
    "inference.object_type": "`detection` for many objects (lighter in QuPath); `annotation` when you want to edit "
    "them.",
    "inference.min_object_area": "Leave unset (9 classifier pixels) or raise to the smallest region that matters, "
    "e.g. 20 µm²; 0 keeps every speck.",
    "inference.min_hole_area": "Fills small holes inside objects.",
    "inference.simplify": "0 keeps exact pixel outlines; 1–2 px gives lighter polygons for large slides.",
}
"""Advice per setting (training keys as ``--set`` spells them; inference keys prefixed ``inference.``)."""

RANGES: dict[str, str] = {
    "tile_size": "multiple of 32, ≥ 32",
    "downsample": "≥ 1",
    "context_scale": "integer ≥ 1",
    "tile_overlap": "0–50 (percent)",
    "line_stroke_width": "≥ 0 (pixels)",
    "validation_split": "between 0 and 1",
    "epochs": "integer ≥ 1",
    "batch_size": "integer ≥ 1",
    "learning_rate": "> 0",
    "early_stop_patience": "integer ≥ 0",
    "channels": "list of channel names or 0-based indices, or null",
    "classes": "list of at least 2 class names, or null",
    "class_weights": "{class name: multiplier > 0}",
    "normalization.min": "number, or null; below max",
    "normalization.max": "number, or null; above min",
    "num_workers": "integer ≥ 0, or auto",
    "log_every": "integer ≥ 1",
    "inference.tile_size": "multiple of 32, ≥ 32, or null",
    "inference.overlap": "0 to less than the tile size, or null",
    "inference.batch_size": "integer ≥ 1",
    "inference.reader_threads": "integer ≥ 1, or auto",
    "inference.min_object_area": "≥ 0",
    "inference.min_hole_area": "≥ 0",
    "inference.simplify": "≥ 0 (pixels)",
}
"""Limits that validators enforce (the types alone do not show them)."""

INTRO = """\
# Parameters

Every setting of `dlpixel train` and `dlpixel apply`, with its default. This page is generated from dlpixel's
settings models (`python -m dlpixel.docs_gen > docs/PARAMETERS.md`), so the defaults here are the ones you get.

Give a training setting as `--set key=value` (repeat `--set`; nested keys with dots: `--set augment.elastic=true`,
lists with commas: `--set classes=Tumor,Stroma`), in a JSON file (`--config settings.json`), or take all of a
saved classifier's settings with `--from-model NAME`; later sources win. `dlpixel train --help-settings` prints
the same keys and defaults. Groovy scripts use the same keys ([SCRIPTING.md](SCRIPTING.md)). How training uses
them: [TRAINING.md](TRAINING.md); what to change when results are poor: [BEST_PRACTICES.md](BEST_PRACTICES.md).
"""

INFERENCE_INTRO = """\
Settings of `dlpixel apply` (and of `DLPixel.apply` in scripts): `--set key=value`, `--config FILE`, or the
dedicated flags (`--output`, `--scope`, `--tile-size`, `--overlap`, `--batch-size`, `--device`, `--backend`,
`--object-type`, `--min-object-area`, `--min-hole-area`, `--simplify`), which win over both. \
See [INFERENCE.md](INFERENCE.md).
"""


def _show(value: Any) -> str:
    """A default as it is typed after ``--set key=``."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _literals(annotation: Any) -> list[str] | None:
    """The fixed choices an annotation allows (Literal values, Enum values, booleans), or None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    if annotation is bool:
        return ["true", "false"]
    return None


def _allowed(key: str, annotation: Any) -> str:
    if key in RANGES:
        return RANGES[key]
    if key == "backbone":
        return ", ".join(f"`{b}`" for b in BACKBONES)
    choices = _literals(annotation)
    if choices is not None:
        return ", ".join(f"`{c}`" for c in choices)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = []
        for arg in typing.get_args(annotation):
            if arg is type(None):
                parts.append("null")
            elif (lit := _literals(arg)) is not None:
                parts.append(", ".join(f"`{c}`" for c in lit))
            elif typing.get_origin(arg) is list:
                parts.append("a list of encoder blocks (" + ", ".join(f"`{b}`" for b in ENCODER_BLOCKS) + ")")
            else:
                parts.append(getattr(arg, "__name__", str(arg)))
        return ", or ".join(parts)
    names = {int: "integer", float: "number", str: "text"}
    return names.get(annotation, str(annotation))


def _cell(text: str) -> str:
    """One Markdown table cell: rst ``code`` made Markdown, Python's None written as null, pipes escaped."""
    text = re.sub(r"\bNone\b", "null", text.replace("``", "`"))
    return " ".join(text.split()).replace("|", "\\|")


def settings(model: type[BaseModel], sections: tuple[tuple[str, tuple[str, ...]], ...], doc_prefix: str = ""
             ) -> Iterator[tuple[str, list[tuple[str, str, Any, Any, str]]]]:
    """(section title, rows) for every field of ``model``, a row being (key, doc key, annotation, default,
    description); nested models are flattened to dotted keys, and fields in no section come last."""
    defaults = model()
    placed = {k for _, keys in sections for k in keys}
    extra = tuple(k for k in model.model_fields if k not in placed)
    for title, keys in (*sections, *((("Other settings", extra),) if extra else ())):
        rows: list[tuple[str, str, Any, Any, str]] = []
        for key in keys:
            field = model.model_fields[key]
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                for name, inner in sub.model_fields.items():
                    dotted = f"{key}.{name}"
                    rows.append((dotted, doc_prefix + dotted, inner.annotation, getattr(getattr(defaults, key), name),
                                 inner.description or MEANING.get(doc_prefix + dotted, "")))
                continue
            rows.append((key, doc_prefix + key, field.annotation, getattr(defaults, key),
                         field.description or MEANING.get(doc_prefix + key, "")))
        yield title, rows


def _table(model: type[BaseModel], sections: tuple[tuple[str, tuple[str, ...]], ...], doc_prefix: str) -> list[str]:
    out: list[str] = []
    for title, rows in settings(model, sections, doc_prefix):
        out += [f"### {title}", "", "| setting | default | allowed | what it does | guidance |",
                "|---|---|---|---|---|"]
        for key, doc_key, annotation, default, description in rows:
            out.append(f"| `{key}` | {_show(default)} | {_cell(_allowed(doc_key, annotation))} | "
                       f"{_cell(description)} | {_cell(GUIDANCE.get(doc_key, ''))} |")
        out.append("")
    return out


def parameters_markdown() -> str:
    """The whole of docs/PARAMETERS.md."""
    lines = [INTRO, "## Training", ""]
    lines += _table(TrainingConfig, TRAINING_SECTIONS, "")
    lines += ["## Inference", "", INFERENCE_INTRO]
    lines += _table(InferenceConfig, INFERENCE_SECTIONS, "inference.")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(parameters_markdown())
