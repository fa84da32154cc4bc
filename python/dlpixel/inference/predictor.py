"""Tiled, batched, prefetching inference that streams the blended result out in horizontal strips.

Rows of tiles are read by background threads while the model runs (raw pixels, normalised with the classifier's
own ``Preprocessing`` when their batch is formed); each row of tiles is blended into an accumulator one tile high,
and every pixel row that no later tile can touch is handed on at once. Memory is proportional to one row of tiles,
never to the image. The model runners are in ``backends``; the device side of the PyTorch path in ``gpu``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..classifiers.metadata import ClassifierMetadata
from ..config import default_overlap
from ..data.base import ImageSource
from ..data.geometry import Frame
from ..data.preprocessing import ChannelStats
from ..errors import ConfigError
from ..runtime.events import CancelToken, Emitter
from ..runtime.pipeline import resolved
from ..runtime.tiling import Grid, blend_window
from .backends import Backend
from .reading import normalize_raw, read_raw_block, read_raw_row, tiles_of

AUTO_READERS_CPU = 2
"""``reader_threads: auto`` where the model runs on a CPU: the model is the bottleneck, 2 threads keep it fed
(``bench inference`` 0.93 of the model alone on 2 cores) without taking its cores."""
AUTO_READERS_GPU = 8
"""``reader_threads: auto`` on the device path (at most half the cores): on an H200 with 16 cores,
efficientnet-lite0 at 256 px ran at 0.50 of the model alone with 8 threads and 0.45 with 2 (resnet34 at 512 px:
0.45 with either)."""


def readers_for(setting: int | str, device_path: bool) -> int:
    """``reader_threads`` resolved: ``auto`` is ``AUTO_READERS_GPU`` (at most half the cores, at least
    ``AUTO_READERS_CPU``) on the device path, ``AUTO_READERS_CPU`` on the host path."""
    if setting != "auto":
        return int(setting)
    if not device_path:
        return AUTO_READERS_CPU
    import os

    return max(AUTO_READERS_CPU, min(AUTO_READERS_GPU, (os.cpu_count() or 1) // 2))


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
        reader_threads: int | str = "auto",
        emit: Emitter | None = None,
        cancel: CancelToken | None = None,
        on_device: bool | None = None,
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
        self._reader_threads = reader_threads
        self.emit = emit or Emitter()
        self.cancel = cancel or CancelToken()
        self.window = blend_window(self.tile, self.overlap)
        self.n_classes = len(meta.classes)
        self.on_device = on_device
        """Blend on the model's device (PyTorch): raw tiles in, uint8 class strips out. None: on a CUDA device."""
        self.keep_probabilities = True
        """Whether strips carry probabilities (off: class maps only, nothing else leaves the device)."""
        self.writer_thread = True
        """Whether ``ahead_of_writer`` computes strips in a background thread (else in the caller's, between
        writes)."""
        self.row_readers = "auto"
        """``InferenceConfig.row_readers``: rows read by child processes (``read_process``) or threads of this
        one; ``rows_read_in`` says which the last ``strips`` used."""
        self.rows_read_in = "same_process"
        self.timings: dict[str, float] = {}
        """Seconds per stage of the last ``strips`` (stats: waiting for the image's statistics; read: waiting for
        tiles; model; blend; write: the caller)."""

    @property
    def reader_threads(self) -> int:
        """Threads reading rows (``InferenceConfig.reader_threads``, ``auto`` resolved for this predictor's path)."""
        return readers_for(self._reader_threads, self.uses_device())

    def in_children(self, setting: str) -> bool:
        """Whether ``row_readers`` or ``map_writer`` set to ``setting`` puts that work in child processes:
        ``separate_…``, or ``auto`` where the model runs on a CUDA GPU and strips are blended there."""
        if setting == "auto":
            return self.uses_device() and getattr(self.backend, "device", "cpu") == "cuda"
        return setting.startswith("separate")

    def image_size(self, source: ImageSource) -> tuple[int, int]:
        """(width, height) of the class map (``geometry.Frame.map_size``: ceil, every full-resolution pixel
        covered)."""
        return Frame(source.width, source.height, self.meta.downsample).map_size

    def grid(self, source: ImageSource) -> Grid:
        w, h = self.image_size(source)
        return Grid(w, h, self.tile, self.overlap)

    def uses_device(self) -> bool:
        """Whether ``strips`` blends on the model's device (see ``on_device``)."""
        if not hasattr(self.backend, "probabilities_on_device"):
            return False
        return self.backend.device == "cuda" if self.on_device is None else self.on_device

    def ahead_of_writer(self, strips: Iterable[Strip], name: str = "dlpixel-apply") -> Generator[Strip, None, None]:
        """``strips`` as the writer of ``apply`` takes them: computed in a background thread a few strips ahead of
        the writer (``runtime.pipeline.run_ahead``), so writing overlaps the model (PyTorch and ONNX Runtime
        release the interpreter lock while they compute). On the device path the model runs as a CUDA graph (one
        launch per batch) and the interpreter switches threads more often while it runs
        (``runtime.pipeline.short_switch_interval``), so the launching thread is not held up by the writer's
        Python; ``writer_thread = False`` keeps the strips in the caller's thread instead (the writer then works
        between batches). Either way ``close()`` closes ``strips``."""
        from ..runtime.pipeline import run_ahead, short_switch_interval

        if not self.writer_thread:
            return _same_thread(strips)
        if self.uses_device():
            return _switching(run_ahead(strips, depth=3, name=name), short_switch_interval())
        return run_ahead(strips, name=name)  # type: ignore[return-value]

    def strips(
        self,
        source: ImageSource,
        stats: ChannelStats | Future[ChannelStats],
        window: tuple[int, int, int, int] | None = None,
        tile_filter: TileFilter | None = None,
        label: str = "",
    ) -> Iterator[Strip]:
        """Blended strips covering ``window`` (x0, y0, x1, y1 at the classifier's resolution; default the whole
        image), top to bottom. Only tiles that touch the window (and pass ``tile_filter``) are computed. ``stats``
        may be a future (``runtime.pipeline.in_background``): the first rows are read while it is computed.

        Rows of tiles are read as strips by background threads ahead of the model; batches span rows. On the host
        path the tiles of a batch are normalised and blended in numpy (``reading.read_raw_row``); on the device path
        (``uses_device``) each row goes to the device as one block (``reading.read_raw_block``), is cut into tiles
        there and comes back as uint8 class strips (``gpu``).
        """
        grid = self.grid(source)
        x0, y0, x1, y1 = window or (0, 0, grid.width, grid.height)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(grid.width, x1), min(grid.height, y1)
        if x1 <= x0 or y1 <= y0:
            return
        rows = grid.rows(y0, y1, x0, x1)
        keep = tile_filter or (lambda x, y: True)
        plan = [(y, [x for x in xs if keep(x, y)]) for y, xs in rows]
        total = sum(len(xs) for _, xs in plan)
        t = self.tile
        # The accumulator spans every tile that touches the window horizontally.
        ax0 = min(xs[0] for _, xs in rows)
        ax1 = max(xs[-1] for _, xs in rows) + t
        ds = self.meta.downsample
        pre = self.meta.preprocessing
        device = self.uses_device()
        blender: Any = None  # made once the first rows are being read, with the image's statistics
        timings = self.timings = {"stats": 0.0, "read": 0.0, "preprocess": 0.0, "model": 0.0, "blend": 0.0,
                                  "write": 0.0}
        state = {"buf_y": rows[0][0], "emitted": y0}

        children = self._row_readers_for(source, pre, ds, t)
        self.rows_read_in = "same_process" if children is None else "separate_processes"
        if device:
            from .gpu import host_block, pinned_buffer

            dev = self.backend.dev  # type: ignore[attr-defined]

            def read_row(y: int, xs: list[int]) -> Any:
                # One block of raw pixels per row, page-locked for its upload; cut into tiles on the device.
                if not xs:  # every tile of the row filtered out: nothing to read
                    return None, []
                if children is not None:  # decoded in a child, received straight into page-locked memory
                    return children.read(xs, y, lambda shape, dtype: pinned_buffer(shape, dtype, dev))
                block, offsets = read_raw_block(source, pre, ds, xs, y, t)
                return host_block(block, dev), offsets
        else:
            def read_row(y: int, xs: list[int]) -> Any:
                # Raw pixels (uint8: a quarter of float32) wait in the queue; normalisation comes with the batch.
                if not xs:
                    return []
                if children is not None:
                    return tiles_of(*children.read(xs, y, _numpy_buffer), t)
                return read_raw_row(source, pre, ds, xs, y, t)

        def strip(until: int) -> Strip | None:
            until = min(until, y1)
            emitted, buf_y = state["emitted"], state["buf_y"]
            if until <= emitted:
                return None
            lo, hi = max(emitted, buf_y), until
            out = blender.strip(emitted, until - emitted, lo - buf_y, max(lo, hi) - buf_y, x0 - ax0, x1 - ax0)
            state["emitted"] = until
            return out

        def start_row(r: int) -> Strip | None:
            """Before the first tile of row ``r``: the rows above it are complete; move the accumulator down."""
            out = strip(grid.final_row_end(r - 1, rows)) if r > 0 else None
            y = rows[r][0]
            if y > state["buf_y"]:
                blender.shift(y - state["buf_y"])
                state["buf_y"] = y
            return out

        try:
            readers = self.reader_threads
            with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="dlpixel-read") as pool:
                futures: deque[tuple[int, Future]] = deque()
                ahead = max(2 * self.batch_size, 4)
                cursor, queued = 0, 0
                ready: deque[tuple[int, int, np.ndarray]] = deque()

                def fill() -> None:
                    nonlocal cursor, queued
                    # At least one row per reader thread is in flight, so rows decode in parallel.
                    while cursor < len(plan) and (queued < ahead or len(futures) < readers):
                        y, xs = plan[cursor]
                        futures.append((cursor, pool.submit(read_row, y, xs)))
                        queued += len(xs)
                        cursor += 1

                def take(n: int) -> list[tuple[int, int, np.ndarray]]:
                    nonlocal queued
                    t0 = time.perf_counter()
                    while len(ready) < n and (futures or cursor < len(plan)):
                        fill()
                        r, fut = futures.popleft()
                        xs = plan[r][1]
                        if device and xs:
                            rows_tiles = blender.tiles(*fut.result())
                            ready.extend((r, x, (rows_tiles, i)) for i, x in enumerate(xs))
                        elif not device:
                            ready.extend((r, x, tile) for x, tile in zip(xs, fut.result()))
                        queued -= len(xs)
                        fill()
                    timings["read"] += time.perf_counter() - t0
                    return [ready.popleft() for _ in range(min(n, len(ready)))]

                fill()
                t0 = time.perf_counter()
                stats = resolved(stats)  # computed meanwhile where the caller started it in the background
                timings["stats"] = time.perf_counter() - t0
                blender = (self._device_blender(ax1 - ax0, pre, stats) if device
                           else _HostBlender(self.n_classes, t, ax1 - ax0, self.window, pre, stats))
                done, next_row = 0, 0
                pending: list[Strip] = []
                start = time.perf_counter()
                while True:
                    self.cancel.check()
                    blender.preprocess_seconds = 0.0
                    batch = take(self.batch_size)
                    if not batch:
                        break
                    t0 = time.perf_counter()
                    before = blender.preprocess_seconds
                    probs = blender.run(self.backend, [tile for _, _, tile in batch])
                    t1 = time.perf_counter()
                    timings["preprocess"] += blender.preprocess_seconds
                    timings["read"] -= before  # rows made ready on the device while waiting for them
                    timings["model"] += t1 - t0 - (blender.preprocess_seconds - before)
                    # The strips finished by the previous batch go out now, while this one computes.
                    for out in pending:
                        yield out
                    pending = []
                    t2 = time.perf_counter()
                    timings["write"] += t2 - t1
                    i = 0
                    while i < len(batch):  # each row's run of tiles in the batch is blended at once
                        r = batch[i][0]
                        j = i + 1
                        while j < len(batch) and batch[j][0] == r:
                            j += 1
                        while next_row <= r:
                            out = start_row(next_row)
                            if out is not None:
                                pending.append(out)
                            next_row += 1
                        blender.add_tiles(probs, i, j, [x - ax0 for _, x, _ in batch[i:j]])
                        i = j
                    timings["blend"] += time.perf_counter() - t2
                    done += len(batch)
                    elapsed = time.perf_counter() - start
                    self.emit("tiles", image=label, done=done, total=total,
                              tiles_per_second=done / elapsed if elapsed > 0 else None)
                while next_row < len(plan):
                    out = start_row(next_row)
                    if out is not None:
                        pending.append(out)
                    next_row += 1
                for until in (grid.final_row_end(len(rows) - 1, rows), y1):
                    out = strip(until)
                    if out is not None:
                        pending.append(out)
                for out in pending:
                    t1 = time.perf_counter()
                    yield out
                    timings["write"] += time.perf_counter() - t1
        finally:
            if children is not None:
                children.close()

    def _row_readers_for(self, source: ImageSource, pre: Any, downsample: float, tile: int) -> Any:
        """``read_process.RowReaders`` for this image where ``row_readers`` asks for them (``auto``: on the device
        path on a CUDA GPU) and a child can open the image; None for threads of this process."""
        if not self.in_children(self.row_readers):
            return None
        from .read_process import RowReaders, readable_in_children

        if not readable_in_children(source):
            return None
        from ..runtime.children import ChildError

        try:
            return RowReaders(source, pre, downsample, tile, self.reader_threads)
        except ChildError as err:
            self.emit.log(f"{err}; reading rows in this process instead", level="warning")
            self.row_readers = "same_process"
            return None

    def _device_blender(self, width: int, pre: Any, stats: ChannelStats) -> Any:
        from .gpu import DeviceBlender, TorchNormalizer

        backend: Any = self.backend
        blender = DeviceBlender(self.n_classes, self.tile, width, self.window, backend.dev, self.keep_probabilities)
        blender.normalize = TorchNormalizer(pre, stats, pre.n_inputs, backend.dev)
        return blender


