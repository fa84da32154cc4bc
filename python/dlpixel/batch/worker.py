"""One task, in a worker process (local or Ray): lock it, compute its outputs into a staging folder, move them into
place, then write its state. Workers read pixels with the file readers and never start a JVM.

Order of the steps, and what a kill at any point leaves behind:
1. take the task's lock (``state.TaskLock``); a task that another live process holds is reported ``locked``;
2. re-read the state: a task that another run finished meanwhile is reported ``skipped``;
3. compute every output into ``<run>/staging/<task>/`` (a kill leaves only this folder, removed by the next try);
4. move each output into place with one ``os.replace`` (readers see the old file or the new one, never half of one);
5. write ``tasks/<task>.json`` (``done`` with the task's key), then release the lock.
A kill between 4 and 5 leaves whole, current outputs and no state: the next run computes the task again and
replaces them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .state import TaskLock, read_json, write_json

KILL_HOOK = "DLPIXEL_BATCH_TEST_KILL"
"""Tests: ``before-state:<image>`` kills the driver and this worker after that image's outputs are in place and
before its state is written."""


def init_local_worker(devices: Any, threads: int) -> None:
    """Initialiser of a local worker process: die with the driver, take one GPU (when there are GPUs), and use
    ``threads`` CPU threads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops handing out tasks
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["DLPIXEL_BATCH_THREADS"] = str(threads)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if type(err).__module__.startswith("dlpixel") else f"{type(err).__name__}: {text}"


class _TaskImage:
    """A QuPath project's image as a worker sees it: its file, the annotations the driver read, and results kept in
    a file for the driver to merge into data.qpdata."""

    def __init__(self, name: str, path: Path, features: list[dict] | None, out: Path) -> None:
        self.name = name
        self.path = path
        self._features = features or []
        self._out = out

    def open(self) -> Any:
        from ..data.images import FileImageSource

        return FileImageSource(self.path)

    def annotations(self) -> list[Any]:
        import json
        import tempfile

        from ..data.geojson import read_geojson

        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "a.geojson"
            f.write_text(json.dumps({"type": "FeatureCollection", "features": self._features}))
            return read_geojson(f)

    def write_results(self, classifier: str, *, objects: Any = None, object_type: str = "detection",
                      measurements: Any = None) -> list[Path]:
        from ..data.geojson import write_geojson

        written = []
        if objects is not None:
            path = self._out.with_name(self._out.name + ".objects.geojson")
            written.append(write_geojson(path, list(objects), object_type))
        if measurements is not None:
            written.append(write_json(self._out.with_name(self._out.name + ".measurements.json"),
                                      {k: dict(v) for k, v in measurements.items()}))
        return written


