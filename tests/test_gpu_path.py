"""The device path of apply and training, run on CPU tensors and compared with the numpy path it replaces on a GPU:
the same normalisation, the same blended probabilities and class maps, the same raw tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CLASSES, strokes_from_truth, synthetic_image, write_folder_project
from dlpixel.classifiers.metadata import ClassifierMetadata, ClassInfo
from dlpixel.config import InferenceConfig, NormalizationConfig, TrainingConfig
from dlpixel.data.images import FileImageSource, write_ome_tiff
from dlpixel.data.preprocessing import ChannelStats, Preprocessing, image_stats, normalize, read_tile, stats_for
from dlpixel.inference.backends import TorchBackend
from dlpixel.inference.gpu import NOT_COMPUTED, normalize_torch
from dlpixel.inference.predictor import Predictor
from dlpixel.inference.reading import normalize_raw, read_raw_block, read_raw_row
from dlpixel.projects import open_project
from dlpixel.runtime.device import autocast_dtype, precision_name
from pydantic import ValidationError

STRATEGIES = ["percentile_99", "min_max", "z_score", "fixed_range"]


def _pixels(dtype: type, rng: np.random.Generator) -> np.ndarray:
    if dtype is np.float32:
        return rng.normal(100, 40, (16, 12, 3)).astype(np.float32)
    top = 255 if dtype is np.uint8 else 65535
    return rng.integers(0, top + 1, (16, 12, 3)).astype(dtype)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_torch_normalisation_equals_numpy(strategy, per_channel, dtype):
    rng = np.random.default_rng(7)
    raw = _pixels(dtype, rng)
    bounds = {"min": 10.0, "max": 200.0} if strategy == "fixed_range" else {}
    norm = NormalizationConfig(strategy=strategy, per_channel=per_channel, **bounds)
    pre = Preprocessing(channels=[0, 1, 2], channel_names=["a", "b", "c"], normalization=norm)
    from dlpixel.data.preprocessing import _stats_from_pixels

    stats = _stats_from_pixels(raw.reshape(-1, 3), norm)
    want = normalize(raw, pre, stats)
    # NHWC permuted to NCHW, as the device path uploads it.
    got = normalize_torch(torch.from_numpy(raw)[None].permute(0, 3, 1, 2), pre, stats)
    assert got.dtype == torch.float32
    assert np.array_equal(got[0].permute(1, 2, 0).numpy(), want)
    # A float32 input is not modified in place.
    if dtype is np.float32:
        copy = raw.copy()
        normalize_torch(torch.from_numpy(raw)[None].permute(0, 3, 1, 2), pre, stats)
        assert np.array_equal(raw, copy)


def test_context_channels_use_the_same_statistics():
    rng = np.random.default_rng(1)
    raw = np.concatenate([_pixels(np.uint8, rng), _pixels(np.uint8, rng)], -1)
    pre = Preprocessing(channels=[0, 1, 2], channel_names=["a", "b", "c"], normalization=NormalizationConfig(),
                        context_scale=2)
    stats = ChannelStats(offset=[3.0, 4.0, 5.0], scale=[200.0, 180.0, 90.0])
    want = normalize_raw(raw, pre, stats)
    assert np.array_equal(want[..., 3:], normalize(raw[..., 3:], pre, stats))
    got = normalize_torch(torch.from_numpy(raw)[None].permute(0, 3, 1, 2), pre, stats)
    assert np.array_equal(got[0].permute(1, 2, 0).numpy(), want)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A 300 × 260 RGB pyramidal OME-TIFF with a level at downsample 2."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (260, 300, 3)).astype(np.uint8)
    return write_ome_tiff(tmp_path_factory.mktemp("pyr") / "p.ome.tif", img, pixel_size_um=0.5)


@pytest.mark.parametrize("ds", [1.0, 2.0, 1.5, 3.0])
@pytest.mark.parametrize("context", [1, 2])
def test_tiles_cut_from_a_strip_equal_tiles_read_alone(pyramid, ds, context):
    src = FileImageSource(pyramid)
    pre = Preprocessing(channels=[2, 0], channel_names=["Red", "Green", "Blue"], normalization=NormalizationConfig(),
                        context_scale=context)
    stats = image_stats(src, pre)
    xs, y = [0, 24, 48, 100], 40  # overlapping, and past the right edge at coarse downsamples
    raws = read_raw_row(src, pre, ds, xs, y, 64)
    for x, raw in zip(xs, raws):
        assert raw.shape == (64, 64, 2 * context)
        want = read_tile(src, pre, stats, ds, x * ds, y * ds, 64)
        assert np.array_equal(normalize_raw(raw, pre, stats), want)
    if ds == 1.0 and context == 1:
        assert raws[0].dtype == np.uint8  # stored pixels travel in the image's dtype


@pytest.fixture(scope="module")
def pyramid16(tmp_path_factory):
    """A 300 × 260 three-channel uint16 pyramidal OME-TIFF."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 65536, (260, 300, 3)).astype(np.uint16)
    return write_ome_tiff(tmp_path_factory.mktemp("pyr16") / "p16.ome.tif", img, pixel_size_um=0.5)


