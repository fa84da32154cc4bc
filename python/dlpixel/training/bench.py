"""Training throughput as a ratio against the training step alone, on the same device, batch and precision.

``bench train`` runs ``trainer.fit`` (what ``dlpixel train`` runs after extracting tiles: the batches, from the
patch cache resident on a GPU or from a DataLoader with its workers, with their augmentation, the step, the loss
read-outs, validation every epoch, best-weight copies) over a patch cache of synthetic raw tiles, and compares
its training tiles per second with the step alone (forward, CE+Dice loss, backward, AdamW) on a batch already on
the device: ``loop_efficiency`` = fit ÷ step alone. Validation time counts against the loop, as it does in a real
run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _synthetic_cache(n: int, tile_size: int, seed: int = 0) -> Any:
    """A patch cache of ``n`` raw uint8 RGB tiles with 3-class masks (half the pixels unlabelled)."""
    from ..config import NormalizationConfig
    from ..data.patches import PatchCache, TileRef
    from ..data.preprocessing import ChannelStats, Preprocessing

    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, 3, tile_size, tile_size), dtype=np.uint8)
    masks = rng.integers(0, 3, (n, tile_size, tile_size)).astype(np.uint8)
    masks[:, ::2] = 255
    pre = Preprocessing(channels=[0, 1, 2], channel_names=["Red", "Green", "Blue"], normalization=NormalizationConfig())
    stats = ChannelStats(offset=[5.0, 5.0, 5.0], scale=[240.0, 240.0, 240.0])
    tiles = [TileRef(0, 0, 0) for _ in range(n)]
    return PatchCache(raw, masks, tiles, pre, [stats])


def bench_train(
    backbone: str = "efficientnet-lite0",
    tile_size: int = 256,
    batch_size: int = 8,
    train_tiles: int = 64,
    val_tiles: int = 16,
    epochs: int = 2,
    device: str = "auto",
    precision: str = "bf16",
    num_workers: int | str = "auto",
    compile: bool = False,
    device_cache: bool = True,
) -> dict[str, Any]:
    """Training tiles per second of ``fit`` (validation included) and of the step alone, their ratio, and the
    seconds of each stage of one epoch: the DataLoader alone (read, normalise, augment, collate), the steps, and
    validation."""
    import torch

    from ..config import TrainingConfig
    from ..models.factory import create_model
    from ..runtime.device import autocast_dtype, precision_name, resolve_device
    from .batches import DeviceCache, DeviceInputs, EpochSampler, PatchDataset, inputs_on_device
    from .losses import build_loss
    from .trainer import fit, resolve_workers, worker_context

    cfg = TrainingConfig(backbone=backbone, tile_size=tile_size, batch_size=batch_size, epochs=epochs,
                         early_stop_patience=0, device=device, precision=precision, num_workers=num_workers,
                         compile=compile, pretrained=False)
    cache = _synthetic_cache(train_tiles + val_tiles, tile_size)
    train_idx, val_idx = list(range(train_tiles)), list(range(train_tiles, train_tiles + val_tiles))
    weights = np.ones(3, np.float32)
    dev = resolve_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # The batches alone, one epoch, as ``fit`` makes them (from the tiles resident on the GPU, or by the DataLoader
    # with raw tiles normalised on the device on CUDA): what the loop must hide behind the steps.
    from .augment import build_augmentation

    raw = inputs_on_device(cache, cfg, dev)
    resident = bool(device_cache and raw and DeviceCache.fits(cache, dev))
    workers = resolve_workers(cfg, dev)
    augment = build_augmentation(cfg.augment, tile_size, seed=cfg.seed)
    ds = PatchDataset(cache, train_idx, augment, seed=cfg.seed, raw=raw)
    if resident:
        tiles_on_device = DeviceCache(cache, dev, augment, cfg.seed)
        sampler = EpochSampler(torch.utils.data.RandomSampler(ds), ds)
        sync()
        t0 = time.perf_counter()
        for _ in tiles_on_device.epoch(sampler, batch_size, False, 1, train_idx):
            pass
        del tiles_on_device  # ``fit`` keeps its own copy: the peak memory printed is the run's
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             pin_memory=dev.type == "cuda",
                                             multiprocessing_context=worker_context(workers))
        prepare = DeviceInputs(dev, cache if raw else None)
        t0 = time.perf_counter()
        for batch in loader:
            prepare(batch)
    sync()
    loader_s = time.perf_counter() - t0
    del ds

    model, _ = create_model(backbone, 3, 3, pretrained=False)
    t0 = time.perf_counter()
    history = fit(model, cache, train_idx, val_idx, 3, cfg, weights, device_cache=None if resident else False).history
    fit_s = time.perf_counter() - t0
    # After the first epoch (worker start-up, cuDNN autotuning and compilation behind it): what every further
    # epoch of a long run costs.
    steady_s = history[-1]["seconds"] - history[0]["seconds"] if len(history) > 1 else None

    # The step alone, on a batch already on the device.
    model, _ = create_model(backbone, 3, 3, pretrained=False)
    model = model.to(dev).train()
    amp = autocast_dtype(dev, precision)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile and dev.type == "cuda" else model
    x = torch.from_numpy(np.stack([cache.input(i) for i in range(batch_size)])).to(dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(cache.masks[:batch_size].astype(np.int64)).to(dev)
    loss_fn = build_loss(cfg.loss, torch.ones(3, device=dev), ignore_index=255)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(2):
        step()
    sync()
    n_steps = max(2, epochs * (train_tiles // batch_size))
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync()
    step_tps = n_steps * batch_size / (time.perf_counter() - t0)
    fit_tps = epochs * train_tiles / fit_s
    steady_tps = (len(history) - 1) * train_tiles / steady_s if steady_s else None
    return {
        "device": dev.type,
        "precision": precision_name(amp),
        "backbone": backbone,
        "tile_size": tile_size,
        "batch_size": batch_size,
        "num_workers": 0 if resident else workers,
        "inputs_normalised_on_device": raw,
        "tiles_resident_on_device": resident,
        "compile": bool(compile and dev.type == "cuda"),
        "train_tiles": train_tiles,
        "val_tiles": val_tiles,
        "epochs": epochs,
        "fit_tiles_per_second": round(fit_tps, 2),
        "step_only_tiles_per_second": round(step_tps, 2),
        "loop_efficiency": round(fit_tps / step_tps, 3),
        "fit_tiles_per_second_after_epoch_1": round(steady_tps, 2) if steady_tps else None,
        "loop_efficiency_after_epoch_1": round(steady_tps / step_tps, 3) if steady_tps else None,
        "seconds_fit": round(fit_s, 3),
        "seconds_batches_alone_one_epoch": round(loader_s, 3),
        "seconds_steps_one_epoch_at_step_speed": round(train_tiles / step_tps, 3),
        "seconds_per_epoch_fit": round(fit_s / epochs, 3),
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None,
    }
