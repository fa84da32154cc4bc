"""SIGKILL, SIGINT and SIGTERM (QuPath's Cancel) at each stage of ``train`` and ``apply``, a project folder removed
mid-run, and two runs that want the same classifier name: every run ends cleanly or leaves only what the next run
cleans up by itself, and nothing half-written is ever visible.

Each run is a child process that stops at a named pause point (``DLPIXEL_PAUSE_AT``, see runtime.events) so the
signal arrives at exactly that stage, whatever the speed of the machine."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import pytest
from dlpixel.classifiers import store

sys.path.insert(0, str(Path(__file__).parent))
from reliability_kit import (  # noqa: E402
    QUICK_TRAIN,
    export_threshold,
    hidden_leftovers,
    labelled_project,
    make_project,
    run_child,
    start_paused,
)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return export_threshold(tmp_path_factory.mktemp("onnx") / "thr.onnx")


def _train_argv(project: Path, name: str, *extra: str) -> list[str]:
    return ["train", "--project", str(project), "--name", name, "--quiet", *QUICK_TRAIN, *extra]


def _finish(proc, marker: Path, timeout: float = 240) -> tuple[int, str, str]:
    marker.unlink(missing_ok=True)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _one_line(err: str) -> str:
    """The one error line of a failed run (warnings printed on the way may come before it)."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def _next_run_works(project: Path, onnx_file: Path, name: str) -> None:
    """The next run, with no cleaning by hand: the name is free (or replaceable) and nothing stale is left."""
    result = run_child(["models", "import-onnx", name, "--project", str(project), "--file", str(onnx_file),
                        "--classes", "A,B", "--channels", "Red,Green,Blue", "--tile-size", "32", "--overwrite"])
    assert result.returncode == 0, result.stderr
    assert hidden_leftovers(project) == []
    assert store.load_classifier(project, name).metadata.class_names == ["A", "B"]


@pytest.mark.parametrize("stage", ["stage:patches", "epoch", "staged"])
def test_sigkill_during_train_leaves_nothing_visible(tmp_path, onnx_file, stage):
    project = labelled_project(tmp_path / "p")
    marker = tmp_path / "paused"
    proc = start_paused(_train_argv(project, "k"), stage, marker)
    proc.kill()
    proc.communicate()
    assert store.list_classifiers(project) == []
    assert hidden_leftovers(project) == []  # the staging folder of the killed run was removed by that listing
    _next_run_works(project, onnx_file, "k")


def test_sigkill_between_the_renames_of_overwrite_keeps_the_old_classifier(tmp_path, onnx_file):
    project = make_project(tmp_path / "p", onnx_file, [])
    labelled_project(project)
    marker = tmp_path / "paused"
    proc = start_paused(_train_argv(project, "thr", "--overwrite"), "swap", marker)
    proc.kill()
    proc.communicate()
    # Killed with the old classifier moved aside and the new one not yet in place: the next look restores it.
    assert not store.classifier_dir(project, "thr").exists()
    entries = store.list_classifiers(project)
    assert [e.name for e in entries] == ["thr"] and entries[0].metadata.architecture == "custom_onnx"
    assert hidden_leftovers(project) == []


def test_sigterm_during_training_stops_after_the_epoch_like_ctrl_c(tmp_path):
    project = labelled_project(tmp_path / "p")
    marker = tmp_path / "paused"
    proc = start_paused(_train_argv(project, "t", "--set", "epochs=3"), "epoch", marker)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc, marker)
    assert code == 0, err  # handled, not killed by the signal
    meta = store.load_classifier(project, "t").metadata
    assert meta.results.stopped_by_user and meta.results.epochs_run == 1
    assert hidden_leftovers(project) == []


def test_a_second_sigterm_aborts_and_writes_nothing(tmp_path, onnx_file):
    project = labelled_project(tmp_path / "p")
    marker = tmp_path / "paused"
    proc = start_paused(_train_argv(project, "t"), "stage:saving", marker)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc, marker)
    assert code == 130 and "Traceback" not in err, err
    assert store.list_classifiers(project) == [] and hidden_leftovers(project) == []
    _next_run_works(project, onnx_file, "t")


