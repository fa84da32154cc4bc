"""The driver of a batch: plan, skip what is done, run the rest on an engine, merge QuPath results, report.

The run folder (default ``<project>/batch/<classifier>.<output>/``) holds

- ``plan.json``: the manifest of the latest run (classifier and settings hashes, one entry per task);
- ``tasks/<task>.json``: each task's state (``done`` / ``failed``, its key, outputs, when merged into QuPath);
- ``tasks/<task>.lock``: while a process runs the task (see ``state``);
- ``merge/``: a QuPath image's objects and measurements, waiting for (and kept after) the merge;
- ``run.json`` and ``summary.md``: the report of the latest run that had work to do.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..config import InferenceConfig
from ..data.base import Project, select_images
from ..errors import ConfigError, DataError
from ..runtime.events import CancelToken, Emitter, Listener
from .plan import Plan, Task, make_plan
from .state import TaskLock, lock_holder, now_iso, read_json, write_json
from .worker import KILL_HOOK, one_line

ENGINES = ("local", "ray")


def run_batch(
    project: Project,
    classifier: str,
    cfg: InferenceConfig,
    image_names: Sequence[str] | None = None,
    *,
    engine: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    run_dir: Path | None = None,
    full_hash: bool = False,
    listeners: Iterable[Listener] = (),
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Apply ``classifier`` to the project's images, one task per image, resumably; returns the run's report
    (the content of ``run.json``; ``{"nothing_to_do": True, ...}`` when every task was done and merged).
    ``cancel`` (the first Ctrl-C) stops handing out tasks; the report lists those not run."""
    from .engines import check_ray, gpu_count, run_local, run_ray

    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be 1 or more (got {workers})")
    if engine == "ray":
        check_ray()
    emit = Emitter(listeners)
    plan = make_plan(project, classifier, cfg, list(image_names or []) or None, run_dir, full_hash)
    tasks_dir = plan.run_dir / "tasks"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    states = {t.id: read_json(tasks_dir / f"{t.id}.json") or {} for t in plan.tasks}
    current = {t.id for t in plan.tasks if states[t.id].get("status") == "done" and states[t.id].get("key") == t.key}
    todo = [t for t in plan.tasks if t.id not in current]
    unmerged = [t for t in plan.tasks if t.kind == "qupath" and t.id in current
                and states[t.id].get("merged") != t.key]
    if not todo and not unmerged:
        message = (f"nothing to do: all {len(plan.tasks)} task(s) of '{classifier}' ({cfg.output}) are done with "
                   f"the current images, classifier and settings; report: {plan.run_dir / 'run.json'}")
        emit("done", message=message, nothing_to_do=True)
        return {"nothing_to_do": True, "message": message, "run_dir": str(plan.run_dir), "tasks": len(plan.tasks)}

    write_json(plan.run_dir / "plan.json", plan.manifest())
    gpus = gpu_count(cfg.device)
    n_workers = workers or max(1, gpus)
    run_id = uuid.uuid4().hex[:12]
    started, t0 = now_iso(), time.perf_counter()
    emit("stage", stage="batch", message=f"applying '{classifier}' to {len(todo)} of {len(plan.tasks)} image(s) "
         f"on {engine} with {n_workers} worker(s){f' and {gpus} GPU(s)' if gpus else ''}; "
         f"{len(plan.tasks) - len(todo)} already done")
    rows: dict[str, dict[str, Any]] = {}
    for t in plan.tasks:
        if t.id in current:
            rows[t.id] = {"id": t.id, "image": t.image, "status": "skipped", "error": None,
                          "outputs": states[t.id].get("outputs", []), "finished": states[t.id].get("finished")}
    counts = {"done": 0, "failed": 0}
    kill_after = _driver_kill_after()

    def on_result(row: dict[str, Any]) -> None:
        rows[row["id"]] = row
        key = "failed" if row["status"] == "failed" else "done"
        counts[key] += 1
        emit("slides", done=counts["done"] + counts["failed"], total=len(todo), failed=counts["failed"],
             image=row["image"], status=row["status"], error=row.get("error"))
        if row["status"] == "failed":
            emit.log(f"{row['image']}: failed: {row['error']}", level="warning")
        if kill_after is not None and counts["done"] + counts["failed"] >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    payloads = [_payload(plan, t, run_id) for t in todo]
    if todo:
        emit("slides", done=0, total=len(todo), failed=0, image=None, status=None, error=None)
        if engine == "local":
            run_local(payloads, on_result, n_workers, gpus, cancel)
        else:
            run_ray(payloads, on_result, n_workers, gpus, ray_address, cfg.device, cancel)
    merged = merge_qupath_results(project, plan, rows, emit) if any(t.kind == "qupath" for t in plan.tasks) else 0
    report = _report(plan, cfg, engine, n_workers, gpus, started, time.perf_counter() - t0, rows, merged)
    write_json(plan.run_dir / "run.json", report)
    from ..data._io import write_text_atomic

    write_text_atomic(plan.run_dir / "summary.md", summary_markdown(report))
    totals = report["totals"]
    emit("done", message=f"'{classifier}': {totals['done']} done, {totals['skipped']} skipped, "
         f"{totals['failed']} failed, {totals['locked']} held by another run"
         f"{f', {merged} merged into QuPath' if merged else ''}; report: {plan.run_dir / 'summary.md'}",
         report=str(plan.run_dir / "run.json"))
    return report


