"""Make ``import torchvision`` work on a CPU-only torch paired with a CUDA torchvision wheel.

The package registry serves torchvision 0.28.0 only as a CUDA build. On a CPU build of torch its compiled
extension (``torchvision/_C.so``) cannot load, so the ``torchvision::*`` operators are never declared, and
``torchvision/_meta_registrations.py`` fails at import with ``operator torchvision::nms does not exist``. That
import error takes ``timm`` and ``segmentation_models_pytorch`` down with it, although neither needs these
detection operators for segmentation.

``ensure_torchvision_importable()`` declares the operator schemas (no kernels) before torchvision is first
imported, but only when torchvision's own extension cannot load. On a CUDA torch, or when the extension loads,
it does nothing. This module is the only place that knows about the problem.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Schemas as torchvision's C++ sources declare them (torchvision/csrc/ops/*.cpp).
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
    "bool aligned) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)

_library = None  # keeps the declared schemas alive for the life of the process


def _op_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def ensure_torchvision_importable() -> None:
    """Declare torchvision's operator schemas when its compiled extension cannot provide them."""
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return
    import torch

    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        return  # a GPU build of torch loads torchvision's extension itself
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    if _op_exists("nms"):
        return
    extension = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
    if extension is not None:
        try:
            torch.ops.load_library(str(extension))
        except OSError:
            pass
        if _op_exists("nms"):
            return
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        if not _op_exists(schema.split("(", 1)[0]):
            _library.define(schema)
