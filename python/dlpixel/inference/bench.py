"""Inference throughput as ratios against the model-only ceiling, on the same device, batch and precision.

``bench inference`` runs the whole ``apply`` path (tile reads by background threads, preprocessing, batching, the
model, blending, the class-map sink) over an image and compares its tiles per second with the model alone on ready
tensors: ``pipeline_efficiency`` = end-to-end ÷ model-only. 1.0 means the pipeline adds nothing to the model's time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import NormalizationConfig


def _bench_classifier(folder: Path, backbone: str, tile_size: int, downsample: float = 1.0) -> Any:
    """An untrained 3-class U-Net saved as a classifier (throughput does not depend on the weights), applied at
    ``downsample``."""
    import torch

    from ..classifiers import store
    from ..classifiers.metadata import ClassifierMetadata, ClassInfo
    from ..data.preprocessing import Preprocessing
    from ..models.factory import create_model
    from ..models.onnx import export_onnx

    torch.manual_seed(0)
    model, _ = create_model(backbone, 3, 3, pretrained=False)
    meta = ClassifierMetadata(
        name="bench", backbone=backbone, input_channels=["Red", "Green", "Blue"],
        classes=[ClassInfo(index=i, name=n, color=c) for i, (n, c) in
                 enumerate([("A", (255, 0, 0)), ("B", (0, 255, 0)), ("C", (0, 0, 255))])],
        tile_size=tile_size, downsample=downsample,
        preprocessing=Preprocessing(channels=[0, 1, 2], channel_names=["Red", "Green", "Blue"],
                                    normalization=NormalizationConfig()),
    )
    with store.staging_folder(folder, "bench", overwrite=True) as tmp:
        torch.save(model.state_dict(), tmp / store.WEIGHTS)
        export_onnx(model.eval(), tmp / store.ONNX, 3, 3)
        meta.write(tmp / store.METADATA)
    return store.load_classifier(folder, "bench")


def _bench_image(path: Path, size: int) -> Path:
    """A textured RGB pyramidal OME-TIFF of ``size`` × ``size`` pixels."""
    from ..data.images import write_ome_tiff

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    img = np.stack([(xx * 7 + yy * 3) % 256, (xx * yy) % 251, rng.integers(0, 256, (size, size))], -1)
    return write_ome_tiff(path, img.astype(np.uint8), pixel_size_um=0.5)


class _CostsNothing:
    """The model replaced by one that costs (almost) nothing, for ``apply``'s pipeline alone: its "probabilities"
    are the normalised input channels (one cheap copy), so the class map still follows the image and costs the map
    writer what a real one does."""

    def __init__(self, model: Any, n_classes: int) -> None:
        self.name, self.device = model.name, model.device
        self.precision = getattr(model, "precision", "fp32")
        self.n_classes = n_classes
        if hasattr(model, "probabilities_on_device"):
            self.dev = model.dev
            self.probabilities_on_device = self._on_device

    def _pick(self, channels: int) -> list[int]:
        return [k % channels for k in range(self.n_classes)]

    def _on_device(self, x: Any) -> Any:
        return x[:, self._pick(x.shape[1])].float()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(batch[:, self._pick(batch.shape[1])], np.float32)


def _model_only(model: Any, batch_size: int, channels: int, tile_size: int, n_batches: int) -> float:
    """Tiles per second of the model alone at the batch and precision ``apply`` uses: on PyTorch, float32 inputs
    already on the device and probabilities left there (what the device path runs per batch); on ONNX Runtime (host
    memory is its input), a ready float32 batch. The clock stops once the device has finished."""
    ready = np.random.default_rng(1).random((batch_size, channels, tile_size, tile_size), dtype=np.float32)
    if hasattr(model, "probabilities_on_device"):
        import torch

        x = torch.from_numpy(ready).to(model.dev)
        if model.dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        sync = torch.cuda.synchronize if model.dev.type == "cuda" else (lambda: None)
        model.probabilities_on_device(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model.probabilities_on_device(x)
        sync()
        return n_batches * batch_size / (time.perf_counter() - t0)
    model(ready)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model(ready)
    return n_batches * batch_size / (time.perf_counter() - t0)


def bench_inference(
    size: int = 2048,
    tile_size: int = 256,
    batch_size: int = 8,
    backbone: str = "efficientnet-lite0",
    backend: str = "auto",
    device: str = "auto",
    repeats: int = 3,
    precision: str = "bf16",
    reader_threads: int | str = "auto",
    image: str | Path | None = None,
    cuda_graphs: bool = True,
    writer_thread: bool = True,
    path: str = "auto",
    map_writer: str = "auto",
    row_readers: str = "auto",
) -> dict[str, Any]:
    """Tiles per second of ``apply`` end to end (reads, normalisation, model, blending, the class-map writer) and of
    the model alone at the same batch and precision, their ratio, the pipeline with a model that costs nothing
    (``without_model``: what reading, normalising, blending and writing can feed; compared with the model alone),
    and seconds per stage of the fastest end-to-end
    run (stats: waiting for the image's statistics, computed beside the first reads as ``apply`` does; read:
    waiting for tiles; model: model calls, with the upload and normalisation on the device path; blend; write: the
    class-map writer)."""
    from ..data.images import FileImageSource
    from ..data.preprocessing import stats_for
    from ..inference.backends import load_backend
    from ..inference.map_process import open_map_writer, prestart
    from ..inference.predictor import Predictor
    from ..runtime.pipeline import in_background

    with tempfile.TemporaryDirectory(prefix="dlpixel-bench-") as tmp:
        root = Path(tmp)
        entry = _bench_classifier(root, backbone, tile_size)
        meta = entry.metadata
        model = load_backend(entry.path, meta, backend, device, precision, cuda_graphs)
        source = FileImageSource(Path(image) if image else _bench_image(root / "bench.ome.tif", size))
        on_device = {"auto": None, "host": False, "device": True}[path]
        predictors = []
        for runner in (model, _CostsNothing(model, len(meta.classes))):
            predictor = Predictor(runner, meta, tile_size, None, batch_size, reader_threads, on_device=on_device)
            predictor.keep_probabilities = False
            predictor.writer_thread = writer_thread
            predictor.row_readers = row_readers
            predictors.append(predictor)
        predictor, without_model = predictors
        separate = predictor.in_children(map_writer)
        if separate:
            prestart()
        grid = predictor.grid(source)
        n_tiles = len(grid.xs) * len(grid.ys)
        n_batches = max(2, int(np.ceil(n_tiles / batch_size)))
        # Alternate the two measurements and keep the best of each, so a busy machine slows both alike.
        model_tps = best = alone_tps = 0.0
        stages: dict[str, float] = {}

        def end_to_end(runs: Predictor) -> float:
            t0 = time.perf_counter()
            stats = in_background(stats_for, source, meta.preprocessing)  # as ``apply`` computes them
            with open_map_writer(separate, root / "map.ome.tif", grid.width, grid.height, 1, pixel_size_um=0.5,
                                 channel_names=["classes"], kind="classes") as sink:
                ahead = runs.ahead_of_writer(runs.strips(source, stats))  # as ``apply`` writes
                try:
                    for strip in ahead:
                        sink.add_strip(strip.y, strip.classes())
                finally:
                    ahead.close()
            return n_tiles / (time.perf_counter() - t0)

        for _ in range(repeats):
            model_tps = max(model_tps, _model_only(model, batch_size, 3, tile_size, n_batches))
            tps = end_to_end(predictor)
            if tps > best:
                best = tps
                stages = dict(predictor.timings)
            alone_tps = max(alone_tps, end_to_end(without_model))
        peak = None
        if getattr(model, "device", "cpu") == "cuda":
            import torch

            peak = round(torch.cuda.max_memory_allocated() / 2**20)
    return {
        "device": model.device,
        "backend": model.name,
        "precision": getattr(model, "precision", "fp32"),
        "path": "device" if predictor.uses_device() else "host",
        "cuda_graphs": bool(getattr(model, "cuda_graphs", False)),
        "writer_thread": writer_thread,
        "map_writer": "separate_process" if separate else "same_process",
        "row_readers": predictor.rows_read_in,
        "backbone": backbone,
        "image_px": f"{source.width}x{source.height}",
        "tile_size": tile_size,
        "overlap": predictor.overlap,
        "batch_size": batch_size,
        "reader_threads": predictor.reader_threads,
        "tiles": n_tiles,
        "end_to_end_tiles_per_second": round(best, 2),
        "model_only_tiles_per_second": round(model_tps, 2),
        "pipeline_efficiency": round(best / model_tps, 3),
        "without_model_tiles_per_second": round(alone_tps, 2),
        "without_model_vs_model_alone": round(alone_tps / model_tps, 3),
        **{f"seconds_{k}": round(v, 3) for k, v in stages.items()},
        "gpu_peak_mib": peak,
    }