@pytest.mark.parametrize("ds", [1.0, 1.5])
@pytest.mark.parametrize("context", [1, 2])
@pytest.mark.parametrize("xs", [[0, 24, 48, 100], [0, 200]])
@pytest.mark.parametrize("bits", [8, 16])
def test_device_tiles_cut_from_a_row_block_equal_tiles_read_alone(pyramid, pyramid16, ds, context, xs, bits):
    """The device path uploads one block per row (the strip the row spans, or sparse tiles side by side), normalises
    it whole and cuts the tiles out there: each equals ``read_tile`` (8- and 16-bit images)."""
    from dlpixel.inference.gpu import DeviceBlender, TorchNormalizer, host_block

    src = FileImageSource(pyramid if bits == 8 else pyramid16)
    pre = Preprocessing(channels=[2, 0], channel_names=["Red", "Green", "Blue"], normalization=NormalizationConfig(),
                        context_scale=context)
    stats = image_stats(src, pre)
    cpu = torch.device("cpu")
    block, offsets = read_raw_block(src, pre, ds, xs, 40, 64)
    sparse = context > 1 or xs == [0, 200]
    assert block.shape == (64, 64 * len(xs) if sparse else xs[-1] + 64 - xs[0], 2 * context)
    blender = DeviceBlender(3, 64, 300, np.ones((64, 64), np.float32), cpu)
    blender.normalize = TorchNormalizer(pre, stats, pre.n_inputs, cpu)
    tiles = blender.tiles(host_block(block, cpu), offsets)
    assert tiles.shape == (len(xs), 2 * context, 64, 64) and tiles.dtype == torch.float32
    for x, tile in zip(xs, tiles):
        assert np.array_equal(tile.permute(1, 2, 0).numpy(), read_tile(src, pre, stats, ds, x * ds, 40 * ds, 64))


