"""ONNX export of a trained model and inference through ONNX Runtime.

The exported graph takes ``input`` (N, C, H, W) float32 and returns ``logits`` (N, classes, H, W), with batch,
height and width left dynamic, so one file serves any tile size that is a multiple of 32.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data._io import honour_umask
from ..errors import ClassifierError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17

if TYPE_CHECKING:
    from torch import nn


def export_onnx(model: nn.Module, path: str | Path, in_channels: int, n_classes: int, sample_size: int = 64) -> Path:
    """Write ``model`` (in eval mode) as ONNX to ``path``, through a temporary file renamed into place.

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs onnxscript. The model's
    own train/eval mode is restored afterwards.
    """
    import torch

    path = Path(path)
    if sample_size < 32 or sample_size % 32:
        raise ClassifierError(f"ONNX sample size must be a positive multiple of 32 (got {sample_size})")
    device = next(model.parameters()).device
    sample = torch.zeros(1, in_channels, sample_size, sample_size, dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    honour_umask(temp_name)
    temp = Path(temp_name)
    try:
        with torch.no_grad():
            out_channels = model(sample).shape[1]
            if out_channels != n_classes:
                raise ClassifierError(f"the model gives {out_channels} outputs per pixel, not {n_classes} classes")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message="Constant folding")
                torch.onnx.export(
                    model,
                    (sample,),
                    str(temp),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={
                        INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                        OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    },
                    opset_version=OPSET,
                    dynamo=False,
                )
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def default_providers() -> list[str]:
    """ONNX Runtime providers to use: CUDA when this onnxruntime build offers it, always CPU as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxSession:
    """An ONNX Runtime session over an exported classifier; create once, call ``run`` per batch."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, options: Any = None) -> None:
        """``options``: an ``onnxruntime.SessionOptions`` (default: ONNX Runtime's own)."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ClassifierError(f"ONNX model not found: {self.path}")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers or default_providers())
        except Exception as err:
            raise ClassifierError(f"cannot load ONNX model {self.path}: {err}") from None
        # Models exported elsewhere name their input and output freely: use the session's own names.
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def providers(self) -> list[str]:
        """Providers the session actually runs on, best first."""
        return list(self.session.get_providers())

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes, H, W) for a float32 batch (N, C, H, W)."""
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: inputs})[0]


def onnx_predict(path: str | Path, batch: np.ndarray) -> np.ndarray:
    """Logits of one batch from an ONNX file (opens a session each call; keep an ``OnnxSession`` for many)."""
    return OnnxSession(path).run(batch)