def _numpy_buffer(shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty(shape, dtype)
    return out, out


def _same_thread(strips: Iterable[Strip]) -> Generator[Strip, None, None]:
    yield from strips  # close() reaches ``strips``


def _switching(strips: Iterator[Strip], switch: Any) -> Generator[Strip, None, None]:
    with switch:
        yield from strips  # close() reaches ``strips``


class _HostBlender:
    """The accumulator of one row of tiles in host memory (numpy): probabilities weighted by the blending window,
    and the summed weights."""

    def __init__(self, n_classes: int, tile: int, width: int, window: np.ndarray, pre: Any, stats: ChannelStats):
        self.tile = tile
        self.window = window
        self.pre, self.stats = pre, stats
        self.preprocess_seconds = 0.0
        self.acc = np.zeros((n_classes, tile, width), np.float32)
        self.wsum = np.zeros((tile, width), np.float32)

    def run(self, backend: Backend, tiles: list[np.ndarray]) -> np.ndarray:
        """Raw tiles (H, W, C) to weighted probabilities (N, K, T, T): normalise (as ``read_tile``), model."""
        t0 = time.perf_counter()
        batch = normalize_raw(np.stack(tiles), self.pre, self.stats)
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        self.preprocess_seconds += time.perf_counter() - t0
        probs = backend(batch)
        probs *= self.window
        return probs

    def add_tiles(self, probs: np.ndarray, i0: int, i1: int, xs: list[int]) -> None:
        """Weighted tiles [i0, i1) of a batch at accumulator columns ``xs``, one after the other."""
        t = self.tile
        for i, x in zip(range(i0, i1), xs):
            self.acc[:, :, x: x + t] += probs[i]
            self.wsum[:, x: x + t] += self.window

    def shift(self, rows: int) -> None:
        t = self.tile
        if rows < t:
            self.acc[:, : t - rows] = self.acc[:, rows:]
            self.wsum[: t - rows] = self.wsum[rows:]
            self.acc[:, t - rows:] = 0
            self.wsum[t - rows:] = 0
        else:
            self.acc[:] = 0
            self.wsum[:] = 0

    def strip(self, y: int, n_rows: int, lo: int, hi: int, c0: int, c1: int) -> Strip:
        """Rows [y, y + n_rows) of columns [c0, c1): accumulator rows [lo, hi) fill the last ``hi - lo`` of them;
        rows above were never computed."""
        probs = np.zeros((self.acc.shape[0], n_rows, c1 - c0), np.float32)
        computed = np.zeros((n_rows, c1 - c0), bool)
        if hi > lo:
            a = self.acc[:, lo:hi, c0:c1]
            w = self.wsum[lo:hi, c0:c1]
            ok = w > 0
            start = n_rows - (hi - lo)
            np.divide(a, w, out=probs[:, start:], where=ok)
            computed[start:] = ok
        return Strip(y, probs, computed)