class _StagingProject:
    def __init__(self, root: Path, image: Any) -> None:
        self.root = root
        self._image = image

    def images(self) -> list[Any]:
        return [self._image]

    def class_colors(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def _link_classifier(src: Path, dst: Path) -> None:
    """The classifier inside the staging project: hard links (same file system), copies otherwise."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            try:
                os.link(p, dst / p.name)
            except OSError:
                shutil.copy2(p, dst / p.name)


def _peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far (MB)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one task; returns its report row and never raises (a failure is a row with its one-line error)."""
    t0 = time.perf_counter()
    task = payload["task"]
    run_dir = Path(payload["run_dir"])
    tasks_dir = run_dir / "tasks"
    row: dict[str, Any] = {"id": task["id"], "image": task["image"], "status": "failed", "seconds": 0.0,
                           "tiles": 0, "tiles_per_s": None, "peak_memory_mb": None, "gpu_peak_memory_mb": None,
                           "error": None, "outputs": [], "worker": f"{socket.gethostname()}:{os.getpid()}"}
    lock = TaskLock(tasks_dir / f"{task['id']}.lock", payload.get("run_id", ""))
    try:
        if not lock.acquire():
            from .state import lock_holder

            row.update(status="locked", error=f"held by {lock_holder(lock.path)}")
            return row
    except OSError as err:
        row["error"] = f"cannot lock the task in {tasks_dir}: {err}"
        return row
    state_path = tasks_dir / f"{task['id']}.json"
    staging = run_dir / "staging" / task["id"]
    try:
        previous = read_json(state_path)
        if previous and previous.get("status") == "done" and previous.get("key") == task["key"]:
            row.update(status="skipped", error=None)
            return row
        shutil.rmtree(staging, ignore_errors=True)
        tiles = _compute(payload, task, staging)
        outputs = _move_into_place(payload, task, staging)
        hook = os.environ.get(KILL_HOOK, "")
        if hook == f"before-state:{task['image']}":
            os.kill(int(payload["driver_pid"]), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        seconds = time.perf_counter() - t0
        row.update(status="done", seconds=round(seconds, 3), tiles=tiles,
                   tiles_per_s=round(tiles / seconds, 2) if seconds > 0 else None, outputs=outputs)
        row.update(_memory())
        write_json(state_path, {"status": "done", "key": task["key"], "image": task["image"], "finished":
                                _now(), "outputs": outputs, "merged": None})
    except KeyboardInterrupt:  # stopped at once (a second Ctrl-C): not the slide's failure, no state
        raise
    except BaseException as err:  # noqa: BLE001 - every failure becomes the task's one-line error
        row.update(status="failed", error=one_line(err), seconds=round(time.perf_counter() - t0, 3))
        row.update(_memory())
        try:
            write_json(state_path, {"status": "failed", "key": task["key"], "image": task["image"],
                                    "finished": _now(), "error": row["error"]})
        except OSError:
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()
    return row


def _now() -> str:
    from .state import now_iso

    return now_iso()


def _memory() -> dict[str, Any]:
    peak = _peak_memory_mb()
    out: dict[str, Any] = {"peak_memory_mb": round(peak, 1) if peak is not None else None}
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _compute(payload: dict[str, Any], task: dict[str, Any], staging: Path) -> int:
    """The task's outputs into ``staging`` through ``apply_classifier`` (the results ``dlpixel apply`` gives);
    returns the number of tiles computed."""
    from ..classifiers import store
    from ..config import InferenceConfig
    from ..inference.run import apply_classifier

    threads = int(payload.get("threads") or os.environ.get("DLPIXEL_BATCH_THREADS") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    classifier = payload["classifier"]
    _link_classifier(Path(payload["classifier_dir"]), store.classifier_dir(staging, classifier))
    path = Path(task["file"])
    if task["kind"] == "folder":
        from ..data.folder import FolderImage

        image: Any = FolderImage(path, staging)
    else:
        image = _TaskImage(task["image"], path, task.get("annotations"), staging / "merge" / task["id"])
        (staging / "merge").mkdir(parents=True)
    tiles = {"done": 0}

    def listen(event: dict[str, Any]) -> None:
        if event["event"] == "tiles":
            tiles["done"] = int(event["done"])

    cfg = InferenceConfig(**payload["settings"])
    apply_classifier(_StagingProject(staging, image), classifier, cfg, [image.name], listeners=[listen])
    return tiles["done"]


def _move_into_place(payload: dict[str, Any], task: dict[str, Any], staging: Path) -> list[str]:
    """Move the staged outputs into place, each with one ``os.replace``: ``results/…`` into the project,
    ``merge/…`` (a QuPath image's objects and measurements) into the run folder. Returns them relative to the
    project root."""
    root = Path(payload["project_root"])
    run_dir = Path(payload["run_dir"])
    moved = []
    for sub, dest_root in (("results", root / "results"), ("merge", run_dir / "merge")):
        base = staging / sub
        if not base.is_dir():
            continue
        for p in sorted(q for q in base.rglob("*") if q.is_file() and not q.name.startswith(".")):
            dest = dest_root / p.relative_to(base)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
            moved.append(os.path.relpath(dest, root))
    return moved