class _Pointwise(torch.nn.Module):
    """A fixed 1×1 convolution (per-pixel model) or 3×3 (a receptive field that crosses tile borders)."""

    def __init__(self, k: int):
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv2d(3, 3, k, padding=k // 2)
        with torch.no_grad():
            self.conv.weight.mul_(4)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    img, truth = synthetic_image()
    folder = write_folder_project(tmp_path_factory.mktemp("gpu") / "project",
                                  {"synthetic.tif": (img, strokes_from_truth(truth))})
    names = ["Red", "Green", "Blue"]
    meta = ClassifierMetadata(
        name="known", input_channels=names, tile_size=64, downsample=1.0,
        classes=[ClassInfo(index=i, name=n, color=(200, 10 * i, 0)) for i, n in enumerate(CLASSES)],
        preprocessing=Preprocessing(channels=[0, 1, 2], channel_names=names, normalization=NormalizationConfig()),
        training=TrainingConfig(), labelled_pixels={}, class_weights={})
    return folder, meta


def _run(meta, folder, backend, on_device, batch, window=None, keep=None, probabilities=True):
    src = open_project(folder).image("synthetic.tif").open()
    p = Predictor(backend, meta, 64, 16, batch_size=batch, on_device=on_device)
    p.keep_probabilities = probabilities
    strips = list(p.strips(src, stats_for(src, meta.preprocessing), window, keep))
    assert set(p.timings) == {"stats", "read", "preprocess", "model", "blend", "write"}
    return strips


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("batch", [1, 7])
def test_device_path_gives_the_host_path_class_map_and_probabilities(known, k, batch):
    """Batches of 7 span rows of five tiles; a window and a tile filter leave pixels uncomputed."""
    folder, meta = known
    backend = TorchBackend(_Pointwise(k), "cpu", "fp32")
    for window, keep in [(None, None), ((30, 50, 250, 230), lambda x, y: (x // 48 + y // 48) % 3 != 0)]:
        host = _run(meta, folder, backend, False, 5, window, keep)
        dev = _run(meta, folder, backend, True, batch, window, keep)
        assert [s.y for s in host] == [s.y for s in dev]
        h_classes = np.concatenate([s.classes() for s in host])
        d_classes = np.concatenate([s.classes() for s in dev])
        assert d_classes.dtype == np.uint8 and np.array_equal(h_classes, d_classes)
        assert np.array_equal(np.concatenate([s.computed for s in host]), np.concatenate([s.computed for s in dev]))
        diff = np.abs(np.concatenate([s.probabilities for s in host]) - np.concatenate([s.probabilities for s in dev]))
        assert diff.max() <= 1e-6
        if keep is not None:
            assert (h_classes == NOT_COMPUTED).any() and (h_classes != NOT_COMPUTED).any()


def test_device_strips_without_probabilities_carry_only_classes(known):
    folder, meta = known
    backend = TorchBackend(_Pointwise(1), "cpu", "fp32")
    strips = _run(meta, folder, backend, True, 8, probabilities=False)
    assert strips and all(s.classes().shape[1] == 320 for s in strips)
    with pytest.raises(RuntimeError, match="without probabilities"):
        _ = strips[0].probabilities


def test_precision_setting_and_old_metadata():
    assert TrainingConfig(mixed_precision=False).precision == "fp32"
    assert TrainingConfig.model_validate({"mixed_precision": True}).precision == "bf16"
    assert "mixed_precision" not in TrainingConfig().model_dump()
    assert InferenceConfig(precision="fp16").precision == "fp16"
    with pytest.raises(ValidationError, match="precision"):
        InferenceConfig(precision="fp8")
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "bf16") is None and precision_name(autocast_dtype(cpu, "fp16")) == "fp32"
    assert TorchBackend(_Pointwise(1), "cpu", "bf16").precision == "fp32"


def test_patch_cache_keeps_raw_pixels_and_normalises_them_as_read_tile(known):
    from dlpixel.data.patches import extract_patches

    folder, meta = known
    project = open_project(folder)
    image = project.image("synthetic.tif")
    src = image.open()
    pre = meta.preprocessing
    stats = stats_for(src, pre)
    shapes = image.annotations()
    cache = extract_patches([src], [shapes], [stats], pre, {c: i for i, c in enumerate(CLASSES)}, 64, 1.0, 0, 3)
    assert len(cache) > 0 and cache.raw.dtype == np.uint8
    for k, t in enumerate(cache.tiles[:4]):
        want = read_tile(src, pre, stats, 1.0, t.x, t.y, 64).transpose(2, 0, 1)
        assert np.array_equal(cache.images[k], want)


def test_validation_counts_on_the_device_equal_the_confusion_matrix():
    from dlpixel.training.metrics import ConfusionMatrix
    from dlpixel.training.trainer import evaluate

    torch.manual_seed(0)
    model = _Pointwise(1)
    x = torch.rand(5, 3, 16, 16)
    y = torch.randint(0, 3, (5, 16, 16))
    y[:, ::3] = 255
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    loss, cm, agree = evaluate(model, loader, loss_fn, 3, torch.device("cpu"), None)
    assert agree is None
    want = ConfusionMatrix(3)
    with torch.no_grad():
        for xb, yb in loader:
            want.update(model(xb).argmax(1), yb)
        want_loss = np.mean([float(loss_fn(model(xb), yb)) for xb, yb in loader])
        preds = torch.cat([model(xb).argmax(1) for xb, _ in loader])
    assert np.array_equal(cm.matrix, want.matrix) and cm.matrix.sum() == int((y != 255).sum())
    assert abs(loss - want_loss) < 1e-6
    # Agreement with reference maps of whole tiles (positions 1 and 3, across the two batches): the model's own
    # maps agree fully; a reference that differs is counted against every pixel of those tiles.
    _, _, same = evaluate(model, loader, loss_fn, 3, torch.device("cpu"), None, None, {1: preds[1], 3: preds[3]})
    assert same.mean_iou() == 1.0 and same.matrix.sum() == 2 * 16 * 16
    other = (preds[3] + 1) % 3
    _, _, got = evaluate(model, loader, loss_fn, 3, torch.device("cpu"), None, None, {1: preds[1], 3: other})
    both = ConfusionMatrix(3)
    both.update(torch.stack([preds[1], preds[3]]), torch.stack([preds[1], other]))
    assert np.array_equal(got.matrix, both.matrix) and got.mean_iou() == pytest.approx(both.mean_iou())
    assert got.mean_iou() < 1.0


def test_a_non_finite_loss_stops_training_with_one_line_naming_the_batch():
    from dlpixel.errors import TrainingError
    from dlpixel.training.bench import _synthetic_cache
    from dlpixel.training.trainer import fit

    cache = _synthetic_cache(6, 32)
    assert cache.raw.dtype == np.uint8 and cache.images[0].dtype == np.float32
    from dlpixel.models.factory import create_model

    model, _ = create_model("efficientnet-lite0", 3, 3, pretrained=False)
    with torch.no_grad():
        model.segmentation_head[0].bias.fill_(float("nan"))
    cfg = TrainingConfig(tile_size=32, batch_size=2, epochs=1, device="cpu", pretrained=False,
                         early_stop_patience=0)
    with pytest.raises(TrainingError, match=r"the loss became nan at epoch 1, batch 1;") as err:
        fit(model, cache, [0, 1, 2, 3], [4, 5], 3, cfg, np.ones(3, np.float32))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_torch_normalisation_with_a_backbones_input_mean_and_std_equals_numpy(dtype):
    raw = _pixels(dtype, np.random.default_rng(3))
    pre = Preprocessing(channels=[0, 1, 2], channel_names=["a", "b", "c"], normalization=NormalizationConfig(),
                        input_mean=[0.485, 0.456, 0.406], input_std=[0.229, 0.224, 0.225])
    stats = ChannelStats(offset=[3.0, 4.0, 5.0], scale=[200.0, 180.0, 90.0])
    want = normalize(raw, pre, stats)
    got = normalize_torch(torch.from_numpy(raw)[None].permute(0, 3, 1, 2), pre, stats)
    assert np.array_equal(got[0].permute(1, 2, 0).numpy(), want)


@pytest.mark.parametrize("input_norm", [False, True])
def test_training_batches_normalised_on_the_device_equal_the_host_batches(input_norm):
    """Raw tiles of two images (each with its own statistics, context channels included), flipped and rotated by
    the same draws, then normalised by ``DeviceInputs`` equal the tiles normalised first (the CPU path), bit for
    bit, with the same labels."""
    from dlpixel.data.patches import PatchCache, TileRef
    from dlpixel.training.augment import build_augmentation
    from dlpixel.training.batches import DeviceInputs, PatchDataset, inputs_on_device

    rng = np.random.default_rng(3)
    n, size = 6, 32
    raw = rng.integers(0, 256, (n, 6, size, size)).astype(np.uint8)  # 3 channels + 3 context channels
    masks = rng.integers(0, 3, (n, size, size)).astype(np.uint8)
    masks[:, ::3] = 255
    extra = {"input_mean": [0.5, 0.4, 0.3], "input_std": [0.2, 0.25, 0.3]} if input_norm else {}
    pre = Preprocessing(channels=[0, 1, 2], channel_names=["a", "b", "c"], normalization=NormalizationConfig(),
                        context_scale=2, **extra)
    stats = [ChannelStats(offset=[3.0, 4.0, 5.0], scale=[200.0, 180.0, 90.0]),
             ChannelStats(offset=[10.0, 0.0, 20.0], scale=[120.0, 250.0, 60.0])]
    tiles = [TileRef(i % 2, 0, 0) for i in range(n)]
    cache = PatchCache(raw, masks, tiles, pre, stats)
    augment = build_augmentation(TrainingConfig().augment, size, seed=0)
    host = PatchDataset(cache, range(n), augment, seed=5)
    device = PatchDataset(cache, range(n), augment, seed=5, raw=True)
    host.epoch = device.epoch = 3
    cpu = torch.device("cpu")
    batch_host = torch.utils.data.default_collate([host[i] for i in range(n)])
    batch_raw = torch.utils.data.default_collate([device[i] for i in range(n)])
    assert batch_raw[0].dtype == torch.uint8 and batch_raw[1].dtype == torch.uint8
    x_want, y_want = DeviceInputs(cpu)(batch_host)
    x_got, y_got = DeviceInputs(cpu, cache)(batch_raw)
    assert torch.equal(x_got, x_want)
    assert torch.equal(y_got, y_want) and y_got.dtype == torch.int64
    # The draws did move pixels: the batch differs from the unaugmented tiles.
    plain = np.stack([cache.input(i) for i in range(n)])
    assert not np.array_equal(x_want.numpy(), plain)
    # Only on CUDA, only for a raw cache, only with geometric augmentations.
    cfg = TrainingConfig()
    assert not inputs_on_device(cache, cfg, cpu)
    assert inputs_on_device(cache, cfg, torch.device("cuda"))
    assert not inputs_on_device(cache, TrainingConfig(augment={"color_jitter": True}), torch.device("cuda"))
    assert not inputs_on_device(PatchCache(raw.astype(np.float32), masks, tiles), cfg, torch.device("cuda"))


def test_training_workers_auto_are_none_on_a_cpu_and_a_few_on_cuda(monkeypatch):
    import os

    from dlpixel.training import trainer
    from dlpixel.training.trainer import resolve_workers, worker_context

    monkeypatch.setattr(trainer, "fork_unsafe", lambda: False)
    assert resolve_workers(TrainingConfig(), torch.device("cpu")) == 0
    assert resolve_workers(TrainingConfig(), torch.device("cuda")) == max(0, min(4, (os.cpu_count() or 1) - 1))
    assert resolve_workers(TrainingConfig(num_workers=3), torch.device("cpu")) == 3
    assert worker_context(2) is None
    # In a process hosting QuPath's JVM: no workers unless asked for, and those spawned rather than forked.
    monkeypatch.setattr(trainer, "fork_unsafe", lambda: True)
    assert resolve_workers(TrainingConfig(), torch.device("cuda")) == 0
    assert resolve_workers(TrainingConfig(num_workers=2), torch.device("cuda")) == 2
    assert worker_context(2) == "spawn" and worker_context(0) is None
    with pytest.raises(ValueError, match="0 or more"):
        TrainingConfig(num_workers=-1)


def test_persistent_workers_draw_each_epochs_own_augmentation():
    """DataLoader workers keep the copy of the dataset made when they started; the epoch reaches them with each
    index, so epoch 2 is not a replay of epoch 1's flips."""
    from dlpixel.data.patches import PatchCache, TileRef
    from dlpixel.training.augment import build_augmentation
    from dlpixel.training.batches import EpochSampler, PatchDataset

    rng = np.random.default_rng(4)
    n, size = 8, 16
    raw = rng.integers(0, 256, (n, 3, size, size)).astype(np.uint8)
    masks = rng.integers(0, 3, (n, size, size)).astype(np.uint8)
    pre = Preprocessing(channels=[0, 1, 2], channel_names=["a", "b", "c"], normalization=NormalizationConfig())
    cache = PatchCache(raw, masks, [TileRef(0, 0, 0)] * n, pre, [ChannelStats(offset=[0.0] * 3, scale=[255.0] * 3)])
    ds = PatchDataset(cache, range(n), build_augmentation(TrainingConfig().augment, size, seed=0), seed=1, raw=True)
    from dlpixel.training.trainer import worker_context

    loader = torch.utils.data.DataLoader(ds, batch_size=n, sampler=EpochSampler(torch.utils.data.SequentialSampler(ds),
                                                                                ds),
                                         num_workers=1, persistent_workers=True,
                                         multiprocessing_context=worker_context(1))
    batches = {}
    for epoch in (1, 2):
        ds.epoch = epoch
        batches[epoch] = next(iter(loader))[0]
        want = torch.stack([ds[(epoch, i)][0] for i in range(n)])
        assert torch.equal(batches[epoch], want)
    assert not torch.equal(batches[1], batches[2])


def test_training_with_persistent_workers_equals_training_without():
    """Two epochs with one DataLoader worker (persistent, prefetching the next epoch during validation) give the
    same weights and losses as the loop without workers: the same tiles, flips and order reach the steps."""
    from dlpixel.models.factory import create_model
    from dlpixel.training.bench import _synthetic_cache
    from dlpixel.training.trainer import fit

    cache = _synthetic_cache(10, 32)
    runs = []
    for workers in (0, 1):
        cfg = TrainingConfig(backbone="resnet18", tile_size=32, batch_size=4, epochs=2, early_stop_patience=0,
                             device="cpu", num_workers=workers, pretrained=False)
        torch.manual_seed(0)
        model, _ = create_model("resnet18", 3, 3, pretrained=False)
        result = fit(model, cache, list(range(8)), [8, 9], 3, cfg, np.ones(3, np.float32))
        runs.append(result)
    a, b = runs
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert a.history[0]["train_loss"] != a.history[1]["train_loss"]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_symmetry_probe_names_the_augmentations_own_flips_and_turns():
    """``d4_code`` reads which of the 8 symmetries the augmentation draws from its effect on a 2 × 2 probe;
    ``d4_torch`` then moves a whole tile's pixels (and its mask's) exactly as the augmentation does."""
    from dlpixel.training.augment import build_augmentation
    from dlpixel.training.batches import d4_code, d4_torch

    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    mask = rng.integers(0, 3, (24, 24)).astype(np.uint8)
    augment = build_augmentation(TrainingConfig().augment, 24, seed=0)
    seen = set()
    for i in range(64):
        want_image, want_mask = augment(image, mask, np.random.default_rng([2, 1, i]))
        code = d4_code(augment, np.random.default_rng([2, 1, i]))
        seen.add(code)
        got = d4_torch(torch.from_numpy(image).permute(2, 0, 1), code).permute(1, 2, 0)
        assert np.array_equal(got.numpy(), want_image)
        assert np.array_equal(d4_torch(torch.from_numpy(mask), code).numpy(), want_mask)
    assert seen == set(range(8))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_device_cache_batches_equal_the_dataloader_batches(dtype):
    """Batches gathered, turned and normalised from the resident cache equal the DataLoader's (``PatchDataset(raw)``
    + ``DeviceInputs``) bit for bit, epoch by epoch, in the sampler's order; validation batches likewise. 16-bit
    tiles too (PyTorch cannot flip uint16 tensors: they are held as int16)."""
    from dlpixel.training.augment import build_augmentation
    from dlpixel.training.batches import DeviceCache, DeviceInputs, EpochSampler, PatchDataset
    from dlpixel.training.bench import _synthetic_cache

    cache = _synthetic_cache(11, 32)
    if dtype is np.uint16:
        cache.raw = cache.raw.astype(np.uint16) * 257 + 3
    cpu = torch.device("cpu")
    train_idx, val_idx = [0, 2, 3, 5, 6, 7, 8, 10], [1, 4, 9]
    augment = build_augmentation(TrainingConfig().augment, 32, seed=0)
    ds = PatchDataset(cache, train_idx, augment, seed=3, raw=True)
    sampler = EpochSampler(torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(1)), ds)
    twin_ds = PatchDataset(cache, train_idx, augment, seed=3, raw=True)
    twin = EpochSampler(torch.utils.data.RandomSampler(twin_ds, generator=torch.Generator().manual_seed(1)), twin_ds)
    loader = torch.utils.data.DataLoader(twin_ds, batch_size=3, sampler=twin)
    resident = DeviceCache(cache, cpu, augment, seed=3)
    prepare = DeviceInputs(cpu, cache)
    for epoch in (1, 2):
        twin_ds.epoch = epoch
        want = [prepare(b) for b in loader]
        got = list(resident.epoch(sampler, 3, False, epoch, train_idx))
        assert len(got) == len(want) == 3
        for (xg, yg), (xw, yw) in zip(got, want):
            assert torch.equal(xg, xw) and torch.equal(yg, yw)
    val = torch.utils.data.DataLoader(PatchDataset(cache, val_idx, raw=True), batch_size=2)
    for (xg, yg), (xw, yw) in zip(resident.validation(val_idx, 2), [prepare(b) for b in val]):
        assert torch.equal(xg, xw) and torch.equal(yg, yw)


def test_training_from_the_device_cache_equals_training_from_the_dataloader(monkeypatch):
    """``fit`` with the resident cache gives the same losses and weights as with the DataLoader, both normalising
    raw tiles as on a GPU."""
    from dlpixel.models.factory import create_model
    from dlpixel.training import trainer
    from dlpixel.training.bench import _synthetic_cache

    monkeypatch.setattr(trainer, "inputs_on_device", lambda cache, cfg, device: True)
    cache = _synthetic_cache(10, 32)
    runs = []
    for resident in (False, True):
        cfg = TrainingConfig(backbone="resnet18", tile_size=32, batch_size=4, epochs=2, early_stop_patience=0,
                             device="cpu", num_workers=0, pretrained=False)
        torch.manual_seed(0)
        model, _ = create_model("resnet18", 3, 3, pretrained=False)
        runs.append(trainer.fit(model, cache, list(range(8)), [8, 9], 3, cfg, np.ones(3, np.float32),
                                device_cache=resident))
    a, b = runs
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_bench_inference_reports_every_stage_and_where_each_part_ran():
    from dlpixel.inference.bench import bench_inference

    result = bench_inference(size=256, tile_size=64, batch_size=4, backend="torch", device="cpu", repeats=1,
                             path="device", row_readers="separate_processes", map_writer="separate_process")
    assert result["path"] == "device" and result["tiles"] == 25  # 256 px in 64-px tiles overlapping by 16
    assert result["row_readers"] == "separate_processes" and result["map_writer"] == "separate_process"
    assert {f"seconds_{k}" for k in ("stats", "read", "preprocess", "model", "blend", "write")} <= set(result)
    for key in ("end_to_end_tiles_per_second", "model_only_tiles_per_second", "without_model_tiles_per_second"):
        assert result[key] > 0
    ratio = result["end_to_end_tiles_per_second"] / result["model_only_tiles_per_second"]
    assert result["pipeline_efficiency"] == pytest.approx(ratio, abs=0.002)  # of the unrounded figures
