"""The device side of ``apply`` with PyTorch: raw tiles in, class strips out, the host touching only bytes.

Tiles travel to the device in the image's own dtype (uint8 is 4× less than float32) through pinned host buffers
on a copy stream, and are normalised there by ``normalize_torch`` (equal to ``data.preprocessing.normalize``);
the model's probabilities are blended and accumulated there (``DeviceBlender``) and each finished strip comes back
as uint8 class indices (probabilities only when a caller asks for them). Every function here also runs on CPU
tensors, where the tests compare it with the numpy path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..runtime.normalize import TorchNormalizer, normalize_torch

__all__ = ["NOT_COMPUTED", "DeviceBlender", "DeviceStrip", "PinnedUploader", "TorchNormalizer", "class_map",
           "normalize_torch"]

NOT_COMPUTED = 255
"""Class index of a pixel no tile was computed for."""


def class_map(planes: torch.Tensor, computed: torch.Tensor) -> torch.Tensor:
    """uint8 class index per pixel of (K, rows, width) probabilities (the first of equal maxima, as ``argmax``),
    ``NOT_COMPUTED`` where ``computed`` is False."""
    out = planes.argmax(0).to(torch.uint8)
    out.masked_fill_(~computed, NOT_COMPUTED)
    return out


class DeviceStrip:
    """Finished rows [y, y + rows) of the window whose class map (and probabilities) live on the device until read.

    The uint8 class map is copied to pinned host memory without waiting; ``classes()`` waits for that copy only.
    ``probabilities``/``planes`` copy the float32 planes when asked.
    """

    def __init__(self, y: int, classes: torch.Tensor, planes: torch.Tensor | None, stream: Any = None):
        self.y = y
        self._planes = planes
        if classes.device.type == "cuda":
            self._host = torch.empty(classes.shape, dtype=torch.uint8, pin_memory=True)
            self._host.copy_(classes, non_blocking=True)
            self._event: Any = torch.cuda.Event()
            self._event.record(stream)
        else:
            self._host, self._event = classes, None

    def classes(self) -> np.ndarray:
        """(rows, width) uint8 class indices, 255 where nothing was computed."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host.numpy()

    @property
    def computed(self) -> np.ndarray:
        return self.classes() != NOT_COMPUTED

    @property
    def planes(self) -> np.ndarray:
        """(K, rows, width) float32 probabilities, 0 where nothing was computed (copied from the device now)."""
        if self._planes is None:
            raise RuntimeError("this strip was computed without probabilities")
        return self._planes.float().cpu().numpy()

    @property
    def probabilities(self) -> np.ndarray:
        return self.planes.transpose(1, 2, 0)


class DeviceBlender:
    """The blending accumulator of one row of tiles on the device: ``add`` blends probabilities weighted by the
    window, ``shift`` moves the rows below a finished row up, ``strip`` divides out the weights for finished rows.
    The same arithmetic as the numpy accumulator of ``Predictor``, in the same order."""

    def __init__(self, n_classes: int, tile: int, width: int, window: np.ndarray, device: torch.device,
                 probabilities: bool = False):
        self.device = device
        self.tile = tile
        self.window = torch.from_numpy(np.ascontiguousarray(window, np.float32)).to(device)
        self.acc = torch.zeros((n_classes, tile, width), dtype=torch.float32, device=device)
        self.wsum = torch.zeros((tile, width), dtype=torch.float32, device=device)
        self.probabilities = probabilities

    def shift(self, rows: int) -> None:
        t = self.tile
        if rows >= t:
            self.acc.zero_()
            self.wsum.zero_()
            return
        self.acc[:, : t - rows] = self.acc[:, rows:].clone()
        self.wsum[: t - rows] = self.wsum[rows:].clone()
        self.acc[:, t - rows:] = 0
        self.wsum[t - rows:] = 0

    preprocess_seconds = 0.0
    """Host seconds of the last batch's upload and normalisation (launched; the device runs them later)."""
    upload: Any = None
    """Raw tiles to the device (``PinnedUploader``), set by the predictor."""
    normalize: Any = None
    """``TorchNormalizer`` of the image, set by the predictor."""

    def run(self, backend: Any, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        """Raw tiles (H, W, C) to weighted probabilities (N, K, T, T) on the device: upload, normalise, model."""
        with torch.inference_mode():
            t0 = time.perf_counter()
            x = self.normalize(self.upload(tiles))
            self.preprocess_seconds = time.perf_counter() - t0
            return backend.probabilities_on_device(x).mul_(self.window)

    def add(self, weighted: torch.Tensor, i: int, x: int) -> None:
        """Weighted tile ``i`` of a batch at accumulator column ``x``."""
        t = self.tile
        self.acc[:, :, x: x + t] += weighted[i]
        self.wsum[:, x: x + t] += self.window

    def strip(self, y: int, n_rows: int, lo: int, hi: int, c0: int, c1: int) -> DeviceStrip:
        """Rows [y, y + n_rows) of columns [c0, c1): accumulator rows [lo, hi) fill the last ``hi - lo`` of them;
        rows above were never computed (as the host accumulator)."""
        k = self.acc.shape[0]
        planes = torch.zeros((k, n_rows, c1 - c0), dtype=torch.float32, device=self.device)
        computed = torch.zeros((n_rows, c1 - c0), dtype=torch.bool, device=self.device)
        if hi > lo:
            a = self.acc[:, lo:hi, c0:c1]
            w = self.wsum[lo:hi, c0:c1]
            ok = w > 0
            start = n_rows - (hi - lo)
            planes[:, start:] = torch.where(ok, a / torch.where(ok, w, torch.ones_like(w)), planes[:, start:])
            computed[start:] = ok
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        return DeviceStrip(y, class_map(planes, computed), planes if self.probabilities else None, stream)


class PinnedUploader:
    """Batches of raw tiles (N, H, W, C) to the device through two pinned host buffers, copied on a side stream
    so that the copy of one batch overlaps the model on the previous one (CUDA); plain tensors on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._buffers: list[tuple[torch.Tensor | None, Any]] = [(None, None), (None, None)]
        self._turn = 0

    def __call__(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        """The tiles stacked (N, C, H, W) on the device, in their dtype, channels_last in memory."""
        if len({t.dtype for t in tiles}) > 1:  # stored and resampled pixels in one batch: float32 holds both
            tiles = [t.astype(np.float32) for t in tiles]
        shape = (len(tiles),) + tiles[0].shape
        if not self.cuda:
            return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
        buf, done = self._buffers[self._turn]
        dtype = torch.from_numpy(tiles[0][:0]).dtype
        if done is not None:
            done.synchronize()  # the earlier copy out of this buffer has finished
        if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = torch.empty(shape, dtype=dtype, pin_memory=True)
        host = buf[: shape[0]]
        np.stack(tiles, out=host.numpy())
        compute = torch.cuda.current_stream(self.device)
        assert self.stream is not None
        # The copy does not wait for the model on the previous batch: it overlaps it.
        with torch.cuda.stream(self.stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        compute.wait_stream(self.stream)
        dev.record_stream(compute)
        self._buffers[self._turn] = (buf, event)
        self._turn ^= 1
        return dev.permute(0, 3, 1, 2)
