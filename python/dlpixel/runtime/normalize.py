"""The classifier's input normalisation (``data.preprocessing.normalize``) as a torch function, for tensors on a
GPU: ``apply`` normalises raw tiles there, and training normalises its raw patch cache there. The tests compare it
with the numpy function element by element on CPU tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..config import NormStrategy
from ..data.preprocessing import ChannelStats, Preprocessing


def _channel_vector(values: Sequence[float], n_channels: int, device: torch.device) -> torch.Tensor:
    """Per-channel float32 values (1, C, 1, 1), repeated for context channels."""
    v = np.asarray(values, dtype=np.float32)
    if n_channels != len(v):
        v = np.tile(v, n_channels // len(v))
    return torch.from_numpy(v).to(device).view(1, -1, 1, 1)


class TorchNormalizer:
    """``data.preprocessing.normalize`` on tensors: raw tiles (N, C, H, W) of any dtype to float32, with the same
    float32 operations in the same order (so equal element by element); context channels use the same statistics,
    as ``read_tile``. Keeps the memory format of its input (NHWC permuted stays channels_last).

    ``stats`` is one image's statistics, or a list of them (training tiles come from several images): then each
    call names the image of every tile (``images``, indices into the list)."""

    def __init__(self, pre: Preprocessing, stats: ChannelStats | Sequence[ChannelStats], n_channels: int,
                 device: torch.device):
        table = [stats] if isinstance(stats, ChannelStats) else list(stats)
        self.offset = torch.cat([_channel_vector(s.offset, n_channels, device) for s in table])
        self.inverse = 1.0 / torch.cat([_channel_vector(s.scale, n_channels, device) for s in table])
        self.clip = pre.normalization.strategy in (NormStrategy.percentile_99.value, NormStrategy.fixed_range.value)
        self.input = None
        if pre.input_mean is not None and pre.input_std is not None:
            self.input = (_channel_vector(pre.input_mean, n_channels, device),
                          _channel_vector(pre.input_std, n_channels, device))

    def __call__(self, raw: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        offset, inverse = self.offset, self.inverse
        if images is not None:
            offset, inverse = offset[images], inverse[images]
        elif len(offset) > 1:
            raise ValueError("statistics of several images: name the image of each tile")
        if raw.dtype == torch.uint16:
            # Widened through int32 (exact): CUDA kernels for the unsigned 16-bit type are few.
            raw = raw.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)
        out = raw.to(torch.float32)
        out = out - offset if out is raw else out.sub_(offset)
        out.mul_(inverse)
        if self.clip:
            out.clamp_(0.0, 1.0)
        if self.input is not None:
            out.sub_(self.input[0]).div_(self.input[1])
        return out


def normalize_torch(raw: torch.Tensor, pre: Preprocessing, stats: ChannelStats) -> torch.Tensor:
    """Raw tiles (N, C, H, W) to float32 model input, equal to ``data.preprocessing.normalize``."""
    return TorchNormalizer(pre, stats, raw.shape[1], raw.device)(raw)
