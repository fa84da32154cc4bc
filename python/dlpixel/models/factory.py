"""U-Nets on every backbone of ``config.BACKBONES``: construction, pretrained encoders, N input channels, freezing.

The architecture depends only on (backbone, in_channels, n_classes), never on ``pretrained``, so a saved state
dict always loads into ``create_model(..., pretrained=False)``.

Encoder blocks. ``freeze`` names the encoder's stages as ``config.ENCODER_BLOCKS``: ``stem`` is the input
convolution and its BatchNorm; ``blockK`` (K = 1..5) is every other encoder layer that computes at 1/2**K of
the input resolution; ``block5`` also holds the final 1x1 head convolution where the encoder has one. Together
they cover every encoder parameter exactly once. Per family:

=================  =====================  ===========================  ==============================
block              resnet18/34/50 (+ the  efficientnet-b0/b1/b2,        mobilenet_v2
                   histology ResNet-50s)  efficientnet-lite0
=================  =====================  ===========================  ==============================
stem (1/2)         conv1, bn1             conv_stem, bn                features[0]
block1 (1/2)       (none: no layer here)  the depthwise-separable      features[1]
                                          block (16 channels)
block2 (1/4)       layer1 (after maxpool) 24-channel blocks            features[2:4]
block3 (1/8)       layer2                 40-channel blocks            features[4:7]
block4 (1/16)      layer3                 80- and 112-channel blocks   features[7:14]
block5 (1/32)      layer4                 192- and 320-channel         features[14:19]
                                          blocks, head conv and bn
=================  =====================  ===========================  ==============================

EfficientNet and MobileNet blocks are assigned by the stride of their depthwise convolution, so the table holds
for b1/b2's deeper stages too.
"""

from __future__ import annotations

from ._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before segmentation_models_pytorch imports torchvision

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders.efficientnet import EfficientNetEncoder
from segmentation_models_pytorch.encoders.mobilenet import MobileNetV2Encoder
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from segmentation_models_pytorch.encoders.timm_efficientnet import EfficientNetBaseEncoder
from timm.models import adapt_input_conv
from torch import nn

from ..config import BACKBONES, ENCODER_BLOCKS, Freeze
from ..errors import ConfigError
from .pretrained import WeightProvenance, fetch, load_encoder_weights, provenance, weight_spec

FREEZE_PRESETS: dict[str, tuple[str, ...]] = {
    "small": ("stem", "block1", "block2", "block3", "block4"),
    "medium": ("stem", "block1", "block2"),
    "large": ("stem",),
    "none": (),
}
"""Presets named for the dataset they suit: a small dataset freezes most of the encoder, a large one almost none."""

SMALL_DATASET_TILES = 500
LARGE_DATASET_TILES = 5000


class TfSamePadConv2d(nn.Conv2d):
    """Strided convolution with TensorFlow's "SAME" padding for even input sizes (pad less before than after).

    EfficientNet-Lite's weights were trained with it; in a U-Net every strided convolution sees an even size
    (H, W multiples of 32), so the padding is a constant and exports to ONNX with dynamic sizes.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=0,
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        self.load_state_dict(conv.state_dict())
        pads: list[int] = []
        for k, s in zip(reversed(self.kernel_size), reversed(self.stride)):
            total = max(k - s, 0)
            pads += [total // 2, total - total // 2]
        self.same_pads = tuple(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.same_pads))


def _use_tf_same_padding(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and not isinstance(child, TfSamePadConv2d):
            setattr(module, name, TfSamePadConv2d(child))
        else:
            _use_tf_same_padding(child)


def _match_efficientnet_lite(encoder: nn.Module) -> None:
    """Make smp's lite0 encoder compute as the TensorFlow original: SAME padding, BatchNorm eps 1e-3."""
    _use_tf_same_padding(encoder)
    for module in encoder.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = 1e-3


def first_conv(encoder: nn.Module) -> nn.Conv2d:
    """The encoder's input convolution."""
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise TypeError(f"{type(encoder).__name__} has no convolution")


def adapt_first_conv(encoder: nn.Module, in_channels: int) -> None:
    """Give a pretrained 3-channel encoder ``in_channels`` inputs, keeping what its stem learnt."""
    conv = first_conv(encoder)
    if conv.in_channels == in_channels:
        return
    # timm's rule: one channel sums the RGB kernel; N channels repeat R, G, B, R, ... scaled by 3 / N.
    conv.weight = nn.Parameter(adapt_input_conv(in_channels, conv.weight.detach().clone()))
    conv.in_channels = in_channels
    if hasattr(encoder, "_in_channels"):
        encoder._in_channels = in_channels


