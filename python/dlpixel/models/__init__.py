"""Model construction, pretrained weights and ONNX export."""

from ._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()
