"""The features classifier: a fixed multiscale filter bank and a per-pixel linear head, as one torch module.

The filter bank computes what QuPath's and ilastik's pixel classifiers compute, per input channel and per scale
sigma: the Gaussian-smoothed image, the gradient magnitude, the Laplacian of Gaussian, the two eigenvalues of the
Hessian and the two eigenvalues of the structure tensor (scale-normalised derivatives), plus the channel itself.
The head standardises the features (statistics of the training pixels, stored as buffers) and maps them to class
logits with a 1x1 convolution, so the whole classifier exports to ONNX and runs through the same tiled, blended
``apply`` as a U-Net. Filters use reflect padding; their reach is ``receptive_radius`` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Scales of the features classifier (sigma 8 too measured no better from strokes and doubles the reach)."""
FEATURE_NAMES: tuple[str, ...] = ("gaussian", "gradient_magnitude", "log", "hessian_max", "hessian_min",
                                  "structure_max", "structure_min")
"""Features per channel and sigma, in order (after the channel itself)."""


def _gaussian_1d(sigma: float, order: int, radius: int) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    if order == 1:
        g = -x / sigma**2 * g
    elif order == 2:
        g = (x**2 / sigma**4 - 1 / sigma**2) * g
    return g.float()


def receptive_radius(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Pixels from a pixel that its features depend on (the structure tensor smooths derivatives once more)."""
    return 2 * math.ceil(3 * max(sigmas))


class FilterBank(nn.Module):
    """(N, C, H, W) -> (N, C * (1 + 7 * len(sigmas)), H, W); per channel: the channel, then 7 features per sigma."""

    def __init__(self, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> None:
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)
        for i, s in enumerate(self.sigmas):
            radius = math.ceil(3 * s)
            for order in range(3):
                self.register_buffer(f"k{i}_{order}", _gaussian_1d(s, order, radius), persistent=False)

    def features_per_channel(self) -> int:
        return 1 + len(FEATURE_NAMES) * len(self.sigmas)

    @staticmethod
    def _separable(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
        r = (kx.numel() - 1) // 2
        x = F.pad(x, (r, r, r, r), mode="reflect")
        x = F.conv2d(x, ky.view(1, 1, -1, 1))
        return F.conv2d(x, kx.view(1, 1, 1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        z = x.reshape(n * c, 1, h, w)
        out = [z]
        for i, s in enumerate(self.sigmas):
            k0, k1, k2 = (getattr(self, f"k{i}_{o}") for o in range(3))
            sep = self._separable
            gx, gy = sep(z, k0, k1) * s, sep(z, k1, k0) * s
            gxx, gyy, gxy = sep(z, k0, k2) * (s * s), sep(z, k2, k0) * (s * s), sep(z, k1, k1) * (s * s)
            half_trace = (gxx + gyy) / 2
            root = torch.sqrt(((gxx - gyy) / 2) ** 2 + gxy * gxy + 1e-12)
            jxx, jyy, jxy = sep(gx * gx, k0, k0), sep(gy * gy, k0, k0), sep(gx * gy, k0, k0)
            j_half = (jxx + jyy) / 2
            j_root = torch.sqrt(((jxx - jyy) / 2) ** 2 + jxy * jxy + 1e-12)
            out += [sep(z, k0, k0), torch.sqrt(gx * gx + gy * gy + 1e-12), 2 * half_trace, half_trace + root,
                    half_trace - root, j_half + j_root, j_half - j_root]
        features = torch.cat(out, 1)
        return features.reshape(n, c * features.shape[1], h, w)


def filter_bank_numpy(x: np.ndarray, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> np.ndarray:
    """``FilterBank`` of one tile (C, H, W) float32 computed with OpenCV (the same kernels, reflect borders, the
    same order): several times faster on a CPU than torch's convolutions of one-channel images. Training uses it;
    the saved model computes the same with ``FilterBank``."""
    import cv2

    kernels = [[_gaussian_1d(s, o, math.ceil(3 * s)).numpy() for o in range(3)] for s in sigmas]

    def sep(img: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(img, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REFLECT_101)

    out = []
    for z in np.asarray(x, np.float32):
        out.append(z)
        for s, (k0, k1, k2) in zip(sigmas, kernels):
            gx, gy = sep(z, k0, k1) * s, sep(z, k1, k0) * s
            gxx, gyy, gxy = sep(z, k0, k2) * (s * s), sep(z, k2, k0) * (s * s), sep(z, k1, k1) * (s * s)
            half_trace = (gxx + gyy) / 2
            root = np.sqrt(((gxx - gyy) / 2) ** 2 + gxy * gxy + 1e-12)
            jxx, jyy, jxy = sep(gx * gx, k0, k0), sep(gy * gy, k0, k0), sep(gx * gy, k0, k0)
            j_half = (jxx + jyy) / 2
            j_root = np.sqrt(((jxx - jyy) / 2) ** 2 + jxy * jxy + 1e-12)
            out += [sep(z, k0, k0), np.sqrt(gx * gx + gy * gy + 1e-12), 2 * half_trace, half_trace + root,
                    half_trace - root, j_half + j_root, j_half - j_root]
    return np.stack(out).astype(np.float32, copy=False)


class FeaturesNet(nn.Module):
    """Filter bank, feature standardisation and a 1x1 head: logits (N, n_classes, H, W) for (N, C, H, W)."""

    def __init__(self, in_channels: int, n_classes: int, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> None:
        super().__init__()
        self.bank = FilterBank(sigmas)
        n_features = in_channels * self.bank.features_per_channel()
        self.register_buffer("feature_mean", torch.zeros(1, n_features, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, n_features, 1, 1))
        self.head = nn.Conv2d(n_features, n_classes, 1)

    @property
    def n_features(self) -> int:
        return self.head.in_channels

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        return (self.bank(x) - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.standardised(x))
