"""Full and read-only disks (a small tmpfs mounted as root, skipped where mounting is not permitted): training,
apply, import and export end in one line, leave nothing half-written, and the next run works once there is room."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dlpixel.classifiers import store

sys.path.insert(0, str(Path(__file__).parent))
from reliability_kit import (  # noqa: E402
    QUICK_TRAIN,
    export_threshold,
    fill_disk,
    hidden_leftovers,
    labelled_project,
    make_project,
    one_line_error,
    run_cli,
)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return export_threshold(tmp_path_factory.mktemp("onnx") / "thr.onnx")


def _mount(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own."""
    folder = tmp_path / "disk"
    _mount(folder, "size=2m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def _visible_results(project: Path) -> list[str]:
    results = project / "results"
    return sorted(str(p) for p in results.rglob("*") if p.is_file()) if results.exists() else []


def test_training_on_a_full_disk_is_one_line_and_leaves_no_partial_folder(small_disk, capsys, onnx_file):
    project = labelled_project(small_disk / "p")  # the image and its labels: a few kB; the model: tens of MB
    code, _, err = run_cli(capsys, "train", "--project", str(project), "--name", "big", "--quiet", *QUICK_TRAIN)
    line = one_line_error(code, err, "cannot save classifier 'big'", "free disk space")
    assert "No space left on device" in line or "model.pt" in line
    assert store.list_classifiers(project) == [] and hidden_leftovers(project) == []
    # All the space is free again: a small classifier fits.
    code, _, err = run_cli(capsys, "models", "import-onnx", "small", "--project", str(project), "--file",
                           str(onnx_file), "--classes", "A,B", "--channels", "Red,Green,Blue", "--tile-size", "32")
    assert code == 0, err


@pytest.mark.parametrize("output", ["map", "probabilities", "measurements", "objects"])
def test_apply_on_a_full_disk_is_one_line_and_the_next_run_works(small_disk, capsys, onnx_file, output):
    project = make_project(small_disk / "p", onnx_file)
    filler = fill_disk(small_disk)
    argv = ["apply", "--project", str(project), "--classifier", "thr", "--output", output, "--scope",
            "image" if output in ("map", "probabilities", "objects") else "annotations", "--quiet"]
    code, _, err = run_cli(capsys, *argv)
    line = one_line_error(code, err)
    assert "No space left on device" in line and ("free disk space" in line or "writable" in line), line
    assert _visible_results(project) == [] and hidden_leftovers(project) == []
    filler.unlink()
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert _visible_results(project)


def test_export_to_a_full_disk_is_one_line_and_leaves_no_partial_zip(small_disk, tmp_path, capsys, onnx_file):
    project = make_project(tmp_path / "p", onnx_file)
    fill_disk(small_disk)
    code, _, err = run_cli(capsys, "models", "export", "thr", "--project", str(project), "--file",
                           str(small_disk / "thr.zip"))
    one_line_error(code, err, "No space left on device", str(small_disk / "thr.zip"))
    assert sorted(os.listdir(small_disk)) == ["filler.bin"]


def test_a_read_only_project_is_one_line_for_train_import_and_export(small_disk, tmp_path, capsys, onnx_file):
    project = labelled_project(small_disk / "p")
    zip_path = tmp_path / "thr.zip"
    other = make_project(tmp_path / "other", onnx_file)
    store.export_classifier(other, "thr", zip_path)
    _remount_read_only(small_disk)
    code, _, err = run_cli(capsys, "train", "--project", str(project), "--name", "x", "--quiet", *QUICK_TRAIN)
    one_line_error(code, err, "Read-only file system", "writable")
    code, _, err = run_cli(capsys, "models", "import", "--project", str(project), "--file", str(zip_path))
    one_line_error(code, err, "Read-only file system", "writable")
    code, _, err = run_cli(capsys, "models", "export", "thr", "--project", str(other), "--file",
                           str(small_disk / "thr.zip"))
    one_line_error(code, err, "Read-only file system", str(small_disk / "thr.zip"))
    code, out, err = run_cli(capsys, "models", "list", "--project", str(project))
    assert code == 0 and "no classifiers" in out, err