def _driver_kill_after() -> int | None:
    hook = os.environ.get(KILL_HOOK, "")
    return int(hook.split(":", 1)[1]) if hook.startswith("driver-after:") else None


def _payload(plan: Plan, task: Task, run_id: str) -> dict[str, Any]:
    return {"task": {**task.manifest(), "annotations": task.annotations}, "run_dir": str(plan.run_dir),
            "project_root": str(plan.project_root), "classifier": plan.classifier,
            "classifier_dir": str(plan.classifier_dir), "settings": plan.settings, "run_id": run_id,
            "driver_pid": os.getpid()}


def merge_qupath_results(project: Project, plan: Plan, rows: dict[str, dict[str, Any]], emit: Emitter) -> int:
    """The one writer into QuPath: each done task's objects and measurements go into its image's data.qpdata
    (``QuPathImage.write_results``: a backup first, and this classifier's earlier results replaced, so a rerun never
    duplicates). A task is merged once per key; a merge cut short is simply redone. Returns how many were merged."""
    tasks_dir = plan.run_dir / "tasks"
    n = 0
    for task in plan.tasks:
        state_path = tasks_dir / f"{task.id}.json"
        state = read_json(state_path) or {}
        if task.kind != "qupath" or state.get("status") != "done" or state.get("key") != task.key \
                or state.get("merged") == task.key:
            continue
        lock = TaskLock(tasks_dir / f"{task.id}.lock")
        if not lock.acquire():
            rows.setdefault(task.id, {"id": task.id, "image": task.image})
            rows[task.id].update(merge_error=f"not merged: the task is held by {lock_holder(lock.path)}")
            continue
        try:
            _merge_one(project, plan, task)
            write_json(state_path, {**state, "merged": task.key, "merged_at": now_iso()})
        except Exception as err:  # noqa: BLE001 - reported per slide; the next run merges again
            msg = one_line(err)
            rows.setdefault(task.id, {"id": task.id, "image": task.image}).update(merge_error=msg)
            emit.log(f"{task.image}: results not merged into QuPath: {msg}", level="warning")
            continue
        finally:
            lock.release()
        rows.setdefault(task.id, {"id": task.id, "image": task.image})["merged"] = True
        n += 1
    return n


def _merge_one(project: Project, plan: Plan, task: Task) -> None:
    from ..data.geojson import read_geojson

    base = plan.run_dir / "merge" / task.id
    objects_file = base.with_name(base.name + ".objects.geojson")
    measurements_file = base.with_name(base.name + ".measurements.json")
    output = plan.settings["output"]
    objects = measurements = None
    if output == "objects":
        objects = read_geojson(objects_file, object_types=("annotation", "detection"))
    elif output == "measurements":
        measurements = json.loads(measurements_file.read_text(encoding="utf-8"))
    else:
        return  # maps are files in <project>/results, nothing to merge
    image = select_images(project, [task.image])[0]
    if not hasattr(image, "write_results"):
        raise DataError(f"image {task.image!r} cannot take results")
    image.write_results(plan.classifier, objects=objects, object_type=plan.settings["object_type"],  # type: ignore
                        measurements=measurements)


def _report(plan: Plan, cfg: InferenceConfig, engine: str, workers: int, gpus: int, started: str, seconds: float,
            rows: dict[str, dict[str, Any]], merged: int) -> dict[str, Any]:
    ordered = [rows.get(t.id, {"id": t.id, "image": t.image, "status": "not run", "error": None})
               for t in plan.tasks]
    totals = {s: sum(1 for r in ordered if r.get("status") == s) for s in ("done", "skipped", "failed", "locked")}
    tiles = sum(r.get("tiles") or 0 for r in ordered if r.get("status") == "done")
    return {"classifier": plan.classifier, "output": cfg.output, "project": str(plan.project_root),
            "run_dir": str(plan.run_dir), "engine": engine, "workers": workers, "gpus": gpus, "started": started,
            "finished": now_iso(), "seconds": round(seconds, 2), "tiles": tiles,
            "tiles_per_s": round(tiles / seconds, 2) if seconds > 0 else None, "totals": totals,
            "merged_into_qupath": merged, "slides": ordered}


def summary_markdown(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [f"# Batch: {report['classifier']} ({report['output']})", "",
             f"{report['engine']} engine, {report['workers']} worker(s), {report['gpus']} GPU(s); "
             f"{report['seconds']} s, {report['tiles']} tiles ({report['tiles_per_s']} tiles/s overall); "
             f"{t['done']} done, {t['skipped']} skipped, {t['failed']} failed, {t['locked']} locked"
             + (f"; {report['merged_into_qupath']} merged into QuPath" if report["merged_into_qupath"] else ""),
             "", "| slide | status | s | tiles/s | peak MB | error |", "|---|---|---|---|---|---|"]
    for r in report["slides"]:
        err = (r.get("error") or r.get("merge_error") or "").replace("|", "\\|")
        lines.append(f"| {r['image']} | {r.get('status')} | {r.get('seconds', '')} | {r.get('tiles_per_s') or ''} | "
                     f"{r.get('peak_memory_mb') or ''} | {err} |")
    return "\n".join(lines) + "\n"
