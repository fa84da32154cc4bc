"""Training-tile augmentation: the same random geometry for a tile and its sparse label mask.

Images arrive already normalised (float32, any number of channels, values not confined to 0..1); masks are uint8
with 255 = unlabelled. Geometry moves image and mask alike, the mask is resampled with nearest neighbour only, and
pixels a warp brings in from outside the tile become 255 in the mask, so no label is ever invented.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np

os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from ..config import AugmentConfig  # noqa: E402
from ..data.patches import UNLABELLED

ELASTIC_SIGMA_FRACTION = 1 / 20
"""Smoothness of the elastic field, as a fraction of the tile side (about 26 px for a 512-px tile)."""
ELASTIC_SHIFT_FRACTION = 1 / 100
"""Typical (standard deviation) displacement of the elastic field, as a fraction of the tile side (about 5 px)."""
_ELASTIC_FIELD_STD = 0.09
"""Measured std of albumentations 2's smoothed displacement field, per unit alpha, times sigma."""


class ChannelJitter(A.ImageOnlyTransform):
    """Per-channel brightness and contrast jitter for normalised float images with any number of channels.

    Each channel c becomes ``(x - mean_c) * contrast_c + mean_c + brightness_c``: contrast is drawn from
    ``1 ± contrast_limit`` and brightness (in units of the normalised range) from ``± brightness_limit``. Values are
    not clipped, since normalised data may lie outside 0..1. Independent channels also shift the colour of RGB tiles,
    which stands in for hue and saturation jitter without assuming the channels are RGB.
    """

    def __init__(self, brightness_limit: float = 0.1, contrast_limit: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.brightness_limit = brightness_limit
        self.contrast_limit = contrast_limit

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        n_channels = 1 if image.ndim == 2 else image.shape[-1]
        rng = self.random_generator
        return {
            "contrast": rng.uniform(1 - self.contrast_limit, 1 + self.contrast_limit, n_channels).astype(np.float32),
            "brightness": rng.uniform(-self.brightness_limit, self.brightness_limit, n_channels).astype(np.float32),
        }

    def apply(self, img: np.ndarray, contrast: np.ndarray, brightness: np.ndarray, **params: Any) -> np.ndarray:
        x = img.astype(np.float32, copy=False)
        mean = x.mean(axis=(0, 1), keepdims=x.ndim == 3)
        return ((x - mean) * contrast.reshape(-1) + mean + brightness.reshape(-1)).astype(np.float32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_limit", "contrast_limit")


def _elastic(tile_size: int) -> A.ElasticTransform:
    sigma = max(4.0, tile_size * ELASTIC_SIGMA_FRACTION)
    alpha = tile_size * ELASTIC_SHIFT_FRACTION * sigma / _ELASTIC_FIELD_STD
    return A.ElasticTransform(
        alpha=alpha,
        sigma=sigma,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0.0,
        fill_mask=UNLABELLED,
        p=0.5,
    )


class Augmentation:
    """Random transforms for one training tile and its mask, built from ``AugmentConfig``.

    Call it as ``aug(image, mask)`` or ``aug(image, mask, rng)``. Without ``rng`` the draws come from the pipeline's
    own generator, seeded by ``seed``; with ``rng`` they come from that generator only, so a dataset can make each
    tile's augmentation depend on (seed, epoch, index) and not on how DataLoader workers share the work.
    """

    def __init__(self, cfg: AugmentConfig | dict[str, Any], tile_size: int, seed: int | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, AugmentConfig) else AugmentConfig.model_validate(cfg)
        self.tile_size = tile_size
        transforms: list[A.BasicTransform] = []
        if self.cfg.hflip:
            transforms.append(A.HorizontalFlip(p=0.5))
        if self.cfg.vflip:
            transforms.append(A.VerticalFlip(p=0.5))
        if self.cfg.rot90:
            transforms.append(A.RandomRotate90(p=0.5))
        if self.cfg.elastic:
            transforms.append(_elastic(tile_size))
        if self.cfg.color_jitter:
            transforms.append(ChannelJitter(p=0.5))
        self.transforms = transforms
        self._compose = A.Compose(transforms, seed=seed)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the augmented (image, mask), both with their input shapes and dtypes."""
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape} and mask {mask.shape} differ in height or width")
        if not self.transforms:
            return image, mask
        if self.cfg.rot90 and image.shape[0] != image.shape[1]:
            raise ValueError(f"rot90 needs square tiles (got {image.shape[0]}×{image.shape[1]})")
        if rng is None:
            out = self._compose(image=image, mask=mask)
        else:
            own = (self._compose.random_generator, self._compose.py_random)
            draw = int(rng.integers(2**63))
            self._compose.set_random_state(np.random.default_rng(draw), random.Random(draw))
            try:
                out = self._compose(image=image, mask=mask)
            finally:
                self._compose.set_random_state(*own)
        aug_image = np.ascontiguousarray(out["image"], dtype=image.dtype).reshape(image.shape)
        aug_mask = np.ascontiguousarray(out["mask"], dtype=mask.dtype).reshape(mask.shape)
        return aug_image, aug_mask

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.transforms) or "identity"
        return f"Augmentation({names}; tile_size={self.tile_size})"


def build_augmentation(cfg: AugmentConfig | dict[str, Any], tile_size: int, seed: int | None = None) -> Augmentation:
    """The training augmentation described by the ``augment`` settings (validation tiles are never augmented)."""
    return Augmentation(cfg, tile_size, seed=seed)
