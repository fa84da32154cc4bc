"""The model runners of ``apply``: PyTorch (on CUDA with channels_last, autocast and CUDA graphs) and ONNX Runtime,
and ``load_backend``, which picks one for a classifier folder. Each takes (N, C, T, T) float32 inputs and gives
(N, K, T, T) float32 class probabilities; PyTorch also leaves them on its device for the device path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..classifiers.metadata import ClassifierMetadata
from ..errors import ClassifierError, ConfigError


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
