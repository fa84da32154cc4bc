"""The device side of ``apply`` with PyTorch: raw tiles in, class strips out, the host touching only bytes.

Each row of tiles travels to the device once, as the block of pixels it spans, in the image's own dtype (uint8
is 4× less than float32), through page-locked host memory on a copy stream; there it is normalised by
``normalize_torch`` (equal to ``data.preprocessing.normalize``) and cut into tiles. Batches span rows; the model's
probabilities are blended and accumulated a row's run of tiles at a time (``DeviceBlender``), and each finished
strip comes back as uint8 class indices (probabilities only when a caller asks for them). The host launches a
few operations per row and per batch, so it keeps ahead of the device. Every function here also runs on CPU
tensors, where the tests compare it with the numpy path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..runtime.device import device_index
from ..runtime.normalize import TorchNormalizer, normalize_torch

__all__ = ["NOT_COMPUTED", "DeviceBlender", "DeviceStrip", "TorchNormalizer", "class_map", "host_block",
           "normalize_torch", "pinned_buffer"]

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
        self._arange = torch.arange(tile, device=device)
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        """Where row blocks are uploaded, beside the model's stream."""
        self._cols: dict[tuple[int, ...], torch.Tensor] = {}

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
    """Host seconds spent launching uploads, normalisation and batch assembly (the device runs them later)."""
    normalize: Any = None
    """``TorchNormalizer`` of the image, set by the predictor."""

    def tiles(self, block: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
        """A row's raw block (H, W, C) (a host tensor from ``host_block``) to its normalised tiles (n, C, T, T) on
        the device: one upload (on the copy stream, overlapping the model), one normalisation of the whole block
        (elementwise, so equal to normalising each tile) and one gather of the tiles' columns."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self.copy_stream is not None:
                with torch.cuda.stream(self.copy_stream):
                    dev = block.to(self.device, non_blocking=True)
                compute = torch.cuda.current_stream(self.device)
                compute.wait_stream(self.copy_stream)
                dev.record_stream(compute)
            else:
                dev = block
            x = self.normalize(dev.permute(2, 0, 1).unsqueeze(0))[0]  # (C, H, W)
            out = x[:, :, self._columns(offsets)].permute(2, 0, 1, 3)  # (n, C, H, T)
        self.preprocess_seconds += time.perf_counter() - t0
        return out

    def _columns(self, starts: Sequence[int]) -> torch.Tensor:
        """(n, T) column indices of tiles starting at ``starts``, on the device; rows repeat the same few patterns,
        so each is sent once (``device_index``: without waiting for the device)."""
        key = tuple(starts)
        cols = self._cols.get(key)
        if cols is None:
            if len(self._cols) >= 256:
                self._cols.clear()
            cols = device_index(key, self.device)[:, None] + self._arange
            self._cols[key] = cols
        return cols

    def run(self, backend: Any, items: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """Tiles (a row tensor of ``tiles``, index in it) to weighted probabilities (N, K, T, T) on the device: the
        runs of tiles of each row concatenated into one batch (channels_last on CUDA), the model, the window."""
        with torch.inference_mode():
            t0 = time.perf_counter()
            pieces: list[torch.Tensor] = []
            start = 0
            for i in range(1, len(items) + 1):
                if i == len(items) or items[i][0] is not items[start][0] or items[i][1] != items[i - 1][1] + 1:
                    rows, a = items[start]
                    pieces.append(rows[a: a + i - start])
                    start = i
            fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
            x = (torch.cat(pieces) if len(pieces) > 1 else pieces[0]).contiguous(memory_format=fmt)
            self.preprocess_seconds += time.perf_counter() - t0
            return backend.probabilities_on_device(x).mul_(self.window)

    def add_tiles(self, weighted: torch.Tensor, i0: int, i1: int, xs: Sequence[int]) -> None:
        """Weighted tiles [i0, i1) of a batch, all of one row, at accumulator columns ``xs``: one ``index_add_``
        each for the probabilities and the weights (on a CPU in tile order, as the host accumulator adds them)."""
        t, m = self.tile, i1 - i0
        with torch.inference_mode():
            cols = self._columns(xs).reshape(-1)
            k = self.acc.shape[0]
            part = weighted[i0:i1].permute(1, 2, 0, 3).reshape(k, t, m * t)
            self.acc.index_add_(2, cols, part)
            self.wsum.index_add_(1, cols, self.window.repeat(1, m))

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


def host_block(block: np.ndarray, device: torch.device) -> torch.Tensor:
    """A raw block (H, W, C) as a host tensor ready for ``DeviceBlender.tiles``: copied into page-locked memory
    for a CUDA device (the upload then runs on a stream while the host goes on; PyTorch's caching host allocator
    keeps the buffer until that copy is done), the array itself otherwise. Called by the reading threads."""
    host = torch.from_numpy(np.ascontiguousarray(block))
    if device.type != "cuda":
        return host
    pinned, _ = pinned_buffer(block.shape, block.dtype, device)
    return pinned.copy_(host)


def pinned_buffer(shape: tuple[int, ...], dtype: np.dtype, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """An empty host tensor for a raw block that a child process sends (``read_process``), page-locked for a CUDA
    device, and a numpy view of it to receive the bytes into: the block is uploaded from where it arrived."""
    kind = torch.from_numpy(np.empty(0, dtype)).dtype
    host = torch.empty(shape, dtype=kind, pin_memory=device.type == "cuda")
    return host, host.numpy()
