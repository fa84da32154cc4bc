"""Training on several GPUs with torch DDP: one process per GPU, launched by ``torchrun`` or ``dlpixel train
--gpus N``.

Every process reads the same images and cuts the same tiles (the split is seeded), trains on its own shard of each
epoch's shuffled training tiles (``DistributedSampler``), and DDP averages the gradients. ``batch_size`` is per GPU:
N GPUs take N × batch_size tiles per optimiser step. Validation runs on every process over all validation tiles
with rank 0's batch-norm statistics, so every process takes the same early-stopping decision; rank 0 alone reports
progress, saves the classifier and writes its metadata. Outside a ``torchrun`` world (``WORLD_SIZE`` unset or 1)
every function here leaves training exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import ConfigError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """True in a single process and in rank 0 of a DDP world: the one that reports, saves and writes."""
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """The process's device: ``cuda:LOCAL_RANK`` in a DDP world on GPUs (and the process group started: NCCL on GPUs,
    gloo on CPUs); ``device`` unchanged otherwise."""
    if not is_distributed():
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        import atexit

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    return device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel in a DDP world, else ``model``."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def train_sampler(dataset: Any, seed: int) -> Any:
    """This process's shard of each epoch's shuffled tiles (call ``set_epoch``), or None outside a DDP world."""
    if not is_distributed():
        return None
    from torch.utils.data import DistributedSampler

    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)


def set_epoch(loader: Any, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) on every process, so validation gives the same answer on all."""
    if not is_distributed():
        return
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


@contextlib.contextmanager
def main_only(ctx: Any) -> Iterator[None]:
    """``ctx`` (a lock, say) entered by rank 0 only."""
    if is_main():
        with ctx:
            yield
    else:
        yield


def without_gpus_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--gpus N`` / ``--gpus=N`` (what every process of the world runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            out.append(a)
    return out


def launch(gpus: int, argv: Sequence[str]) -> int:
    """Run ``dlpixel <argv>`` in ``gpus`` processes with torchrun (one node); returns torchrun's exit status."""
    if gpus < 1:
        raise ConfigError(f"--gpus must be 1 or more (got {gpus})")
    if torch.cuda.is_available() and gpus > torch.cuda.device_count():
        raise ConfigError(f"--gpus {gpus} asks for more GPUs than the {torch.cuda.device_count()} here")
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc_per_node={gpus}", "-m", "dlpixel", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # noqa: BLE001 - torchrun reports a failed worker as ChildFailedError
        print(f"error: training on {gpus} processes failed: {' '.join(str(e).split())[:300]}", file=sys.stderr)
        return 1
    return 0
