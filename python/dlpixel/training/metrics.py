"""Validation metrics from a confusion matrix accumulated over labelled pixels only."""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values))


class ConfusionMatrix:
    """Counts of (true class, predicted class) over labelled pixels; rows are truth, columns are prediction.

    IoU is reported only for classes present in the targets: a class with no labelled pixel has no IoU (NaN) and is
    left out of the mean, so sparse validation labels do not drag the score down.
    """

    def __init__(self, n_classes: int, ignore_index: int = 255) -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1 (got {n_classes})")
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self._counts = np.zeros((n_classes, n_classes), dtype=np.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch of predicted class indices and targets (same shape, e.g. (N,H,W)); ignored pixels are skipped."""
        p = _as_tensor(pred)
        t = _as_tensor(target)
        if p.shape != t.shape:
            raise ValueError(f"prediction shape {tuple(p.shape)} differs from target shape {tuple(t.shape)}")
        t = t.to(p.device)
        labelled = t != self.ignore_index
        t = t[labelled].long()
        p = p[labelled].long()
        if t.numel() == 0:
            return
        k = self.n_classes
        if t.min() < 0 or t.max() >= k:
            raise ValueError(f"target holds classes outside 0..{k - 1} (and {self.ignore_index} = unlabelled)")
        if p.min() < 0 or p.max() >= k:
            raise ValueError(f"prediction holds classes outside 0..{k - 1}")
        counts = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        self._counts += counts.cpu().numpy()

    @property
    def matrix(self) -> np.ndarray:
        """The K×K int64 counts (a copy): ``matrix[truth, prediction]``."""
        return self._counts.copy()

    def iou_per_class(self) -> np.ndarray:
        """TP / (TP + FP + FN) per class; NaN for classes with no labelled pixel in the targets."""
        m = self._counts.astype(np.float64)
        tp = np.diag(m)
        truth = m.sum(axis=1)
        union = truth + m.sum(axis=0) - tp
        iou = np.full(self.n_classes, np.nan)
        present = truth > 0
        iou[present] = tp[present] / union[present]
        return iou

    def mean_iou(self) -> float:
        """Mean IoU over classes present in the targets; NaN when nothing has been counted."""
        iou = self.iou_per_class()
        present = ~np.isnan(iou)
        return float(iou[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of labelled pixels predicted correctly; NaN when nothing has been counted."""
        total = self._counts.sum()
        return float(np.trace(self._counts) / total) if total else float("nan")

    def reset(self) -> None:
        """Forget every count (start of a new validation pass)."""
        self._counts[:] = 0
