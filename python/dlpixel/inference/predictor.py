"""Tiled, batched, prefetching inference that streams the blended result out in horizontal strips.

Tiles are read (and normalised with the classifier's own ``Preprocessing``) by background threads while the model
runs; each row of tiles is blended into an accumulator one tile high, and every pixel row that no later tile can
touch is handed on at once. Memory is proportional to one row of tiles, never to the image.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..classifiers.metadata import ClassifierMetadata
from ..config import default_overlap
from ..data.base import ImageSource
from ..data.geometry import Frame
from ..data.preprocessing import ChannelStats, read_tile
from ..errors import ConfigError
from ..runtime.events import CancelToken, Emitter
from ..runtime.tiling import Grid, blend_window


class Backend(Protocol):
    """Runs the model: (N, C, T, T) float32 inputs to (N, K, T, T) float32 class probabilities."""

    name: str
    device: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


CPU_CHUNK_PIXELS = 4 * 512 * 512
"""On a CPU a batch runs in chunks of at most this many pixels (4 tiles of 512 px, 16 of 256 px): throughput no
longer grows beyond a few tiles, while the model's intermediate tensors grow with every tile (about 100 MB per
512-px tile for a U-Net), so whole batches of large tiles would set the peak memory of ``apply``."""

TORCH_CPU_CHUNK_PIXELS = 2 * 256 * 256
"""PyTorch on a CPU is fastest on small chunks, about 2 tiles of 256 px (one of 512): on 2 cores an EfficientNet-Lite0
U-Net ran 14-15 tiles/s in chunks of 1-2 tiles, 12-13.5 in chunks of 4 and 9.5 in whole batches of 8, whose
intermediate tensors no longer fit the caches."""


def run_in_chunks(fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, max_pixels: int) -> np.ndarray:
    """``fn`` over ``batch`` (N, C, H, W) in consecutive chunks of at most ``max_pixels`` pixels (one tile at
    least), concatenated."""
    n = max(1, max_pixels // (batch.shape[2] * batch.shape[3]))
    if len(batch) <= n:
        return fn(batch)
    return np.concatenate([fn(batch[i: i + n]) for i in range(0, len(batch), n)])


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax over ``axis`` (through torch: multi-threaded, and several times faster than numpy here)."""
    import torch

    return torch.softmax(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), dim=axis).numpy()


class TorchBackend:
    """PyTorch in eval mode; on CUDA with channels_last and autocast (bf16 where supported, else fp16)."""

    name = "torch"

    def __init__(self, model: object, device: str = "auto", mixed_precision: bool = True):
        import torch

        from ..runtime.device import autocast_dtype, resolve_device

        self.torch = torch
        self.dev = resolve_device(device)
        self.device = self.dev.type
        self.amp = autocast_dtype(self.dev, mixed_precision)
        self.model = model.to(self.dev).eval()  # type: ignore[attr-defined]
        if self.dev.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.dev.type == "cpu":
            return run_in_chunks(self._run, batch, TORCH_CPU_CHUNK_PIXELS)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(batch).to(self.dev, non_blocking=True)
        if self.dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.dev.type, dtype=self.amp, enabled=self.amp is not None):
            probs = torch.softmax(self.model(x).float(), dim=1)
        return probs.cpu().numpy()


class OnnxBackend:
    """ONNX Runtime: CUDA provider when ``onnxruntime-gpu`` is installed, CPU otherwise.

    The session runs without ONNX Runtime's memory pattern, which preallocates one block for every intermediate
    tensor of the batch at once: for a U-Net on a batch of 8 tiles of 512 px that block is about 1.6 GB; without
    it tensors are freed as soon as they are used (peak about 0.75 GB less), at the same speed on CPUs.
    """

    name = "onnx"

    def __init__(self, path: Path, outputs: str = "logits", device: str = "auto"):
        import onnxruntime as ort

        from ..models.onnx import OnnxSession, default_providers

        providers = default_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.enable_mem_pattern = False
        self.session = OnnxSession(path, providers=providers, options=options)
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.providers else "cpu"
        self.outputs = outputs

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            return run_in_chunks(self._run, batch, CPU_CHUNK_PIXELS)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = np.asarray(self.session.run(batch), dtype=np.float32)
        return out if self.outputs == "probabilities" else softmax(out)


