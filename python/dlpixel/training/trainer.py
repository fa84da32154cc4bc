"""The training loop: AdamW, a learning-rate schedule, bf16/fp16/fp32 precision on CUDA, early stopping with best
weights. Its batches come from ``training.batches``.

On a GPU the loop never waits for the device inside an epoch except every ``log_every`` batches: the loss is summed
on the device and read (and checked for non-finite values) only then; validation counts its confusion matrix on the
device and reads it once per epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainingConfig
from ..data.patches import UNLABELLED, PatchCache
from ..errors import Cancelled, TrainingError
from ..runtime.device import autocast_dtype, precision_name, resolve_device
from ..runtime.events import CancelToken, Emitter
from ..runtime.process import fork_unsafe
from . import distributed
from .batches import DeviceCache, DeviceInputs, EpochSampler, PatchDataset, inputs_on_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_batches(loader: DataLoader, dataset: PatchDataset, epoch: int) -> Any:
    """The loader's iterator for ``epoch``: with workers, they start fetching its first batches at once."""
    dataset.epoch = epoch
    distributed.set_epoch(loader, epoch)
    return iter(loader)


def worker_context(workers: int) -> str | None:
    """How DataLoader workers start: forked (the default, the patch cache shared), or spawned afresh (the dataset
    pickled to each) in a process that cannot be forked safely (one hosting QuPath's Java VM, ``runtime.process``)."""
    return "spawn" if workers > 0 and fork_unsafe() else None


def resolve_workers(cfg: TrainingConfig, device: torch.device) -> int:
    """``num_workers``, with ``auto`` resolved: none on a CPU, up to 4 on a CUDA GPU (a core left for the loop);
    none in a process that hosts QuPath's Java VM, where workers would have to be spawned with a copy of the patch
    cache each (a number set explicitly is kept, and spawned)."""
    if cfg.num_workers != "auto":
        return int(cfg.num_workers)
    if device.type != "cuda" or fork_unsafe():
        return 0
    import os

    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def build_scheduler(
    name: str, optimizer: torch.optim.Optimizer, cfg: TrainingConfig, steps_per_epoch: int
) -> tuple[Any, str]:
    """The schedule and when it steps: ``batch``, ``epoch`` or ``metric`` (plateau), or ``never``."""
    if name == "one_cycle":
        return (
            torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg.learning_rate, total_steps=max(1, cfg.epochs * steps_per_epoch)
            ),
            "batch",
        )
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs)), "epoch"
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1), "epoch"
    if name == "plateau":
        mode = "max" if cfg.early_stop_metric == "mean_iou" else "min"
        patience = max(1, cfg.early_stop_patience // 3)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=patience), (
            "metric"
        )
    return None, "never"


@dataclass
class FitResult:
    """The best model and what training measured."""

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float
    per_class_iou: list[float | None]
    mean_iou: float
    pixel_accuracy: float
    confusion: list[list[int]]
    stopped_early: bool
    device: str
    precision: str
    seconds: float
    stopped_by_user: bool = False
    """The run was cancelled (Ctrl-C, QuPath's Cancel) and ended after the epoch under way."""
    agreement_confusion: list[list[int]] | None = None
    """With ``reference`` maps: the best epoch's counts of every pixel of those tiles, [reference, model]."""


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(float(v)) else float(v) for v in values]


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    n_classes: int,
    device: torch.device,
    amp: torch.dtype | None,
    prepare: Callable[[Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]] | None = None,
    reference: dict[int, torch.Tensor] | None = None,
) -> tuple[float, Any, Any]:
    """Validation loss (mean over batches) and the confusion matrix over labelled pixels, in eval mode, in the
    training precision; both summed on the device and read once."""
    from .metrics import ConfusionMatrix

    model.eval()
    cm = ConfusionMatrix(n_classes)
    k = n_classes
    counts = torch.zeros(k * k + 1, dtype=torch.int64, device=device)
    total = torch.zeros((), dtype=torch.float32, device=device)
    batches = 0
    prepare = prepare or DeviceInputs(device)
    agree = torch.zeros(k * k, dtype=torch.int64, device=device) if reference else None
    position = 0
    with torch.inference_mode():
        for batch in loader:
            x, y = prepare(batch)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x)
            total += loss_fn(logits.float(), y).detach()
            batches += 1
            pred = logits.argmax(1)
            if agree is not None:
                # Whole tiles against the reference's map (every pixel, labelled or not).
                for i in range(len(pred)):
                    ref = reference.get(position + i)  # type: ignore[union-attr]
                    if ref is not None:
                        agree += torch.bincount((ref * k + pred[i]).reshape(-1), minlength=k * k)
            position += len(pred)
            # Unlabelled pixels go to the extra bin k*k; no data-dependent shapes, so no wait for the device.
            labelled = (y >= 0) & (y < k)
            idx = torch.where(labelled, y * k + pred, torch.full_like(y, k * k))
            counts.scatter_add_(0, idx.reshape(-1), torch.ones_like(idx.reshape(-1)))
    cm._counts += counts[: k * k].reshape(k, k).cpu().numpy()
    both = None
    if agree is not None and int(agree.sum()):
        both = ConfusionMatrix(k)  # matrix[reference, model]
        both._counts += agree.reshape(k, k).cpu().numpy()
    return float(total) / max(batches, 1), cm, both


