"""Losses, augmentation and metrics on tiny tensors whose right answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dlpixel.config import AugmentConfig, Loss
from dlpixel.training.augment import build_augmentation
from dlpixel.training.losses import FocalLoss, build_loss, class_weights_from_counts
from dlpixel.training.metrics import ConfusionMatrix

IGNORE = 255
ALL_LOSSES = [m.value for m in Loss]


def _batch(seed: int = 0, n_classes: int = 3, ignored: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, n_classes, 6, 7, generator=g)
    target = torch.randint(0, n_classes, (2, 6, 7), generator=g)
    target[torch.rand(2, 6, 7, generator=g) < ignored] = IGNORE
    return logits, target


def _labelled_rows(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = target != IGNORE
    return logits.permute(0, 2, 3, 1)[keep], target[keep]


# ---------------------------------------------------------------- losses


def test_ce_equals_cross_entropy_on_labelled_pixels_only() -> None:
    logits, target = _batch()
    rows, labels = _labelled_rows(logits, target)
    weights = torch.tensor([0.5, 2.0, 1.5])
    assert torch.allclose(build_loss("ce", None)(logits, target), F.cross_entropy(rows, labels), atol=1e-6)
    assert torch.allclose(
        build_loss("ce", weights)(logits, target), F.cross_entropy(rows, labels, weight=weights), atol=1e-6
    )


def test_ignored_pixels_do_not_change_any_loss() -> None:
    logits, target = _batch()
    scrambled = logits.clone()
    scrambled[(target == IGNORE).unsqueeze(1).expand_as(logits)] = 50.0
    for name in ALL_LOSSES:
        loss = build_loss(name, torch.tensor([1.0, 2.0, 0.5]))
        assert torch.allclose(loss(logits, target), loss(scrambled, target), atol=1e-6), name


def test_focal_with_gamma_zero_is_weighted_ce_and_down_weights_easy_pixels() -> None:
    logits, target = _batch(1)
    weights = torch.tensor([0.5, 2.0, 1.5])
    ce = build_loss("ce", weights)(logits, target)
    assert torch.allclose(FocalLoss(weights, gamma=0.0)(logits, target), ce, atol=1e-6)
    assert build_loss("focal", weights)(logits, target) < ce

    one = torch.tensor([[[[math.log(3.0)]], [[0.0]]]])
    p_true = 0.75
    expected = -((1 - p_true) ** 2) * math.log(p_true)
    assert build_loss("focal", None)(one, torch.zeros(1, 1, 1, dtype=torch.long)).item() == pytest.approx(expected)


def test_dice_hand_computed_with_ignored_pixel_and_absent_class() -> None:
    # pixels: label 0 with p0 = 0.75, label 1 with p1 = 0.75, and an ignored pixel predicted as class 0.
    # class 0: intersection 0.75, cardinality (0.75 + 0.25) + 1 = 2 -> dice 0.75; class 1 the same.
    # class 2 has almost no probability and no label: it is left out, so the loss is 1 - 0.75.
    ln3 = math.log(3.0)
    logits = torch.tensor([[[[ln3, 0.0, 30.0]], [[0.0, ln3, 0.0]], [[-30.0, -30.0, -30.0]]]])
    target = torch.tensor([[[0, 1, IGNORE]]])
    assert build_loss("dice", None)(logits, target).item() == pytest.approx(0.25, abs=1e-5)


def test_dice_weighted_mean_over_present_classes() -> None:
    # pixel A (label 0) has p = (0.75, 0.25), pixel B (label 1) has p = (0.5, 0.5)
    # class 0: intersection 0.75, cardinality (0.75 + 0.5) + 1 -> dice 1.5 / 2.25
    # class 1: intersection 0.5, cardinality (0.25 + 0.5) + 1 -> dice 1 / 1.75
    ln3 = math.log(3.0)
    logits = torch.tensor([[[[ln3, 0.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])
    d0, d1 = 1.5 / 2.25, 1.0 / 1.75
    plain = build_loss("dice", None)(logits, target).item()
    weighted = build_loss("dice", torch.tensor([1.0, 3.0]))(logits, target).item()
    assert plain == pytest.approx(((1 - d0) + (1 - d1)) / 2, abs=1e-5)
    assert weighted == pytest.approx(((1 - d0) + 3 * (1 - d1)) / 4, abs=1e-5)


def test_perfect_logits_give_dice_near_zero() -> None:
    _, target = _batch(2)
    logits = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 40.0
    logits[(target == IGNORE).unsqueeze(1).expand_as(logits)] = -40.0
    assert build_loss("dice", None)(logits, target).item() < 1e-6
    assert build_loss("ce_dice", None)(logits, target).item() < 1e-6


def test_class_weights_move_the_loss_the_expected_way() -> None:
    # class 0 predicted right, class 1 predicted wrong: boosting class 1 raises the loss, boosting class 0 lowers it.
    logits = torch.tensor([[[[3.0, 3.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])
    for name in ALL_LOSSES:
        base = build_loss(name, torch.tensor([1.0, 1.0]))(logits, target)
        boost_wrong = build_loss(name, torch.tensor([1.0, 4.0]))(logits, target)
        boost_right = build_loss(name, torch.tensor([4.0, 1.0]))(logits, target)
        assert boost_right < base < boost_wrong, name


def test_ce_dice_is_the_sum_of_ce_and_dice() -> None:
    logits, target = _batch(3)
    w = torch.tensor([1.0, 2.0, 3.0])
    total = build_loss(Loss.ce_dice, w)(logits, target)
    assert torch.allclose(total, build_loss("ce", w)(logits, target) + build_loss("dice", w)(logits, target))


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_all_ignored_batch_gives_zero_with_gradient(name: str) -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE)
    loss = build_loss(name, torch.tensor([1.0, 2.0, 3.0]))(logits, target)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_half_precision_logits_are_computed_in_float32(name: str) -> None:
    logits, target = _batch(4)
    half = logits.half().requires_grad_()
    loss = build_loss(name, torch.tensor([1.0, 2.0, 3.0]))(half, target)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, build_loss(name, torch.tensor([1.0, 2.0, 3.0]))(half.detach().float(), target))
    loss.backward()
    assert half.grad is not None and half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()


def test_losses_under_autocast() -> None:
    conv = torch.nn.Conv2d(2, 3, 1)
    x = torch.randn(1, 2, 5, 5)
    _, target = _batch(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        loss = build_loss("ce_dice", None)(logits, target[:1, :5, :5])
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_unknown_loss_and_wrong_weight_count_raise() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge", None)
    logits, target = _batch()
    with pytest.raises(ValueError, match="class weights"):
        build_loss("ce", torch.ones(2))(logits, target)


def test_class_weights_from_counts() -> None:
    w = class_weights_from_counts([900, 100], [1.0, 1.0])
    assert w == pytest.approx([1000 / 1800, 5.0])
    assert (np.array([900, 100]) * w).sum() / 1000 == pytest.approx(1.0)
    assert class_weights_from_counts([900, 100], [1.0, 2.0]) == pytest.approx([1000 / 1800, 10.0])
    assert class_weights_from_counts([10000, 1], [1.0, 1.0]) == pytest.approx([10001 / 20000, 10.0])
    assert class_weights_from_counts([50, 50, 0], [1.0, 1.0, 0.5]) == pytest.approx([1.0, 1.0, 5.0])
    assert class_weights_from_counts([10**7] + [1] * 11, [1.0] * 12)[0] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        class_weights_from_counts([1, 2, 3], [1.0, 1.0])
    with pytest.raises(ValueError):
        class_weights_from_counts([1, 2], [1.0, 0.0])


# ---------------------------------------------------------------- augmentation

ONLY = {
    "hflip": AugmentConfig(hflip=True, vflip=False, rot90=False),
    "vflip": AugmentConfig(hflip=False, vflip=True, rot90=False),
    "rot90": AugmentConfig(hflip=False, vflip=False, rot90=True),
    "defaults": AugmentConfig(),
}


def _tile(channels: int, size: int = 32, seed: int = 0, block: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A mask of square blocks with labels {0, 2, 5, 255}; image channel 0 equals the mask, others are noise."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice(np.array([0, 2, 5, IGNORE], dtype=np.uint8), size=(size // block, size // block))
    mask = np.kron(blocks, np.ones((block, block), dtype=np.uint8))
    image = rng.normal(0.4, 0.6, size=(size, size, channels)).astype(np.float32)
    image[..., 0] = mask
    return image, mask


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("which", list(ONLY))
def test_geometric_transforms_keep_image_and_mask_aligned(which: str, channels: int) -> None:
    aug = build_augmentation(ONLY[which], tile_size=32, seed=7)
    image, mask = _tile(channels)
    seen = set()
    for _ in range(24):
        out_image, out_mask = aug(image, mask)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert out_image.dtype == np.float32 and out_mask.dtype == np.uint8
        assert np.array_equal(out_image[..., 0], out_mask)
        assert np.array_equal(np.sort(out_image[..., 1:].ravel()), np.sort(image[..., 1:].ravel()))
        seen.add(out_mask.tobytes())
    assert len(seen) > 1


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_elastic_warps_image_and_mask_with_one_field(channels: int) -> None:
    """Channel 0 carries the mask values; with 5 channels, 1-4 carry each pixel's source row and column.

    Row and column are each stored twice, as ``y`` and ``size - y``: their sum stays ``size`` unless the linear warp
    mixed in the zero fill from outside the tile, which marks the pixels whose decoded source cannot be trusted.
    """
    size = 64
    aug = build_augmentation(AugmentConfig(hflip=False, vflip=False, rot90=False, elastic=True), size, seed=3)
    image, mask = _tile(channels, size, block=8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if channels == 5:
        image[..., 1:] = np.stack([yy, size - yy, xx, size - xx], axis=-1)
    labels = [0, 2, 5]
    moved = 0
    for _ in range(12):
        out_image, out_mask = aug(image, mask)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert set(np.unique(out_mask)) <= set(labels) | {IGNORE}
        labelled = out_mask != IGNORE
        # inside a block the linear warp reproduces the label exactly; there it must agree with the mask
        pure = labelled & np.isin(out_image[..., 0], labels)
        assert pure.sum() > 0.7 * labelled.sum()
        assert np.array_equal(out_image[..., 0][pure], out_mask[pure])
        if channels == 5:
            src_y, src_x = out_image[..., 1], out_image[..., 3]
            unfilled = (np.abs(out_image[..., 1] + out_image[..., 2] - size) < 1e-3) & (
                np.abs(out_image[..., 3] + out_image[..., 4] - size) < 1e-3
            )
            clear = (np.abs(src_y % 1 - 0.5) > 0.05) & (np.abs(src_x % 1 - 0.5) > 0.05)
            keep = unfilled & clear & labelled
            assert keep.sum() > 0.7 * labelled.sum()
            expected = mask[np.rint(src_y[keep]).astype(int), np.rint(src_x[keep]).astype(int)]
            assert np.array_equal(out_mask[keep], expected)
        moved += int((out_image[..., 0] != image[..., 0]).sum())
    assert moved > 0


def test_elastic_pads_the_mask_with_unlabelled() -> None:
    size = 64
    aug = build_augmentation(AugmentConfig(hflip=False, vflip=False, rot90=False, elastic=True), size, seed=0)
    mask = np.ones((size, size), dtype=np.uint8)
    image = np.ones((size, size, 2), dtype=np.float32)
    outs = [aug(image, mask)[1] for _ in range(16)]
    assert all(set(np.unique(m)) <= {1, IGNORE} for m in outs)
    assert any((m == IGNORE).any() for m in outs)


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_color_jitter_changes_channels_independently_and_leaves_mask(channels: int) -> None:
    cfg = AugmentConfig(hflip=False, vflip=False, rot90=False, color_jitter=True)
    aug = build_augmentation(cfg, 32, seed=1)
    _, mask = _tile(channels)
    image = np.random.default_rng(0).normal(0.3, 0.5, (32, 32, channels)).astype(np.float32)
    changed = 0
    for _ in range(10):
        out_image, out_mask = aug(image, mask)
        assert np.array_equal(out_mask, mask) and out_image.shape == image.shape
        assert out_image.min() < 0
        if not np.array_equal(out_image, image):
            changed += 1
            # each channel is an affine function of itself: (x - mean) * c + mean + b
            for c in range(channels):
                slope = np.polyfit(image[..., c].ravel(), out_image[..., c].ravel(), 1)[0]
                assert 0.79 < slope < 1.21
    assert changed > 0


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_all_transforms_together_keep_shapes_and_mask_values(channels: int) -> None:
    cfg = AugmentConfig(hflip=True, vflip=True, rot90=True, color_jitter=True, elastic=True)
    aug = build_augmentation(cfg.model_dump(), 32, seed=2)
    image, mask = _tile(channels)
    for _ in range(8):
        out_image, out_mask = aug(image, mask)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {IGNORE}


def test_everything_off_is_identity() -> None:
    aug = build_augmentation({"hflip": False, "vflip": False, "rot90": False}, 32, seed=0)
    image, mask = _tile(3)
    out_image, out_mask = aug(image, mask, np.random.default_rng(0))
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)


def test_augmentation_is_reproducible() -> None:
    cfg = AugmentConfig(color_jitter=True, elastic=True)
    image, mask = _tile(3)

    def run(seed: int) -> list[np.ndarray]:
        aug = build_augmentation(cfg, 32, seed=seed)
        return [np.concatenate([o[0].ravel(), o[1].ravel()]) for o in (aug(image, mask) for _ in range(6))]

    assert all(np.array_equal(a, b) for a, b in zip(run(5), run(5)))
    assert not all(np.array_equal(a, b) for a, b in zip(run(5), run(6)))

    aug = build_augmentation(cfg, 32, seed=0)
    first = aug(image, mask, np.random.default_rng(11))
    aug(image, mask)
    aug(image, mask, np.random.default_rng(99))
    again = aug(image, mask, np.random.default_rng(11))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_rot90_refuses_non_square_tiles() -> None:
    aug = build_augmentation(AugmentConfig(), 32)
    with pytest.raises(ValueError, match="square"):
        aug(np.zeros((32, 16, 1), np.float32), np.zeros((32, 16), np.uint8))


# ---------------------------------------------------------------- metrics


def test_confusion_matrix_hand_computed() -> None:
    cm = ConfusionMatrix(3)
    target = torch.tensor([[[0, 0, 1], [1, IGNORE, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1], [0, 2, 2]]])
    cm.update(pred, target)
    assert np.array_equal(cm.matrix, [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    assert cm.matrix.dtype == np.int64
    iou = cm.iou_per_class()
    assert iou[:2] == pytest.approx([1 / 3, 1 / 3]) and np.isnan(iou[2])
    assert cm.mean_iou() == pytest.approx(1 / 3)
    assert cm.pixel_accuracy() == pytest.approx(0.5)

    # numpy input accumulates; class 2 predicted on class-0 pixels lowers class 0's IoU but stays absent (NaN)
    cm.update(np.array([[[2, 0]]], dtype=np.uint8), np.array([[[0, 0]]], dtype=np.uint8))
    assert np.array_equal(cm.matrix, [[2, 1, 1], [1, 1, 0], [0, 0, 0]])
    iou = cm.iou_per_class()
    assert iou[0] == pytest.approx(2 / (4 + 3 - 2)) and iou[1] == pytest.approx(1 / 3) and np.isnan(iou[2])
    assert cm.mean_iou() == pytest.approx((2 / 5 + 1 / 3) / 2)
    assert cm.pixel_accuracy() == pytest.approx(3 / 6)

    cm.reset()
    assert cm.matrix.sum() == 0 and math.isnan(cm.mean_iou()) and math.isnan(cm.pixel_accuracy())


def test_confusion_matrix_matches_a_loop_on_random_data() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (3, 9, 9))
    target[rng.random((3, 9, 9)) < 0.4] = IGNORE
    pred = rng.integers(0, 4, (3, 9, 9))
    expected = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != IGNORE:
            expected[t, p] += 1
    cm = ConfusionMatrix(4)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert np.array_equal(cm.matrix, expected)


def test_confusion_matrix_rejects_out_of_range_classes() -> None:
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="target"):
        cm.update(np.zeros((1, 2, 2), np.int64), np.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="prediction"):
        cm.update(np.full((1, 2, 2), 2), np.zeros((1, 2, 2), np.int64))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((1, 2, 2), np.int64), np.zeros((1, 2, 3), np.int64))