def load_backend(folder: Path, meta: ClassifierMetadata, backend: str = "auto", device: str = "auto") -> Backend:
    """The classifier's model on the requested backend; ``auto`` is PyTorch on a GPU, else ONNX Runtime when the
    classifier has an ONNX file (faster on CPUs), else PyTorch."""
    from ..classifiers import store

    onnx_path = folder / store.ONNX
    if meta.architecture == "custom_onnx":
        backend = "onnx"
    if backend == "auto":
        from ..runtime.device import resolve_device

        on_cpu = resolve_device(device).type == "cpu"
        backend = "onnx" if on_cpu and onnx_path.exists() else "torch"
    if backend == "onnx":
        if not onnx_path.exists():
            raise ConfigError(f"classifier '{meta.name}' has no {store.ONNX}; use --backend torch")
        return OnnxBackend(onnx_path, meta.output, device)
    import torch

    from ..models.factory import create_model

    if meta.backbone is None:
        raise ConfigError(f"classifier '{meta.name}' has no PyTorch model; use --backend onnx")
    model, _ = create_model(meta.backbone, meta.preprocessing.n_inputs, len(meta.classes), pretrained=False)
    weights = folder / store.WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"classifier '{meta.name}' has no {store.WEIGHTS} in {folder}; use --backend onnx")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return TorchBackend(model, device)


@dataclass
class Strip:
    """Finished pixel rows [y, y + rows) of the window, at the classifier's resolution."""

    y: int
    planes: np.ndarray
    """(K, rows, width) float32 class probabilities; 0 where no tile was computed."""
    computed: np.ndarray
    """(rows, width) bool: False where no tile was computed (outside the region asked for)."""

    @property
    def probabilities(self) -> np.ndarray:
        """(rows, width, K) view of the probabilities."""
        return self.planes.transpose(1, 2, 0)

    def classes(self) -> np.ndarray:
        """Class index per pixel (the first of equal maxima, as ``argmax``), 255 where nothing was computed."""
        best = self.planes[0].copy()
        out = np.zeros(best.shape, np.uint8)
        for k in range(1, len(self.planes)):
            higher = self.planes[k] > best
            out[higher] = k
            np.maximum(best, self.planes[k], out=best)
        out[~self.computed] = 255
        return out


TileFilter = Callable[[int, int], bool]