def fit(
    model: nn.Module,
    cache: PatchCache,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    n_classes: int,
    cfg: TrainingConfig,
    class_weights: np.ndarray,
    frozen_blocks: Sequence[str] = (),
    emit: Emitter | None = None,
    cancel: CancelToken | None = None,
    reference: dict[int, np.ndarray] | None = None,
    device_cache: bool | None = None,
) -> FitResult:
    """Train ``model`` on the cached tiles; return it with the weights of its best validation epoch.

    ``reference``: class maps of whole validation tiles (by cache index) from another classifier trained on the
    same training tiles (QuPath's random forest). Each epoch's map of those tiles is compared with them, every pixel
    (``agreement`` in the history), and with ``early_stop_metric: mean_iou`` the best epoch is the one with the
    highest of the lower of the two: annotations check only the pixels they cover.

    ``device_cache``: keep the raw tiles on the device and build batches there (``DeviceCache``) instead of in a
    DataLoader; None = when the inputs are normalised on the device and the cache fits (``DeviceCache.fits``)."""
    from ..models.factory import set_train_mode
    from .augment import build_augmentation
    from .losses import build_loss

    emit = emit or Emitter()
    cancel = cancel or CancelToken()
    seed_everything(cfg.seed)
    device = distributed.device_for(resolve_device(cfg.device))
    amp = autocast_dtype(device, cfg.precision)
    model = model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    # The compiled module shares its parameters with ``model``; the state dicts are taken from ``model``.
    ddp = distributed.wrap(model, device)  # ``model`` itself outside a DDP world
    net = torch.compile(ddp) if cfg.compile and cuda else ddp
    log_every = cfg.log_every if cuda else 1

    augment = build_augmentation(cfg.augment, cfg.tile_size, seed=cfg.seed)
    raw = inputs_on_device(cache, cfg, device)
    if device_cache is None:
        device_cache = raw and DeviceCache.fits(cache, device)
    resident = DeviceCache(cache, device, augment, cfg.seed) if device_cache else None
    raw = raw or resident is not None
    prepare = DeviceInputs(device, cache if raw else None)
    train_ds = PatchDataset(cache, train_idx, augment, seed=cfg.seed, raw=raw)
    val_ds = PatchDataset(cache, val_idx, raw=raw)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = distributed.train_sampler(train_ds, cfg.seed)  # batch_size is per process (per GPU)
    if sampler is None:
        # A generator of its own: the DataLoader draws its workers' base seed from ``generator`` once per iterator
        # without workers but once per run with persistent ones, which would shift the order between the two.
        order = torch.Generator().manual_seed(cfg.seed)
        sampler = torch.utils.data.RandomSampler(train_ds, generator=order)
    pin = device.type == "cuda"
    batch = min(cfg.batch_size, len(train_ds))
    workers = 0 if resident is not None else resolve_workers(cfg, device)
    train_sampler = EpochSampler(sampler, train_ds)
    drop_last = len(train_ds) > batch and len(train_ds) % batch == 1
    train_loader = DataLoader(
        train_ds, batch_size=batch, sampler=train_sampler, drop_last=drop_last,
        num_workers=workers, pin_memory=pin, generator=generator, worker_init_fn=_worker_init,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context=worker_context(workers),
    )
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, num_workers=min(workers, 2),
                            pin_memory=pin, persistent_workers=min(workers, 2) > 0,
                            multiprocessing_context=worker_context(min(workers, 2)))

    # Reference maps by position in the validation order (the validation loader does not shuffle).
    refs = None
    if reference:
        where = {t: pos for pos, t in enumerate(val_idx)}
        refs = {where[t]: torch.as_tensor(m.astype(np.int64), device=device) for t, m in reference.items()
                if t in where}
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    loss_fn = build_loss(cfg.loss, weights, ignore_index=UNLABELLED)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler, step_on = build_scheduler(cfg.scheduler, optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    maximise = cfg.early_stop_metric == "mean_iou"

    history: list[dict[str, Any]] = []
    best_metric, best_epoch, best_state, since_best = -math.inf if maximise else math.inf, 0, None, 0
    best_cm = best_agree_cm = None
    stopped_early = stopped_by_user = False
    start = time.perf_counter()
    emit("stage", stage="training", message=f"training on {device.type} ({len(train_ds)} tiles, "
         f"{len(val_ds)} for validation)", device=device.type, precision=precision_name(amp))
    cancel.check()  # cancelled before any epoch: nothing to keep
    try:
        batches = None
        for epoch in range(1, cfg.epochs + 1):
            set_train_mode(model, frozen_blocks)
            if resident is not None:
                batches = resident.epoch(train_sampler, batch, drop_last, epoch, train_idx)
            elif batches is None:
                batches = _epoch_batches(train_loader, train_ds, epoch)
            running = torch.zeros((), dtype=torch.float32, device=device)
            window = torch.zeros((), dtype=torch.float32, device=device)
            seen, window_n, n_batches = 0, 0, len(train_loader)
            # A cancel (the first Ctrl-C, QuPath's Cancel) ends the run after this epoch and keeps the best one;
            # a second Ctrl-C raises KeyboardInterrupt here and nothing is written.
            for step, batch_in in enumerate(batches, 1):
                x, y = batch_in if resident is not None else prepare(batch_in)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = net(x)
                loss = loss_fn(logits.float(), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if step_on == "batch":
                    scheduler.step()
                detached = loss.detach()
                running += detached * len(x)
                window += detached
                seen += len(x)
                window_n += 1
                if step % log_every == 0 or step == n_batches:
                    # The one wait for the device: the mean loss of the last ``window_n`` batches.
                    value = float(window) / window_n
                    if not math.isfinite(value):
                        first = step - window_n + 1
                        where = f"batch {step}" if window_n == 1 else f"batches {first}-{step}"
                        raise TrainingError(
                            f"the loss became {value} at epoch {epoch}, {where}; lower learning_rate "
                            f"(now {cfg.learning_rate}) or check the annotations and normalization"
                        )
                    emit("batch", epoch=epoch, batch=step, batches=n_batches, loss=value)
                    window.zero_()
                    window_n = 0
            train_loss = float(running) / max(seen, 1)
            distributed.sync_buffers(model)
            # The workers start on the next epoch's tiles while this one is validated (no gap at its start).
            batches = _epoch_batches(train_loader, train_ds, epoch + 1) if epoch < cfg.epochs and workers else None
            if resident is not None:
                val_loss, cm, agree_cm = evaluate(net, resident.validation(val_idx, cfg.batch_size), loss_fn,
                                                  n_classes, device, amp, lambda b: b, refs)
            else:
                val_loss, cm, agree_cm = evaluate(net, val_loader, loss_fn, n_classes, device, amp, prepare, refs)
            ious = cm.iou_per_class()
            mean_iou = float(cm.mean_iou())
            agreement = float(agree_cm.mean_iou()) if agree_cm is not None else None
            metric = mean_iou if maximise else val_loss
            if maximise and agreement is not None and not math.isnan(agreement):
                metric = min(mean_iou, agreement)
            lr = optimizer.param_groups[0]["lr"]
            if step_on == "epoch":
                scheduler.step()
            elif step_on == "metric":
                scheduler.step(metric)
            improved = (metric > best_metric + 1e-6) if maximise else (metric < best_metric - 1e-6)
            if improved or best_state is None:
                best_metric, best_epoch, since_best = metric, epoch, 0
                # Kept on the device (a copy without a wait); to the host once, at the end.
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_cm, best_agree_cm = cm, agree_cm
            else:
                since_best += 1
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "mean_iou": mean_iou,
                "agreement": agreement,
                "selection_metric": metric,
                "per_class_iou": _nan_to_none(ious),
                "pixel_accuracy": float(cm.pixel_accuracy()),
                "learning_rate": lr,
                "best_epoch": best_epoch,
                "epochs_without_improvement": since_best,
                "seconds": time.perf_counter() - start,
            }
            history.append(row)
            emit("epoch", epochs=cfg.epochs, patience=cfg.early_stop_patience, best_metric=best_metric,
                 metric_name=cfg.early_stop_metric, **row)
            if cfg.early_stop_patience and since_best >= cfg.early_stop_patience:
                stopped_early = True
                emit.log(f"early stopping at epoch {epoch}: no improvement of {cfg.early_stop_metric} for "
                         f"{since_best} epochs; restoring epoch {best_epoch}")
                break
            if cancel.cancelled and epoch < cfg.epochs:
                stopped_by_user = True
                emit.log(f"stopped by the user after epoch {epoch} of {cfg.epochs}; keeping the best epoch so far "
                         f"({best_epoch})", level="warning")
                break
    except KeyboardInterrupt:
        raise Cancelled("training was interrupted; nothing was written") from None

    model.load_state_dict(best_state)  # type: ignore[arg-type]
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    assert best_cm is not None
    best_row = history[best_epoch - 1]
    return FitResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_metric=float(best_metric),
        per_class_iou=best_row["per_class_iou"],
        mean_iou=best_row["mean_iou"],
        pixel_accuracy=best_row["pixel_accuracy"],
        confusion=best_cm.matrix.tolist(),
        agreement_confusion=best_agree_cm.matrix.tolist() if best_agree_cm is not None else None,
        stopped_early=stopped_early,
        stopped_by_user=stopped_by_user,
        device=device.type,
        precision=precision_name(amp),
        seconds=time.perf_counter() - start,
    )
