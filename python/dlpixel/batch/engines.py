"""Where tasks run: ``local`` (worker processes on this machine) or ``ray`` (Ray tasks on a local Ray or a cluster).

Both run the same ``worker.run_task`` and hand each task's report row to ``on_result`` as it finishes. Neither
retries a task by itself: a failed task is retried by the next run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from ..runtime.events import CancelToken
from .worker import init_local_worker, run_task

OnResult = Callable[[dict[str, Any]], None]


def gpu_count(device: str) -> int:
    """GPUs that workers should use: those CUDA sees, unless the device is set to something else."""
    if device not in ("auto", "cuda"):
        return 0
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and n == 0:
        raise ConfigError("device 'cuda' was asked for, but CUDA sees no GPU here; use --device cpu")
    return n


def check_ray() -> Any:
    """The ``ray`` module; a one-line error when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'dlpixel[ray]'") from None
    return ray


def _failed(payload: dict[str, Any], error: str) -> dict[str, Any]:
    task = payload["task"]
    return {"id": task["id"], "image": task["image"], "status": "failed", "seconds": 0.0, "tiles": 0,
            "tiles_per_s": None, "peak_memory_mb": None, "gpu_peak_memory_mb": None, "error": error,
            "outputs": [], "worker": None}


def run_local(payloads: Sequence[dict[str, Any]], on_result: OnResult, workers: int, gpus: int,
              cancel: CancelToken | None = None) -> None:
    """``workers`` processes (spawned, so CUDA and threads start clean); with GPUs, each process owns one
    (``CUDA_VISIBLE_DEVICES``), and ``workers`` defaults to their count. CPU threads are shared out evenly. One
    worker runs the tasks in this process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    if gpus and workers > gpus:
        raise ConfigError(f"--workers {workers} is more than the {gpus} GPU(s) here: one worker per GPU")
    if workers == 1:  # one worker: the tasks run in this process, without starting another Python
        for p in payloads:
            if cancel is not None and cancel.cancelled:
                break
            on_result(run_task(p))
        return
    ctx = mp.get_context("spawn")
    devices = None
    if gpus:
        devices = ctx.Queue()
        for i in range(workers):
            devices.put(i)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_local_worker,
                             initargs=(devices, threads)) as pool:
        futures = {pool.submit(run_task, p): p for p in payloads}
        for future in as_completed(futures):
            if cancel is not None and cancel.cancelled:
                for f in futures:
                    f.cancel()  # tasks not started stay "not run"; those under way finish
            if future.cancelled():
                continue
            try:
                row = future.result()
            except BrokenProcessPool:
                row = _failed(futures[future], "the worker process died (out of memory or killed)")
            except Exception as err:  # noqa: BLE001 - a task's failure is its report row
                row = _failed(futures[future], " ".join(f"{type(err).__name__}: {err}".split()))
            on_result(row)


def run_ray(payloads: Sequence[dict[str, Any]], on_result: OnResult, workers: int, gpus: int,
            address: str | None, device: str = "auto", cancel: CancelToken | None = None) -> None:
    """One Ray task per image. Without ``address`` a local Ray with ``workers`` CPUs (and the GPUs here) is started
    and stopped; with one, the run joins that cluster and uses what it offers. A task asks for one GPU when the
    run uses GPUs (on a cluster: when ``device`` allows it and the cluster has GPUs), else one CPU."""
    ray = check_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=workers, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False,
                     object_store_memory=int(os.environ.get("DLPIXEL_RAY_OBJECT_STORE_MB", "100")) * 2**20)
    if address and device in ("auto", "cuda"):  # the cluster's GPUs, whether or not the driver has one
        gpus = int(ray.cluster_resources().get("GPU", 0))
    threads = 1 if not address and not gpus else 0
    remote = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=0)(_ray_task)
    try:
        refs = {remote.remote({**p, "threads": p.get("threads") or threads}): p for p in payloads}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            if cancel is not None and cancel.cancelled and pending:
                for ref in pending:
                    ray.cancel(ref)  # queued tasks never start; running ones are stopped and reported failed
            for ref in done:
                try:
                    row = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - a worker lost by Ray is that task's failure
                    row = _failed(refs[ref], " ".join(f"{type(err).__name__}: {err}".split())[:300])
                on_result(row)
    finally:
        if started:
            ray.shutdown()


def _ray_task(payload: dict[str, Any]) -> dict[str, Any]:
    if not payload.get("threads"):
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        payload = {**payload, "threads": int(cpus) if cpus else 0}
    return run_task(payload)
