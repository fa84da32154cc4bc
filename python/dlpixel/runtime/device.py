"""Which device and precision a run uses: shared by training and inference."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ..errors import TrainingError

if TYPE_CHECKING:
    import torch


def surely_cpu() -> bool:
    """True where ``auto`` can only mean the CPU, known without importing torch (seconds on a busy machine): Linux
    with no NVIDIA driver loaded. Elsewhere (macOS's MPS, Windows) only torch can tell."""
    return sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia/version")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but no CUDA GPU is available; use device=auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingError("device 'mps' was asked for but Apple's MPS is not available; use device=auto or cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str | bool) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``bf16``, ``fp16``, ``fp32``; True/False as bf16/fp32) on ``device``:
    bf16 where the GPU supports it, else fp16; None (full precision) off CUDA or for fp32."""
    import torch

    if isinstance(precision, bool):
        precision = "bf16" if precision else "fp32"
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def precision_name(amp: torch.dtype | None) -> str:
    """The name recorded with a result: ``bf16``, ``fp16`` or ``fp32``."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32")  # type: ignore[arg-type]


def device_index(values: object, device: torch.device) -> torch.Tensor:
    """int64 indices on ``device``, sent without making the host wait: CUDA synchronises the stream before a copy
    from pageable host memory (the host would wait for every kernel queued, and the device then idles while the
    host launches the next ones), so the indices go through page-locked memory, copied in stream order."""
    import torch

    host = torch.as_tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)
