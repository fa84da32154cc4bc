"""Fine-tuning: a new classifier whose model starts from the trained weights of one already in the project."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..classifiers import store
from ..classifiers.metadata import WeightProvenanceInfo
from ..config import TrainingConfig
from ..errors import ConfigError
from ..runtime.events import Emitter


def check_start_classifier(root: Path, source: str, cfg: TrainingConfig) -> store.ClassifierEntry:
    """The classifier to start from, refused at once (before any tile is read) when its model cannot be the start of
    this one: imported without PyTorch weights, or built on another backbone."""
    entry = store.load_classifier(root, source)
    meta = entry.metadata
    if not (entry.path / store.WEIGHTS).is_file() or meta.architecture != "unet":
        raise ConfigError(f"classifier '{source}' has no trained U-Net weights ({store.WEIGHTS}) to start from; "
                          "choose one trained with dlpixel")
    if meta.backbone != cfg.backbone:
        raise ConfigError(f"classifier '{source}' is a U-Net on {meta.backbone}, this one on {cfg.backbone}: set "
                          f"backbone={meta.backbone} (or add --from-model {source} to take all its settings)")
    return entry


def start_from_classifier(root: Path, source: str, model: nn.Module, cfg: TrainingConfig, n_inputs: int,
                          classes: Sequence[str], emit: Emitter) -> WeightProvenanceInfo:
    """Load ``source``'s trained weights into ``model``. Its input channels must match; with other classes (or
    another order) its output layer starts afresh and everything else is kept."""
    entry = check_start_classifier(root, source, cfg)
    meta = entry.metadata
    if len(meta.input_channels) != n_inputs:
        raise ConfigError(f"classifier '{source}' reads {len(meta.input_channels)} input channel(s) "
                          f"({', '.join(meta.input_channels)}), this one {n_inputs}: choose the same channels "
                          "(--set channels=...) and context_scale")
    state = torch.load(entry.path / store.WEIGHTS, map_location="cpu", weights_only=True)
    if list(meta.class_names) != list(classes):
        own = model.state_dict()
        state = {k: v for k, v in state.items() if not k.startswith("segmentation_head.")
                 and k in own and own[k].shape == v.shape}
        emit.log(f"classes differ from '{source}' ({', '.join(meta.class_names)}): its output layer starts afresh, "
                 "the rest from its weights", level="warning")
    missing, unexpected = model.load_state_dict(state, strict=False)
    left = [k for k in missing if not k.startswith("segmentation_head.")]
    if left or unexpected:
        raise ConfigError(f"classifier '{source}' does not fit this model ({len(left)} missing and "
                          f"{len(unexpected)} unexpected weights); train it again or start from another")
    emit.log(f"starting from the weights of classifier '{source}' (fine-tuning)")
    return WeightProvenanceInfo(source=f"classifier '{source}' of this project (fine-tuned from its weights)",
                                sha256=_sha256(entry.path / store.WEIGHTS), backbone=meta.backbone,
                                classifier=source)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