def test_sigint_during_tile_extraction_cancels_cleanly(tmp_path):
    project = labelled_project(tmp_path / "p")
    marker = tmp_path / "paused"
    proc = start_paused(_train_argv(project, "t"), "stage:patches", marker)
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc, marker)
    assert code == 130 and "Traceback" not in err, err
    assert store.list_classifiers(project) == [] and hidden_leftovers(project) == []


def test_a_project_removed_during_training_is_not_recreated(tmp_path):
    project = labelled_project(tmp_path / "p")
    marker = tmp_path / "paused"
    proc = start_paused(_train_argv(project, "t"), "stage:saving", marker)
    shutil.rmtree(project)
    code, out, err = _finish(proc, marker)
    assert code == 2 and "no longer exists" in _one_line(err), err
    assert not project.exists()


def test_two_trainings_of_one_name_one_wins_the_other_is_told(tmp_path):
    project = labelled_project(tmp_path / "p")
    marker = tmp_path / "paused"
    first = start_paused(_train_argv(project, "same"), "stage:reading", marker)
    second = run_child(_train_argv(project, "same"))
    assert second.returncode == 2 and "'same' is taken" in _one_line(second.stderr), second.stderr
    code, out, err = _finish(first, marker)
    assert code == 0, err
    assert [e.name for e in store.list_classifiers(project)] == ["same"]
    third = run_child(_train_argv(project, "same"))
    assert third.returncode == 2 and "already exists" in _one_line(third.stderr)


@pytest.mark.parametrize("output", ["map", "measurements"])
def test_sigkill_during_apply_leaves_no_result_and_the_next_apply_works(tmp_path, onnx_file, output):
    project = make_project(tmp_path / "p", onnx_file)
    marker = tmp_path / "paused"
    argv = ["apply", "--project", str(project), "--classifier", "thr", "--output", output, "--quiet"]
    proc = start_paused(argv, "tiles", marker)
    proc.kill()
    proc.communicate()
    results = project / "results" / "thr"
    assert not [p for p in results.iterdir() if not p.name.startswith(".")]
    again = run_child(argv)
    assert again.returncode == 0, again.stderr
    assert hidden_leftovers(project) == []  # the killed run's spool is gone too
    assert {p.name for p in results.iterdir()} >= ({"a.classes.ome.tif"} if output == "map"
                                                   else {"a.measurements.csv"})


def test_sigterm_during_apply_cancels_and_writes_nothing(tmp_path, onnx_file):
    project = make_project(tmp_path / "p", onnx_file)
    marker = tmp_path / "paused"
    argv = ["apply", "--project", str(project), "--classifier", "thr", "--output", "map", "--quiet"]
    proc = start_paused(argv, "tiles", marker)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc, marker)
    assert code == 130 and "Traceback" not in err, err
    assert not any((project / "results" / "thr").iterdir())


@pytest.mark.parametrize("output", ["map", "measurements"])
def test_a_project_removed_during_apply_is_not_recreated(tmp_path, onnx_file, output):
    project = make_project(tmp_path / "p", onnx_file)
    marker = tmp_path / "paused"
    argv = ["apply", "--project", str(project), "--classifier", "thr", "--output", output, "--quiet"]
    proc = start_paused(argv, "tiles", marker)
    shutil.rmtree(project)
    code, out, err = _finish(proc, marker)
    assert code == 2 and "no longer exists" in _one_line(err), err
    assert not project.exists()


def test_a_request_cancelled_by_sigterm_still_replies_in_json(tmp_path, onnx_file):
    project = make_project(tmp_path / "p", onnx_file)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"action": "apply", "project": str(project), "classifier": "thr",
                                   "settings": {"output": "map", "scope": "image"}}))
    marker = tmp_path / "paused"
    proc = start_paused(["request", str(request), "--quiet"], "tiles", marker)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc, marker)
    reply = json.loads(out.strip().splitlines()[-1])
    assert code != 0 and reply["ok"] is False and "cancel" in reply["error"], (out, err)
    assert not any((project / "results" / "thr").iterdir())
