"""``dlpixel batch``: per-image tasks on local workers and on a local Ray give exactly ``dlpixel apply``'s results;
a killed run resumes without duplicates or half-written files; a finished plan is not redone; failures are retried;
locks keep two runs apart and stale locks are taken over."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
import torch
from dlpixel.batch.state import TaskLock, is_stale
from dlpixel.classifiers.onnx_import import import_onnx
from dlpixel.cli.main import main
from dlpixel.config import InferenceConfig, NormalizationConfig
from dlpixel.inference.run import apply_classifier
from dlpixel.projects import open_project
from shapely.geometry import mapping

SIZE = 96
NAMES = [f"slide{i}.tif" for i in range(4)]
FAST = ["--tile-size", "64", "--overlap", "16", "--device", "cpu", "--backend", "onnx", "--quiet"]


class Threshold(torch.nn.Module):
    """Class 1 where the first input channel exceeds 0.5 (logits ±50·(x − 0.5)): the answer is known per pixel."""

    def forward(self, x):
        d = 50.0 * (x[:, :1] - 0.5)
        return torch.cat([-d, d], dim=1)


def _disk(i: int) -> shapely.Geometry:
    return shapely.Point(30.3 + 9 * i, 50.2).buffer(12.7 + 2 * i, quad_segs=16)


def _positive(i: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return shapely.contains_xy(_disk(i), xx + 0.5, yy + 0.5)


def _region(i: int) -> shapely.Geometry:
    return shapely.box(5.5 + i, 8.25, 90.5, 88.75 - i)


def _write_image(folder: Path, i: int) -> None:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[_positive(i), 0] = 255
    img[..., 1] = 60
    tifffile.imwrite(folder / NAMES[i], img, photometric="rgb")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "threshold.onnx"
    torch.onnx.export(Threshold(), torch.zeros(1, 3, 64, 64), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    return path


@pytest.fixture
def project(tmp_path: Path, onnx_file: Path) -> Path:
    """Four small images, each with one annotation to measure in and a disk of known area inside it."""
    folder = tmp_path / "project"
    folder.mkdir()
    for i in range(4):
        _write_image(folder, i)
        feats = [{"type": "Feature", "id": f"region{i}", "geometry": mapping(_region(i)),
                  "properties": {"objectType": "annotation"}}]
        (folder / f"{NAMES[i]}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    import_onnx(folder, "threshold", onnx_file, ["Other", "Positive"], ["Red", "Green", "Blue"], 64,
                normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
    return folder


def _areas(folder: Path) -> dict[str, float]:
    out = {}
    for name in NAMES:
        stem = name[: -len(".tif")]
        with open(folder / "results" / "threshold" / f"{stem}.measurements.csv") as f:
            (row,) = list(csv.DictReader(f))
        out[name] = float(row["threshold: Positive area px^2"])
    return out


def _truth() -> dict[str, float]:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return {NAMES[i]: float((_positive(i) & shapely.contains_xy(_region(i), xx + 0.5, yy + 0.5)).sum())
            for i in range(4)}


def _results(folder: Path) -> dict[str, bytes]:
    base = folder / "results" / "threshold"
    return {p.name: p.read_bytes() for p in sorted(base.iterdir())}


def _batch(folder: Path, *extra: str) -> int:
    return main(["batch", "--project", str(folder), "--classifier", "threshold", *FAST, *extra])


def _run_dir(folder: Path, output: str = "measurements") -> Path:
    return folder / "batch" / f"threshold.{output}"


def test_local_and_ray_give_exactly_the_results_of_apply(project: Path, tmp_path: Path):
    pytest.importorskip("ray")
    reference = tmp_path / "reference"
    shutil.copytree(project, reference)
    apply_classifier(open_project(reference), "threshold",
                     InferenceConfig(tile_size=64, overlap=16, device="cpu", backend="onnx"))
    expected = _results(reference)
    assert _areas(reference) == _truth()

    assert _batch(project, "--workers", "2") == 0
    assert _results(project) == expected
    report = json.loads((_run_dir(project) / "run.json").read_text())
    assert report["totals"] == {"done": 4, "skipped": 0, "failed": 0, "locked": 0}
    assert sorted(r["image"] for r in report["slides"]) == NAMES
    assert all(r["tiles"] > 0 and r["peak_memory_mb"] > 0 for r in report["slides"])
    assert "| slide0.tif | done |" in (_run_dir(project) / "summary.md").read_text()

    shutil.rmtree(project / "results")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    assert _batch(project, "--engine", "ray", "--workers", "2", "--run-dir", str(tmp_path / "ray-run")) == 0
    assert _results(project) == expected
    ray_report = json.loads((tmp_path / "ray-run" / "run.json").read_text())
    assert ray_report["engine"] == "ray" and ray_report["totals"]["done"] == 4
    assert len({r["worker"] for r in ray_report["slides"]}) >= 1


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files, staging folders and locks: what a half-finished write or task leaves."""
    found = [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".lock"]
    staging = _run_dir(folder) / "staging"
    return found + ([p for p in staging.iterdir()] if staging.is_dir() else [])


