"""Losses for sparse labels: every pixel marked ``ignore_index`` is left out, and class weights apply throughout.

smp's Dice and focal losses neither take per-class weights nor leave absent classes out of the mean, so these are
written here in plain PyTorch. Every loss works in float32 whatever the logits' precision (fp16/bf16 under autocast),
and a batch without a labelled pixel gives a zero loss (every weight 0, the denominators clamped) that still has a
``grad_fn``. No loss reads a value back from the device, so a GPU step is launched whole without waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Loss

WEIGHT_RANGE: tuple[float, float] = (0.1, 10.0)
"""Bounds of the automatic class weights, applied before the user's multipliers."""


def class_weights_from_counts(pixel_counts: Sequence[int], multipliers: Sequence[float]) -> np.ndarray:
    """Per-class loss weights from labelled pixel counts: inverse pixel frequency, clipped, times user multipliers.

    ``w_k = clip(T / (P * n_k), 0.1, 10) * m_k`` where ``n_k`` is class k's labelled pixel count, ``T = sum(n_k)``,
    ``P`` the number of classes with ``n_k > 0`` and ``m_k`` the multiplier. Before clipping, the weights' mean over
    labelled pixels (``sum(n_k * w_k) / T``) is exactly 1, so the loss keeps its scale however unbalanced the labels.
    A class with no labelled pixel gets the upper bound (10) times its multiplier: it cannot add to the loss of this
    data, and callers that need every class labelled should check the counts themselves.
    """
    counts = np.asarray(pixel_counts, dtype=np.float64)
    mult = np.asarray(multipliers, dtype=np.float64)
    if counts.ndim != 1 or counts.shape != mult.shape:
        raise ValueError(f"{counts.size} pixel counts but {mult.size} multipliers; give one of each per class")
    if (counts < 0).any():
        raise ValueError(f"pixel counts must be 0 or more (got {list(pixel_counts)})")
    if not (mult > 0).all():
        raise ValueError(f"class weight multipliers must be positive (got {list(multipliers)})")
    low, high = WEIGHT_RANGE
    present = counts > 0
    weights = np.full(counts.shape, high)
    if present.any():
        weights[present] = counts.sum() / (present.sum() * counts[present])
    return (np.clip(weights, low, high) * mult).astype(np.float32)


class _SparseLoss(nn.Module):
    """Shared parts: float32 logits, a labelled-pixel mask and per-pixel class weights."""

    weight: torch.Tensor | None

    def __init__(self, class_weights: torch.Tensor | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        self.register_buffer("weight", weight)

    def _prepare(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"expected logits (N,K,H,W) and target (N,H,W), got {tuple(logits.shape)} and "
                             f"{tuple(target.shape)}")
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise ValueError(f"{self.weight.numel()} class weights for {logits.shape[1]} classes")
        labelled = target != self.ignore_index
        safe_target = torch.where(labelled, target, torch.zeros_like(target)).long()
        return logits.float(), labelled, safe_target

    def _pixel_weights(self, labelled: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return labelled.float()
        return self.weight.to(safe_target.device)[safe_target] * labelled


class CrossEntropyLoss(_SparseLoss):
    """Cross-entropy over labelled pixels, weighted by class: ``sum(w_i * ce_i) / sum(w_i)``, as ``F.cross_entropy``."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            logits, labelled, safe_target = self._prepare(logits, target)
            per_pixel = F.cross_entropy(logits, safe_target, reduction="none")
            w = self._pixel_weights(labelled, safe_target)
            return (per_pixel * w).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)


class FocalLoss(_SparseLoss):
    """Focal loss ``-(1 - p_t)^gamma * log(p_t)`` with per-pixel alpha = the target's class weight.

    Normalised like weighted cross-entropy (divided by the sum of alphas), so with ``gamma=0`` it equals it.
    """

    def __init__(self, class_weights: torch.Tensor | None = None, ignore_index: int = 255, gamma: float = 2.0) -> None:
        super().__init__(class_weights, ignore_index)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            logits, labelled, safe_target = self._prepare(logits, target)
            log_pt = F.log_softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
            focal = -((1.0 - log_pt.exp()).clamp_min(0.0) ** self.gamma) * log_pt
            w = self._pixel_weights(labelled, safe_target)
            return (focal * w).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)


class DiceLoss(_SparseLoss):
    """``1 - Dice`` per class over the batch's labelled pixels, averaged (class-weighted) over classes present there.

    Ignored pixels add to neither the intersection nor the cardinalities; a class with no labelled pixel in the
    batch is left out of the mean rather than scored.
    """

    def __init__(self, class_weights: torch.Tensor | None = None, ignore_index: int = 255, eps: float = 1e-7) -> None:
        super().__init__(class_weights, ignore_index)
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            logits, labelled, safe_target = self._prepare(logits, target)
            n_classes = logits.shape[1]
            mask = labelled.unsqueeze(1).float()
            probs = logits.softmax(dim=1) * mask
            truth = F.one_hot(safe_target, n_classes).permute(0, 3, 1, 2).float() * mask
            dims = (0, 2, 3)
            intersection = (probs * truth).sum(dims)
            cardinality = probs.sum(dims) + truth.sum(dims)
            dice = 2.0 * intersection / cardinality.clamp_min(self.eps)
            present = (truth.sum(dims) > 0).float()
            class_w = present if self.weight is None else present * self.weight.to(present.device)
            return ((1.0 - dice) * class_w).sum() / class_w.sum().clamp_min(torch.finfo(torch.float32).tiny)


class SumLoss(nn.Module):
    """The sum of several losses, each with weight 1 (``ce_dice`` = CE + Dice)."""

    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = self.losses[0](logits, target)
        for loss in self.losses[1:]:
            total = total + loss(logits, target)
        return total


def build_loss(name: str | Loss, class_weights: torch.Tensor | None, ignore_index: int = 255) -> nn.Module:
    """The loss named by the ``loss`` setting, taking logits (N,K,H,W) and targets (N,H,W) with ``ignore_index``."""
    try:
        key = Loss(name).value
    except ValueError:
        raise ValueError(f"unknown loss '{name}'; choose one of: {', '.join(m.value for m in Loss)}") from None
    args = (class_weights, ignore_index)
    if key == Loss.ce.value:
        return CrossEntropyLoss(*args)
    if key == Loss.dice.value:
        return DiceLoss(*args)
    if key == Loss.focal.value:
        return FocalLoss(*args)
    if key == Loss.ce_dice.value:
        return SumLoss(CrossEntropyLoss(*args), DiceLoss(*args))
    return SumLoss(FocalLoss(*args), DiceLoss(*args))