def create_model(
    backbone: str, in_channels: int, n_classes: int, pretrained: bool
) -> tuple[nn.Module, WeightProvenance | None]:
    """A U-Net giving logits (N, n_classes, H, W) for (N, in_channels, H, W), H and W multiples of 32.

    With ``pretrained`` the encoder starts from the registry's weights (``pretrained.py``), adapted to
    ``in_channels``, and their provenance is returned for the metadata; otherwise it is random and the
    provenance is None. Raises ``WeightsError`` when weights cannot be had (for example offline).
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone '{backbone}'; choose one of: {', '.join(BACKBONES)}")
    if in_channels < 1:
        raise ConfigError(f"a model needs at least one input channel (got {in_channels})")
    if n_classes < 2:
        raise ConfigError(f"a pixel classifier needs at least two classes (got {n_classes})")
    spec = weight_spec(backbone)
    model = smp.Unet(
        encoder_name=spec.encoder,
        encoder_weights=None,
        in_channels=3 if pretrained else in_channels,
        classes=n_classes,
    )
    if spec.encoder.startswith("timm-tf_efficientnet_lite"):
        _match_efficientnet_lite(model.encoder)
    if not pretrained:
        return model, None
    path = fetch(spec)
    load_encoder_weights(model.encoder, spec, path)
    adapt_first_conv(model.encoder, in_channels)
    return model, provenance(spec, path)


# --- freezing ------------------------------------------------------------------------------------------------


def resolve_freeze(freeze: Freeze, n_train_tiles: int, pretrained: bool) -> list[str]:
    """The encoder blocks to freeze for a ``freeze`` setting, in ``ENCODER_BLOCKS`` order.

    ``auto`` follows the training guide: fewer than 500 training tiles freeze most of the encoder (``small``),
    500 to 5000 the early layers (``medium``), more than 5000 only the stem (``large``). A random encoder has
    learnt nothing worth keeping, so ``auto`` freezes nothing without pretrained weights.
    """
    if isinstance(freeze, (list, tuple)):
        unknown = [b for b in freeze if b not in ENCODER_BLOCKS]
        if unknown:
            raise ConfigError(f"freeze: unknown encoder blocks {unknown}; choose from {list(ENCODER_BLOCKS)}")
        names: tuple[str, ...] = tuple(freeze)
    elif freeze == "auto":
        if not pretrained:
            return []
        if n_train_tiles < SMALL_DATASET_TILES:
            names = FREEZE_PRESETS["small"]
        elif n_train_tiles <= LARGE_DATASET_TILES:
            names = FREEZE_PRESETS["medium"]
        else:
            names = FREEZE_PRESETS["large"]
    elif freeze in FREEZE_PRESETS:
        names = FREEZE_PRESETS[freeze]
    else:
        raise ConfigError(f"freeze: unknown value '{freeze}'; use auto, none, small, medium, large or a list of blocks")
    return [b for b in ENCODER_BLOCKS if b in names]


def _by_stride(units: list[nn.Module]) -> dict[str, list[nn.Module]]:
    """Assign units that follow a stride-2 stem to block1..5 by the resolution they compute at."""
    blocks: dict[str, list[nn.Module]] = {f"block{k}": [] for k in range(1, 6)}
    level = 1
    for unit in units:
        strides = [max(m.stride) for m in unit.modules() if isinstance(m, nn.Conv2d)]
        if max(strides, default=1) > 1:
            level += 1
        blocks[f"block{min(level, 5)}"].append(unit)
    return blocks


def encoder_blocks(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The encoder's modules under each name of ``ENCODER_BLOCKS`` (see the table in this module's docstring)."""
    encoder = getattr(model, "encoder", model)
    if isinstance(encoder, ResNetEncoder):
        blocks = {"stem": [encoder.conv1, encoder.bn1], "block1": []}
        blocks.update({f"block{k}": [getattr(encoder, f"layer{k - 1}")] for k in range(2, 6)})
        return blocks
    if isinstance(encoder, EfficientNetEncoder):
        blocks = {"stem": [encoder._conv_stem, encoder._bn0], **_by_stride(list(encoder._blocks))}
        blocks["block5"] += [encoder._conv_head, encoder._bn1]
        return blocks
    if isinstance(encoder, EfficientNetBaseEncoder):
        blocks = {"stem": [encoder.conv_stem, encoder.bn1], **_by_stride([b for s in encoder.blocks for b in s])}
        blocks["block5"] += [encoder.conv_head, encoder.bn2]
        return blocks
    if isinstance(encoder, MobileNetV2Encoder):
        features = list(encoder.features)
        blocks = {"stem": [features[0]], **_by_stride(features[1:-1])}
        blocks["block5"].append(features[-1])
        return blocks
    raise ConfigError(f"freezing is not defined for encoder {type(encoder).__name__}")


def freeze_blocks(model: nn.Module, blocks: list[str]) -> None:
    """Stop gradients into the named encoder blocks; every other parameter of the model is made trainable."""
    unknown = [b for b in blocks if b not in ENCODER_BLOCKS]
    if unknown:
        raise ConfigError(f"freeze: unknown encoder blocks {unknown}; choose from {list(ENCODER_BLOCKS)}")
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    mapping = encoder_blocks(model)
    for name in blocks:
        for module in mapping[name]:
            for parameter in module.parameters():
                parameter.requires_grad_(False)


def set_train_mode(model: nn.Module, frozen_blocks: list[str]) -> None:
    """``model.train()``, but frozen blocks keep their BatchNorm running statistics (eval mode).

    A frozen block whose BatchNorm still updated its running mean and variance would change what it computes
    at inference although none of its weights were trained.
    """
    model.train()
    mapping = encoder_blocks(model)
    for name in frozen_blocks:
        for module in mapping[name]:
            for sub in module.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.eval()
