"""Training batches: from the patch cache through a DataLoader (``PatchDataset``, ``EpochSampler``) or straight
from a copy of the cache kept on the GPU (``DeviceCache``), and brought to the model as its input (``DeviceInputs``:
raw tiles normalised on the device). Both ways give the same tiles, the same augmentation draw per
(seed, epoch, tile) and the same normalised values, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import TrainingConfig
from ..data.patches import PatchCache
from ..runtime.device import device_index

Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class PatchDataset(Dataset):
    """Tiles of the patch cache as tensors, augmented on the fly when an augmentation is given.

    ``raw``: tiles stay in the image's own dtype (uint8 is a quarter of float32 through workers, pinned memory and
    the copy to the GPU) and each item also names its image, so the batch is normalised on the device
    (``DeviceInputs``); the geometric augmentations move pixels without changing them, so normalising after them
    gives the same numbers as before them. Labels stay uint8 (255 = unlabelled) in that mode."""

    def __init__(self, cache: PatchCache, indices: Sequence[int], augment: Augment | None = None, seed: int = 0,
                 raw: bool = False):
        self.cache = cache
        self.indices = list(indices)
        self.augment = augment
        self.seed = seed
        self.raw = raw
        self.epoch = 0
        """Set by the trainer: each (seed, epoch, tile) draws its own augmentation, in any worker."""

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        # ``EpochSampler`` sends (epoch, i): persistent DataLoader workers hold a copy of this object made when
        # they started, so the epoch must travel with each index to reach them.
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        idx = self.indices[i]
        if self.raw:
            image = self.cache.raw[idx]
        else:
            image = self.cache.input(idx) if hasattr(self.cache, "input") else self.cache.images[idx]
        mask = self.cache.masks[idx]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, idx])
            hwc, mask = self.augment(np.ascontiguousarray(image.transpose(1, 2, 0)), mask, rng)
            image = hwc.transpose(2, 0, 1)
        if self.raw:
            return (torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask)),
                    torch.tensor(self.cache.tiles[idx].image))
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(mask).astype(np.int64)
        )


class EpochSampler(torch.utils.data.Sampler):
    """The indices of ``sampler`` tagged with the dataset's epoch at the start of each pass, as (epoch, index)."""

    def __init__(self, sampler: Any, dataset: PatchDataset):
        self.sampler = sampler
        self.dataset = dataset

    def __iter__(self) -> Any:
        epoch = self.dataset.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def inputs_on_device(cache: PatchCache, cfg: TrainingConfig, device: torch.device) -> bool:
    """Whether tiles travel raw and are normalised on the device: on CUDA, for a raw patch cache, when the
    augmentations are geometric only (brightness jitter and elastic warps work on normalised values)."""
    return (device.type == "cuda" and cache.pre is not None and cache.stats is not None
            and not cfg.augment.color_jitter and not cfg.augment.elastic)