class Predictor:
    """Applies a backend to an image tile by tile and yields blended strips."""

    def __init__(
        self,
        backend: Backend,
        meta: ClassifierMetadata,
        tile_size: int | None = None,
        overlap: int | None = None,
        batch_size: int = 8,
        reader_threads: int = 2,
        emit: Emitter | None = None,
        cancel: CancelToken | None = None,
    ):
        self.backend = backend
        self.meta = meta
        self.tile = tile_size or meta.tile_size
        if self.tile % 32:
            raise ConfigError(f"tile size must be a multiple of 32 (got {self.tile})")
        self.overlap = default_overlap(self.tile) if overlap is None else overlap
        if not 0 <= self.overlap < self.tile:
            raise ConfigError(f"overlap must be from 0 to less than the tile size {self.tile} (got {self.overlap})")
        self.batch_size = batch_size
        self.reader_threads = reader_threads
        self.emit = emit or Emitter()
        self.cancel = cancel or CancelToken()
        self.window = blend_window(self.tile, self.overlap)
        self.n_classes = len(meta.classes)

    def image_size(self, source: ImageSource) -> tuple[int, int]:
        """(width, height) of the class map (``geometry.Frame.map_size``: ceil, every full-resolution pixel
        covered)."""
        return Frame(source.width, source.height, self.meta.downsample).map_size

    def grid(self, source: ImageSource) -> Grid:
        w, h = self.image_size(source)
        return Grid(w, h, self.tile, self.overlap)

    def strips(
        self,
        source: ImageSource,
        stats: ChannelStats,
        window: tuple[int, int, int, int] | None = None,
        tile_filter: TileFilter | None = None,
        label: str = "",
    ) -> Iterator[Strip]:
        """Blended strips covering ``window`` (x0, y0, x1, y1 at the classifier's resolution; default the whole
        image), top to bottom. Only tiles that touch the window (and pass ``tile_filter``) are computed."""
        grid = self.grid(source)
        x0, y0, x1, y1 = window or (0, 0, grid.width, grid.height)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(grid.width, x1), min(grid.height, y1)
        if x1 <= x0 or y1 <= y0:
            return
        rows = grid.rows(y0, y1, x0, x1)
        keep = tile_filter or (lambda x, y: True)
        plan = [(y, [x for x in xs if keep(x, y)]) for y, xs in rows]
        total = sum(len(xs) for _, xs in plan)
        width = x1 - x0
        t, k = self.tile, self.n_classes
        # The accumulator spans every tile that touches the window horizontally.
        ax0 = min(xs[0] for _, xs in rows)
        ax1 = max(xs[-1] for _, xs in rows) + t
        acc = np.zeros((k, t, ax1 - ax0), np.float32)
        wsum = np.zeros((t, ax1 - ax0), np.float32)
        buf_y = rows[0][0]
        emitted = y0
        done = 0
        start = time.perf_counter()
        ds = self.meta.downsample
        pre = self.meta.preprocessing

        def read(x: int, y: int) -> np.ndarray:
            # The tile's corner on the map grid: its pixels are exactly the map pixels they stand for.
            tile = read_tile(source, pre, stats, ds, x * ds, y * ds, t)
            return tile.transpose(2, 0, 1)

        def emit_rows(until: int) -> Iterator[Strip]:
            nonlocal emitted
            until = min(until, y1)
            if until <= emitted:
                return
            probs = np.zeros((k, until - emitted, width), np.float32)
            computed = np.zeros((until - emitted, width), bool)
            lo, hi = max(emitted, buf_y), until
            if hi > lo:
                a = acc[:, lo - buf_y: hi - buf_y, x0 - ax0: x1 - ax0]
                w = wsum[lo - buf_y: hi - buf_y, x0 - ax0: x1 - ax0]
                ok = w > 0
                np.divide(a, w, out=probs[:, lo - emitted:], where=ok)
                computed[lo - emitted:] = ok
            yield Strip(emitted, probs, computed)
            emitted = until

        flat = [(y, x) for y, xs in plan for x in xs]
        with ThreadPoolExecutor(max_workers=self.reader_threads, thread_name_prefix="dlpixel-read") as pool:
            pending: deque[Future] = deque()
            ahead = max(2 * self.batch_size, 4)
            cursor = 0

            def fill() -> None:
                nonlocal cursor
                while cursor < len(flat) and len(pending) < ahead:
                    y, x = flat[cursor]
                    pending.append(pool.submit(read, x, y))
                    cursor += 1

            fill()
            for r, (y, xs) in enumerate(plan):
                self.cancel.check()
                if y > buf_y:
                    # Rows above y are complete and already emitted: move the rest of the accumulator up.
                    shift = y - buf_y
                    if shift < t:
                        acc[:, : t - shift] = acc[:, shift:]
                        wsum[: t - shift] = wsum[shift:]
                        acc[:, t - shift:] = 0
                        wsum[t - shift:] = 0
                    else:
                        acc[:] = 0
                        wsum[:] = 0
                    buf_y = y
                for b in range(0, len(xs), self.batch_size):
                    group = xs[b: b + self.batch_size]
                    batch = []
                    for _ in group:
                        batch.append(pending.popleft().result())
                        fill()
                    probs = self.backend(np.stack(batch))
                    probs *= self.window
                    for x, p in zip(group, probs):
                        acc[:, :, x - ax0: x - ax0 + t] += p
                        wsum[:, x - ax0: x - ax0 + t] += self.window
                    done += len(group)
                    elapsed = time.perf_counter() - start
                    self.emit("tiles", image=label, done=done, total=total,
                              tiles_per_second=done / elapsed if elapsed > 0 else None)
                yield from emit_rows(grid.final_row_end(r, rows))
        yield from emit_rows(y1)
