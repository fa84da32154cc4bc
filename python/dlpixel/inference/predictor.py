"""Tiled, batched, prefetching inference that streams the blended result out in horizontal strips.

Tiles are read (and normalised with the classifier's own ``Preprocessing``) by background threads while the model
runs; each row of tiles is blended into an accumulator one tile high, and every pixel row that no later tile can
touch is handed on at once. Memory is proportional to one row of tiles, never to the image.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..classifiers.metadata import ClassifierMetadata
from ..config import default_overlap
from ..data.base import ImageSource
from ..data.geometry import Frame
from ..data.preprocessing import ChannelStats
from ..errors import ClassifierError, ConfigError
from ..runtime.events import CancelToken, Emitter
from ..runtime.tiling import Grid, blend_window
from .reading import normalize_raw, read_raw_block, read_raw_row

AUTO_READERS_CPU = 2
"""``reader_threads: auto`` where the model runs on a CPU: the model is the bottleneck, 2 threads keep it fed
(``bench inference`` 0.93 of the model alone on 2 cores) without taking its cores."""
AUTO_READERS_GPU = 8
"""``reader_threads: auto`` on the device path (at most half the cores): on an H200 with 16 cores,
efficientnet-lite0 at 256 px ran at 0.50 of the model alone with 8 threads and 0.45 with 2 (resnet34 at 512 px:
0.45 with either)."""


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
    """Softmax over ``axis`` in float32, in place where it can (numpy: 13 ms for 4 × 3 × 512² on one core, against
    23 ms through torch, and ONNX Runtime on a CPU then never needs torch imported: 5 s of start-up on a busy
    2-core machine)."""
    out = np.asarray(logits, dtype=np.float32)
    out -= out.max(axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis, keepdims=True)
    return out


class TorchBackend:
    """PyTorch in eval mode; on CUDA with channels_last and autocast (bf16 where supported, else fp16), and with
    ``cuda_graphs`` the model replayed as a CUDA graph on the device path: one launch per batch instead of one per
    layer, so the launching thread needs the interpreter lock a few times per batch while the writer and the
    readers work beside it (captured once per tile shape at the batch size of its first call; shorter batches run
    padded to it; a model that cannot be captured runs as it is, with one warning)."""

    name = "torch"

    def __init__(self, model: object, device: str = "auto", precision: str | bool = "bf16", compile: bool = False,
                 cuda_graphs: bool = True):
        import torch

        from ..runtime.device import autocast_dtype, precision_name, resolve_device

        self.torch = torch
        self.dev = resolve_device(device)
        self.device = self.dev.type
        self.amp = autocast_dtype(self.dev, precision)
        self.precision = precision_name(self.amp)
        self.model = model.to(self.dev).eval()  # type: ignore[attr-defined]
        self.cuda_graphs = cuda_graphs and self.dev.type == "cuda" and not compile
        self._graphs: dict[tuple[int, ...], Any] = {}
        if self.dev.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            if compile:
                self.model = torch.compile(self.model)

    def _forward(self, x: Any) -> Any:
        torch = self.torch
        with torch.autocast(self.dev.type, dtype=self.amp, enabled=self.amp is not None, cache_enabled=False):
            return torch.softmax(self.model(x).float(), dim=1)

    def probabilities_on_device(self, x: object) -> object:
        """Class probabilities (N, K, T, T) float32 of a float32 batch already on the device, left there (with CUDA
        graphs, a view of the graph's output: valid until the next call)."""
        torch = self.torch
        with torch.inference_mode():
            if self.dev.type == "cpu":
                x = x.contiguous()  # type: ignore[attr-defined]
                return torch.cat([self._forward(c)
                                  for c in x.split(max(1, TORCH_CPU_CHUNK_PIXELS // (x.shape[2] * x.shape[3])))])
            if self.cuda_graphs:
                graphed = self._graphed(x)
                if graphed is not None:
                    return graphed
            return self._forward(x)

    def _graphed(self, x: Any) -> Any:
        torch = self.torch
        n, key = int(x.shape[0]), tuple(int(v) for v in x.shape[1:])
        entry = self._graphs.get(key)
        if entry is None or entry[0].shape[0] < n:
            try:
                entry = self._capture(n, key)
            except Exception as err:  # noqa: BLE001 - any op the graph cannot hold: run the model eagerly
                import warnings

                warnings.warn(f"the model cannot run as a CUDA graph ({str(err).splitlines()[0][:160]}); it runs "
                              "layer by layer", RuntimeWarning, stacklevel=3)
                self.cuda_graphs = False
                torch.cuda.synchronize(self.dev)
                return None
            self._graphs[key] = entry
        static_in, static_out, graph = entry
        static_in[:n].copy_(x)
        graph.replay()
        return static_out[:n]

    def _capture(self, n: int, key: tuple[int, ...]) -> tuple[Any, Any, Any]:
        torch = self.torch
        static_in = torch.zeros((n, *key), dtype=torch.float32, device=self.dev).contiguous(
            memory_format=torch.channels_last)
        side = torch.cuda.Stream(self.dev)
        side.wait_stream(torch.cuda.current_stream(self.dev))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph (cuDNN picks its kernels, lazy buffers appear)
                self._forward(static_in)
        torch.cuda.current_stream(self.dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # readers allocate pinned memory meanwhile
            static_out = self._forward(static_in)
        return static_in, static_out, graph

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.dev.type == "cpu":
            return run_in_chunks(self._run, batch, TORCH_CPU_CHUNK_PIXELS)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(batch).to(self.dev, non_blocking=True)
        if self.dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = self._forward(x)
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
        self.precision = "fp32"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            return run_in_chunks(self._run, batch, CPU_CHUNK_PIXELS)
        return self._run(batch)

    def check(self, meta: ClassifierMetadata) -> None:
        """Refuse a model whose declared input channels or output classes differ from the metadata."""
        inputs, outputs = self.session.session.get_inputs(), self.session.session.get_outputs()
        where = f"{self.session.path} (classifier '{meta.name}')"
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ClassifierError(f"{where} does not take one NCHW image batch; its metadata.json does not fit it")
        channels, n_in = inputs[0].shape[1], meta.preprocessing.n_inputs
        if isinstance(channels, int) and channels != n_in:
            raise ClassifierError(f"{where} takes {channels} input channels, but its metadata.json gives {n_in}")
        shape = outputs[0].shape if outputs else []
        if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != len(meta.classes):
            raise ClassifierError(f"{where} returns {shape[1]} classes, but its metadata.json lists "
                                  f"{len(meta.classes)}")
        self.n_classes = len(meta.classes)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            out = np.asarray(self.session.run(batch), dtype=np.float32)
        except Exception as err:  # noqa: BLE001 - onnxruntime reports shape mismatches as generic errors
            raise ClassifierError(f"{self.session.path} failed on a batch of shape {tuple(batch.shape)}: "
                                  f"{str(err).splitlines()[0][:200]}") from None
        n = getattr(self, "n_classes", None)
        if out.ndim != 4 or (n is not None and out.shape[1] != n) or out.shape[2:] != batch.shape[2:]:
            raise ClassifierError(f"{self.session.path} returned shape {tuple(out.shape)} for input "
                                  f"{tuple(batch.shape)}; expected (N, {n}, H, W): it does not fit its metadata.json")
        return out if self.outputs == "probabilities" else softmax(out)


def load_backend(folder: Path, meta: ClassifierMetadata, backend: str = "auto", device: str = "auto",
                 precision: str = "bf16", cuda_graphs: bool = True) -> Backend:
    """The classifier's model on the requested backend; ``auto`` is PyTorch on a GPU, else ONNX Runtime when the
    classifier has an ONNX file (faster on CPUs), else PyTorch."""
    from ..classifiers import store

    onnx_path = folder / store.ONNX
    if meta.architecture == "custom_onnx":
        backend = "onnx"
    if backend == "auto":
        from ..runtime.device import resolve_device, surely_cpu

        on_cpu = device == "cpu" or (device == "auto" and surely_cpu()) or resolve_device(device).type == "cpu"
        backend = "onnx" if on_cpu and onnx_path.exists() else "torch"
    if backend == "onnx":
        if not onnx_path.exists():
            raise ConfigError(f"classifier '{meta.name}' has no {store.ONNX}; use --backend torch")
        onnx_backend = OnnxBackend(onnx_path, meta.output, device)
        onnx_backend.check(meta)
        return onnx_backend
    import torch

    from ..models.factory import create_model

    if meta.architecture == "features":
        from ..models.features import FeaturesNet

        model = FeaturesNet(meta.preprocessing.n_inputs, len(meta.classes))
    elif meta.backbone is None:
        raise ConfigError(f"classifier '{meta.name}' has no PyTorch model; use --backend onnx")
    else:
        model, _ = create_model(meta.backbone, meta.preprocessing.n_inputs, len(meta.classes), pretrained=False)
    weights = folder / store.WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"classifier '{meta.name}' has no {store.WEIGHTS} in {folder}; use --backend onnx")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - unpickling, zip and shape errors: all mean a damaged model.pt
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ClassifierError(f"{weights} does not hold the weights of this classifier ({len(meta.classes)} classes, "
                              f"{meta.backbone}): {first}; export or train it again") from None
    return TorchBackend(model, device, precision, cuda_graphs=cuda_graphs)


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
        self.writer_thread = True
        """Whether ``ahead_of_writer`` computes strips in a background thread (else in the caller's, between
        writes)."""
        """Whether strips carry probabilities (off: class maps only, nothing else leaves the device)."""
        self.timings: dict[str, float] = {}
        """Seconds per stage of the last ``strips`` (read: waiting for tiles; model; blend; write: the caller)."""

    @property
    def reader_threads(self) -> int:
        """Threads reading rows (``InferenceConfig.reader_threads``, ``auto`` resolved for this predictor's path)."""
        if self._reader_threads != "auto":
            return int(self._reader_threads)
        if not self.uses_device():
            return AUTO_READERS_CPU
        import os

        return max(AUTO_READERS_CPU, min(AUTO_READERS_GPU, (os.cpu_count() or 1) // 2))

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
        stats: ChannelStats,
        window: tuple[int, int, int, int] | None = None,
        tile_filter: TileFilter | None = None,
        label: str = "",
    ) -> Iterator[Strip]:
        """Blended strips covering ``window`` (x0, y0, x1, y1 at the classifier's resolution; default the whole
        image), top to bottom. Only tiles that touch the window (and pass ``tile_filter``) are computed.

        Rows of tiles are read as strips by background threads (``reading.read_raw_row``) ahead of the model;
        batches span rows. On the host path tiles are normalised by the readers and blended in numpy; on the device
        path (``uses_device``) raw tiles go to the device and come back as uint8 class strips (``gpu``).
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
        blender: Any = (self._device_blender(ax1 - ax0, pre, stats) if device
                        else _HostBlender(self.n_classes, t, ax1 - ax0, self.window, pre, stats))
        timings = self.timings = {"read": 0.0, "preprocess": 0.0, "model": 0.0, "blend": 0.0, "write": 0.0}
        state = {"buf_y": rows[0][0], "emitted": y0}

        if device:
            from .gpu import host_block

            dev = self.backend.dev  # type: ignore[attr-defined]

            def read_row(y: int, xs: list[int]) -> Any:
                # One block of raw pixels per row, page-locked for its upload; cut into tiles on the device.
                block, offsets = read_raw_block(source, pre, ds, xs, y, t)
                return host_block(block, dev), offsets
        else:
            def read_row(y: int, xs: list[int]) -> Any:
                # Raw pixels (uint8: a quarter of float32) wait in the queue; normalisation comes with the batch.
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

        with ThreadPoolExecutor(max_workers=self.reader_threads, thread_name_prefix="dlpixel-read") as pool:
            futures: deque[tuple[int, Future]] = deque()
            ahead = max(2 * self.batch_size, 4)
            cursor, queued = 0, 0
            ready: deque[tuple[int, int, np.ndarray]] = deque()

            def fill() -> None:
                nonlocal cursor, queued
                # At least one row per reader thread is in flight, so rows decode in parallel.
                while cursor < len(plan) and (queued < ahead or len(futures) < self.reader_threads):
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

    def _device_blender(self, width: int, pre: Any, stats: ChannelStats) -> Any:
        from .gpu import DeviceBlender, TorchNormalizer

        backend: Any = self.backend
        blender = DeviceBlender(self.n_classes, self.tile, width, self.window, backend.dev, self.keep_probabilities)
        blender.normalize = TorchNormalizer(pre, stats, pre.n_inputs, backend.dev)
        return blender


def _same_thread(strips: Iterable[Strip]) -> Generator[Strip, None, None]:
    yield from strips  # close() reaches ``strips``


def _switching(strips: Iterator[Strip], switch: Any) -> Generator[Strip, None, None]:
    with switch:
        try:
            yield from strips
        finally:
            close = getattr(strips, "close", None)
            if close is not None:
                close()


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
        self.preprocess_seconds = time.perf_counter() - t0
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