class DeviceInputs:
    """A DataLoader batch to model input (float32, channels_last on CUDA) and int64 labels on the device; raw
    batches (``PatchDataset(raw=True)``) are normalised there by ``TorchNormalizer``, equal to the numpy path."""

    def __init__(self, device: torch.device, cache: PatchCache | None = None):
        self.device = device
        self.normalizer = None
        if cache is not None:
            from ..runtime.normalize import TorchNormalizer

            assert cache.pre is not None and cache.stats is not None
            self.normalizer = TorchNormalizer(cache.pre, cache.stats, cache.raw.shape[1], device)

    def __call__(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cuda = self.device.type == "cuda"
        x = batch[0].to(self.device, non_blocking=cuda)
        y = batch[1].to(self.device, non_blocking=cuda)
        if self.normalizer is not None:
            x = self.normalizer(x, batch[2].to(self.device, non_blocking=cuda))
        if y.dtype != torch.int64:
            y = y.long()
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


_PROBE = np.arange(4, dtype=np.uint8).reshape(2, 2, 1)
_PROBE_MASK = np.zeros((2, 2), np.uint8)
_D4 = [(t, fv, fh) for t in (0, 1) for fv in (0, 1) for fh in (0, 1)]
"""The 8 symmetries of a square: transpose, then flip rows, then flip columns."""


def _d4_numpy(a: np.ndarray, code: int) -> np.ndarray:
    t, fv, fh = _D4[code]
    a = a.swapaxes(0, 1) if t else a
    a = a[::-1] if fv else a
    return a[:, ::-1] if fh else a


_D4_OF_PROBE = {tuple(_d4_numpy(_PROBE, c).ravel()): c for c in range(len(_D4))}


def d4_code(augment: Augment, rng: np.random.Generator) -> int:
    """Which symmetry of the square ``augment`` (flips and 90° turns only) applies with ``rng``: it is run on a 2 × 2
    probe whose four values tell where each corner went, so the draw is the augmentation's own."""
    out, _ = augment(_PROBE, _PROBE_MASK, rng)
    return _D4_OF_PROBE[tuple(np.asarray(out).ravel())]


def d4_torch(x: torch.Tensor, code: int) -> torch.Tensor:
    """Symmetry ``code`` of ``d4_code`` on the last two axes of ``x``: the same pixels as the augmentation moves."""
    t, fv, fh = _D4[code]
    x = x.transpose(-1, -2) if t else x
    x = x.flip(-2) if fv else x
    return x.flip(-1) if fh else x


DEVICE_CACHE_MAX_BYTES = 4 << 30
"""The raw tiles and masks of the patch cache are kept on the GPU when they take at most this much and a third of
its free memory: batches are then gathered, turned and normalised there, with no DataLoader."""


class DeviceCache:
    """The raw patch cache resident on the device, served as training and validation batches equal to those of the
    DataLoader path (``PatchDataset(raw=True)`` + ``DeviceInputs``): the same order (the sampler's), the same
    augmentation draw per (seed, epoch, tile) through ``d4_code``, applied by ``d4_torch`` to the whole batch one
    symmetry at a time, and the same normalisation (``TorchNormalizer``). For flips and 90° turns only."""

    def __init__(self, cache: PatchCache, device: torch.device, augment: Augment | None, seed: int):
        self.device, self.augment, self.seed = device, augment, seed
        raw = np.ascontiguousarray(cache.raw)
        # PyTorch has few kernels for uint16 (no flip, no index_put): 16-bit tiles are held as int16, the same bits,
        # and seen as uint16 again just before they are normalised.
        self.uint16 = raw.dtype == np.uint16
        self.raw = torch.from_numpy(raw.view(np.int16) if self.uint16 else raw).to(device)
        self.masks = torch.from_numpy(np.ascontiguousarray(cache.masks)).to(device)
        self.images = torch.as_tensor([t.image for t in cache.tiles], dtype=torch.long, device=device)
        self.prepare = DeviceInputs(device, cache)

    @staticmethod
    def fits(cache: PatchCache, device: torch.device) -> bool:
        size = cache.raw.nbytes + cache.masks.nbytes
        if device.type != "cuda" or size > DEVICE_CACHE_MAX_BYTES:
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return size <= free // 3

    def batch(self, indices: Sequence[int], epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input and int64 labels of the cache tiles ``indices``; with ``epoch``, augmented as in training."""
        idx = device_index(list(indices), self.device)
        x, y = self.raw.index_select(0, idx), self.masks.index_select(0, idx)
        if epoch is not None and self.augment is not None:
            codes = [d4_code(self.augment, np.random.default_rng([self.seed, epoch, i])) for i in indices]
            for code in sorted(set(codes)):
                if code == 0:
                    continue
                where = device_index([j for j, c in enumerate(codes) if c == code], self.device)
                x[where] = d4_torch(x[where], code)
                y[where] = d4_torch(y[where], code)
        if self.uint16:
            x = x.view(torch.uint16)
        return self.prepare((x, y, self.images.index_select(0, idx)))

    def epoch(self, sampler: EpochSampler, batch: int, drop_last: bool, epoch: int,
              indices: Sequence[int]) -> Any:
        """The training batches of ``epoch`` in the sampler's order (positions into ``indices``)."""
        sampler.dataset.epoch = epoch
        sampler.set_epoch(epoch)
        order = [indices[i] for _, i in sampler]
        stop = len(order) - len(order) % batch if drop_last else len(order)
        for start in range(0, stop, batch):
            yield self.batch(order[start: start + batch], epoch)

    def validation(self, indices: Sequence[int], batch: int) -> Any:
        """Validation batches in order, not augmented."""
        for start in range(0, len(indices), batch):
            yield self.batch(indices[start: start + batch])