def test_killed_run_resumes_without_duplicates_or_half_written_files(project: Path, capsys):
    env = {**os.environ, "DLPIXEL_BATCH_TEST_KILL": f"before-state:{NAMES[1]}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dlpixel", "batch", "--project", str(project), "--classifier", "threshold",
           "--workers", "1", *FAST]
    killed = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    states = {p.name: json.loads(p.read_text()) for p in (_run_dir(project) / "tasks").glob("*.json")}
    # One worker takes the images in order: the first is done, the second has its outputs in place (whole) but no
    # state, and its lock names a process that is gone.
    assert [s["image"] for s in states.values()] == [NAMES[0]]
    assert not [p for p in project.rglob("*.tmp")]
    (lock,) = (_run_dir(project) / "tasks").glob("*.lock")
    assert is_stale(lock, json.loads(lock.read_text()))
    whole = _results(project)
    assert set(whole) == {f"slide{i}.{kind}" for i in (0, 1) for kind in ("annotations.geojson", "measurements.csv")}

    assert _batch(project, "--workers", "2") == 0
    report = json.loads((_run_dir(project) / "run.json").read_text())
    status = {r["image"]: r["status"] for r in report["slides"]}
    assert status == {NAMES[0]: "skipped", NAMES[1]: "done", NAMES[2]: "done", NAMES[3]: "done"}
    assert _areas(project) == _truth()
    assert _leftovers(project) == []
    for name in NAMES:  # one annotation per image, measured once
        data = json.loads((project / "results" / "threshold" / f"{name[:-4]}.annotations.geojson").read_text())
        assert len(data["features"]) == 1

    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file()}
    assert _batch(project) == 0
    assert "nothing to do: all 4 task(s)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file()} == before


def test_changed_inputs_rerun_and_failures_are_retried(project: Path, capsys):
    (project / NAMES[2]).write_bytes(b"not a tiff")
    assert _batch(project, "--workers", "1") == 1
    report = json.loads((_run_dir(project) / "run.json").read_text())
    failed = [r for r in report["slides"] if r["status"] == "failed"]
    assert [r["image"] for r in failed] == [NAMES[2]] and "\n" not in failed[0]["error"]
    assert f"| {NAMES[2]} | failed |" in (_run_dir(project) / "summary.md").read_text()

    _write_image(project, 2)
    assert _batch(project, "--workers", "1") == 0
    report = json.loads((_run_dir(project) / "run.json").read_text())
    assert {r["image"]: r["status"] for r in report["slides"]} == {
        NAMES[0]: "skipped", NAMES[1]: "skipped", NAMES[2]: "done", NAMES[3]: "skipped"}
    assert _areas(project) == _truth()

    # Other settings that change results make a new key for every task.
    assert _batch(project, "--workers", "1", "--overlap", "32") == 0
    report = json.loads((_run_dir(project) / "run.json").read_text())
    assert report["totals"]["done"] == 4
    # A setting that changes only speed does not.
    capsys.readouterr()
    assert _batch(project, "--overlap", "32", "--batch-size", "3") == 0
    assert "nothing to do" in capsys.readouterr().out


def test_lock_of_a_live_process_is_kept_and_a_dead_ones_taken_over(tmp_path: Path):
    path = tmp_path / "t.lock"
    first = TaskLock(path)
    assert first.acquire()
    second = TaskLock(path)
    assert not second.acquire()  # this very process holds it
    first.release()
    assert not path.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "process_start": "1",
                                "started": "then"}))
    assert is_stale(path, json.loads(path.read_text()))
    taker = TaskLock(path)
    assert taker.acquire() and json.loads(path.read_text())["pid"] == os.getpid()
    taker.release()

    # Another host's lock is stale only when its heartbeat stops.
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    assert not is_stale(path, json.loads(path.read_text()))
    os.utime(path, (0, 0))
    assert is_stale(path, json.loads(path.read_text()))


def test_a_task_held_by_a_live_run_is_left_to_it(project: Path, capsys):
    from dlpixel.batch.plan import task_id

    tasks = _run_dir(project) / "tasks"
    tasks.mkdir(parents=True)
    other_run = TaskLock(tasks / f"{task_id(NAMES[3])}.lock")  # a live process (this one) is computing it
    assert other_run.acquire()
    try:
        assert _batch(project, "--workers", "1", "--events", "jsonl") == 1
    finally:
        other_run.release()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    slides = [(e["done"], e["total"]) for e in events if e["event"] == "slides"]
    assert slides == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]  # the bar over slides
    report = json.loads((_run_dir(project) / "run.json").read_text())
    held = [r for r in report["slides"] if r["status"] == "locked"]
    assert [r["image"] for r in held] == [NAMES[3]] and f"pid {os.getpid()}" in held[0]["error"]
    assert not (project / "results" / "threshold" / "slide3.measurements.csv").exists()
    assert _batch(project, "--workers", "1") == 0
    report = json.loads((_run_dir(project) / "run.json").read_text())
    assert {r["image"]: r["status"] for r in report["slides"]}[NAMES[3]] == "done"
    assert report["totals"] == {"done": 1, "skipped": 3, "failed": 0, "locked": 0}
    assert _areas(project) == _truth()


def test_bad_requests_are_one_line_errors_before_any_work(project: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert _batch(project, "--engine", "ray") == 2
    assert _batch(project, "--workers", "0") == 2
    assert _batch(project, "--scope", "selected") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "pip install 'dlpixel[ray]'" in errors[0] and "--workers" in errors[1]
    assert "selected" in errors[2]
    assert not (project / "results").exists() and not (_run_dir(project) / "tasks").exists()
