"""Model construction, pretrained weights and ONNX export.

Importing this package imports nothing heavy: torch comes with ``factory`` and ``pretrained`` (which first make
torchvision importable, ``_torchvision_compat``) or with an ONNX export; running an ONNX model needs only
ONNX Runtime.
"""
