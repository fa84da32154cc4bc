"""Bad input never reaches outside the project, never loses a classifier and always ends in one line.

Crafted names and links, interrupted overwrites and deletes, concurrent writers of one name, tampered classifier
folders, damaged images, annotations and settings, and requests of the wrong JSON types. Signals, full and read-only
disks and QuPath's data.qpdata are in the other ``test_reliability_*`` modules."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
import torch
from dlpixel.classifiers import store
from dlpixel.config import TrainingConfig, validate_name
from dlpixel.config.layers import build_config
from dlpixel.errors import ClassifierError, ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from reliability_kit import (  # noqa: E402
    QUICK_TRAIN,
    export_threshold,
    hidden_leftovers,
    labelled_project,
    make_project,
    one_line_error,
    run_cli,
    snapshot,
    truth,
)

BAD_NAMES = ["../../../outside/precious", "/abs/outside/evil", "nl\n", "trailing ", " lead", "a/b", "a\\b", "..",
             ".", ".hidden", "tab\tname", "nul\x00x", "bell\x07", "x" * 101, ""]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return export_threshold(tmp_path_factory.mktemp("onnx") / "thr.onnx")


@pytest.fixture
def env(tmp_path, onnx_file):
    """(project with classifier ``thr``, a folder outside it that must never change)."""
    outside = tmp_path / "outside"
    (outside / "precious").mkdir(parents=True)
    (outside / "precious" / "keep.txt").write_text("keep me")
    (outside / "evil").mkdir()
    project = make_project(tmp_path / "deep" / "er" / "project", onnx_file)
    return project, outside


# --- names ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BAD_NAMES)
def test_validator_refuses_crafted_names(name):
    with pytest.raises(ConfigError) as info:
        validate_name(name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [5, None, ["a"], {"a": 1}, True])
def test_validator_refuses_names_that_are_not_text(name):
    with pytest.raises(ConfigError, match="must be text"):
        validate_name(name)


def test_every_command_refuses_crafted_names(env, capsys):
    project, outside = env
    before = snapshot(outside)
    inside_before = snapshot(project)
    zip_path = project.parent / "thr.zip"
    store.export_classifier(project, "thr", zip_path)
    p = str(project)
    for name in ["../../../outside/precious", str(outside / "evil"), "nl\n", "x/../thr"]:
        for argv in (["models", "delete", name, "--project", p], ["models", "show", name, "--project", p],
                     ["models", "export", name, "--project", p, "--file", str(outside / "x.zip")],
                     ["models", "import", name, "--project", p, "--file", str(zip_path)],
                     ["models", "import-onnx", name, "--project", p, "--file", str(zip_path), "--classes", "A,B",
                      "--channels", "Red", "--tile-size", "32"],
                     ["apply", "--project", p, "--classifier", name, "--output", "map", "--quiet"],
                     ["train", "--project", p, "--name", name, "--quiet", *QUICK_TRAIN],
                     ["train", "--project", p, "--from-model", name, "--name", "ok", "--quiet", *QUICK_TRAIN]):
            code, out, err = run_cli(capsys, *argv)
            one_line_error(code, err, "classifier name")
    assert snapshot(outside) == before
    assert snapshot(project) == inside_before


def test_requests_refuse_crafted_names(env, capsys, tmp_path):
    project, outside = env
    before = snapshot(outside)
    from dlpixel.requests import handle_request

    for request in ({"action": "load_settings", "project": str(project), "classifier": "../../../outside/precious"},
                    {"action": "apply", "project": str(project), "classifier": str(outside / "evil")},
                    {"action": "train", "project": str(project), "name": "nl\n"},
                    {"action": "delete_model", "project": str(project), "classifier": "../x"},
                    {"action": "script", "project": str(project), "kind": "train", "name": "../x"}):
        with pytest.raises(ConfigError, match="classifier name"):
            handle_request(request)
    assert snapshot(outside) == before


def test_import_refuses_a_zip_whose_folder_is_a_crafted_name(env, capsys):
    project, _ = env
    bad = project.parent / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("..\n/metadata.json", "{}")
    code, _, err = run_cli(capsys, "models", "import", "--project", str(project), "--file", str(bad))
    one_line_error(code, err, "classifier name")


# --- links ---------------------------------------------------------------------------------------------------------

def test_a_linked_classifier_folder_is_never_deleted_or_written_through(env, capsys):
    project, outside = env
    store.export_classifier(project, "thr", outside / "thr.zip")
    (outside / "victimproject").mkdir()
    store.import_classifier(outside / "victimproject", outside / "thr.zip", "victim")
    victim = outside / "victimproject" / "classifiers" / "dl" / "victim"
    (store.classifiers_dir(project) / "evil").symlink_to(victim, target_is_directory=True)
    before = snapshot(outside)
    for argv in (["models", "delete", "evil", "--project", str(project)],
                 ["models", "show", "evil", "--project", str(project)],
                 ["apply", "--project", str(project), "--classifier", "evil", "--output", "map", "--quiet"]):
        code, _, err = run_cli(capsys, *argv)
        one_line_error(code, err, "symbolic link")
    code, _, err = run_cli(capsys, "models", "import", "evil", "--project", str(project), "--file",
                           str(outside / "thr.zip"), "--overwrite")
    one_line_error(code, err, "symbolic link")
    assert snapshot(outside) == before
    assert "evil" not in [e.name for e in store.list_classifiers(project)]


def test_apply_never_writes_through_a_linked_results_folder(env, capsys):
    project, outside = env
    (project / "results").mkdir()
    (project / "results" / "thr").symlink_to(outside / "evil", target_is_directory=True)
    before = snapshot(outside)
    for output in ("map", "measurements", "objects"):
        code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--output", output,
                               "--quiet")
        one_line_error(code, err, "symbolic link")
    assert snapshot(outside) == before
    (project / "results").rename(outside / "moved-results")
    (project / "results").symlink_to(outside / "evil", target_is_directory=True)
    code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--output", "map",
                           "--quiet")
    assert "outside the project" in one_line_error(code, err)
    assert not any((outside / "evil").iterdir())


def test_export_never_packs_what_a_link_points_at(env, capsys, tmp_path):
    project, outside = env
    secret = outside / "secret.txt"
    secret.write_text("the secret")
    (store.classifier_dir(project, "thr") / "notes.txt").symlink_to(secret)
    code, out, err = run_cli(capsys, "models", "export", "thr", "--project", str(project), "--file",
                             str(tmp_path / "x.zip"))
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "x.zip") as zf:
        assert sorted(zf.namelist()) == ["thr/metadata.json", "thr/model.onnx"]
        assert not any(b"the secret" in zf.read(n) for n in zf.namelist())


# --- interrupted overwrites, stale temporaries ---------------------------------------------------------------------

def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_classifier_left_aside_by_an_interrupted_overwrite_is_restored(env, capsys, caplog):
    project, _ = env
    folder = store.classifier_dir(project, "thr")
    created = store.load_classifier(project, "thr").metadata.created
    # What a crash between the two renames of --overwrite leaves: the old folder aside, the new one unfinished.
    folder.rename(folder.with_name(f".thr.{_dead_pid()}.ab12cd34.old"))
    partial = folder.parent / f".thr.{_dead_pid()}.x1y2z3.partial"
    partial.mkdir()
    (partial / "model.pt").write_bytes(b"half")
    with caplog.at_level("WARNING"):
        code, out, err = run_cli(capsys, "models", "list", "--project", str(project))
    assert code == 0 and out.startswith("thr "), out + err
    assert any("restored classifier 'thr'" in r.getMessage() for r in caplog.records)
    assert any(".partial" in r.getMessage() and "removed" in r.getMessage() for r in caplog.records)
    assert store.load_classifier(project, "thr").metadata.created == created
    assert hidden_leftovers(project) == []


def test_a_completed_swap_leaves_no_old_folder_behind(env, capsys):
    project, _ = env
    folder = store.classifier_dir(project, "thr")
    import shutil

    shutil.copytree(folder, folder.with_name(f".thr.{_dead_pid()}.00000000.old"))
    assert store.list_classifiers(project)[0].name == "thr"
    assert hidden_leftovers(project) == []


def test_temporaries_of_a_live_run_are_left_alone(env):
    project, _ = env
    root = store.classifiers_dir(project)
    with store.name_lock(project, "other"):
        live = root / f".other.{os.getpid()}.abcdefgh.partial"
        live.mkdir()
        store.list_classifiers(project)
        assert live.is_dir()
        live.rmdir()


def test_an_interrupted_delete_leaves_no_half_classifier(env):
    project, _ = env
    folder = store.classifier_dir(project, "thr")
    trash = folder.with_name(f".thr.{_dead_pid()}.deadbeef.trash")
    folder.rename(trash)
    assert store.list_classifiers(project) == []
    assert not trash.exists() and hidden_leftovers(project) == []


def test_stale_partial_weight_downloads_are_removed(tmp_path):
    from dlpixel.models import pretrained

    dead = tmp_path / f".resnet.pth.{_dead_pid()}.abc.part"
    old = tmp_path / ".resnet.pth.abcdef.part"  # written before process ids were part of the name
    live = tmp_path / f".resnet.pth.{os.getppid()}.def.part"
    mine = tmp_path / f".resnet.pth.{os.getpid()}.ghi.part"
    for p in (dead, old, live, mine):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert sorted(pretrained.clean_partial_downloads(tmp_path)) == sorted([dead, old])
    assert live.exists() and mine.exists()


# --- one writer per name -------------------------------------------------------------------------------------------

def test_a_second_writer_of_the_same_name_is_told_it_is_taken(env, capsys, onnx_file):
    project, _ = env
    import subprocess

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from dlpixel.classifiers import store\n"
         "with store.name_lock(Path(sys.argv[1]), 'busy'):\n    print('held', flush=True); time.sleep(60)",
         str(project)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(capsys, "models", "import-onnx", "busy", "--project", str(project), "--file",
                               str(onnx_file), "--classes", "A,B", "--channels", "Red,Green,Blue", "--tile-size", "32")
        one_line_error(code, err, "'busy' is taken", f"pid {holder.pid}")
        code, _, err = run_cli(capsys, "train", "--project", str(project), "--name", "busy", "--quiet", *QUICK_TRAIN)
        one_line_error(code, err, "'busy' is taken")
    finally:
        holder.kill()
        holder.wait()
    # The lock died with its holder: the name is free again, with nothing to clean by hand.
    code, _, err = run_cli(capsys, "models", "import-onnx", "busy", "--project", str(project), "--file",
                           str(onnx_file), "--classes", "A,B", "--channels", "Red,Green,Blue", "--tile-size", "32")
    assert code == 0, err
    assert hidden_leftovers(project) == []


def test_staging_never_replaces_a_folder_that_appeared_meanwhile(env):
    project, _ = env
    with pytest.raises(ClassifierError, match="already exists"):
        with store.staging_folder(project, "late") as tmp:
            (tmp / "metadata.json").write_text("{}")
            (store.classifiers_dir(project) / "late").mkdir()
            (store.classifiers_dir(project) / "late" / "mine.txt").write_text("theirs")
    assert (store.classifiers_dir(project) / "late" / "mine.txt").read_text() == "theirs"
    assert hidden_leftovers(project) == []


# --- classes, measurements ------------------------------------------------------------------------------------------

def test_more_classes_than_label_values_is_one_line(tmp_path, capsys):
    boxes = [(f"c{i}", shapely.box(i % 16 * 4, i // 16 * 4, i % 16 * 4 + 3, i // 16 * 4 + 3), f"class{i}")
             for i in range(255)]
    project = make_project(tmp_path / "p", None, boxes)
    code, _, err = run_cli(capsys, "train", "--project", str(project), "--name", "many", "--quiet", *QUICK_TRAIN)
    one_line_error(code, err, "255 classes", "at most 254")
    assert not store.classifiers_dir(project).exists()


def test_two_annotations_with_the_same_id_get_their_own_measurements(tmp_path, onnx_file, capsys):
    left = shapely.box(0, 0, 16, 16)    # all positive: 256 px
    right = shapely.box(40, 0, 60, 10)  # all other: 200 px
    project = make_project(tmp_path / "p", onnx_file, [("same", left, None), ("same", right, None)])
    code, out, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--quiet")
    assert code == 0, err
    import csv

    rows = list(csv.DictReader((project / "results" / "thr" / "a.measurements.csv").open()))
    assert len(rows) == 2 and rows[0]["id"] != rows[1]["id"] and rows[0]["id"] == "same"
    assert float(rows[0]["thr: Positive area px^2"]) == 256 and float(rows[0]["thr: Other area px^2"]) == 0
    assert float(rows[1]["thr: Positive area px^2"]) == 0 and float(rows[1]["thr: Other area px^2"]) == 200


# --- signals -------------------------------------------------------------------------------------------------------

def test_sigterm_cancels_like_ctrl_c():
    from dlpixel.cli.common import cancel_on_sigint

    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        token = cancel_on_sigint()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert token.cancelled
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


# --- tampered classifier folders -----------------------------------------------------------------------------------

def _tamper(project: Path, change) -> None:
    path = store.classifier_dir(project, "thr") / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.update(downsample=0), "downsample"),
    (lambda m: m.update(classes=[]), "classes"),
    (lambda m: m.update(tile_size=0), "tile_size"),
    (lambda m: m.update(context_scale=1000), "context_scale"),
    (lambda m: m.update(input_channels=[]), "input_channels"),
    (lambda m: m.update(schema_version="1"), "schema_version"),
    (lambda m: m.clear() or m.update({"a": [[[[[[]]]]]]}), "metadata.json"),
])
def test_tampered_metadata_is_one_line(env, capsys, change, needle):
    project, _ = env
    _tamper(project, change)
    code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--output", "map",
                           "--quiet")
    one_line_error(code, err, needle)
    assert not (project / "results" / "thr").exists() or not any((project / "results" / "thr").iterdir())


def test_metadata_nested_too_deeply_is_one_line(env, capsys):
    project, _ = env
    (store.classifier_dir(project, "thr") / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_cli(capsys, "models", "show", "thr", "--project", str(project))
    one_line_error(code, err, "nested too deeply")


def test_a_channel_index_the_image_lacks_is_one_line(env, capsys):
    project, _ = env
    _tamper(project, lambda m: m["preprocessing"].update(channels=[0, 1, 7], channel_names=["x", "y", "z"]) or
            m.update(input_channels=["x", "y", "z"]))
    code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--output", "map",
                           "--quiet")
    one_line_error(code, err, "channel indices [0, 1, 7]")
    assert not (project / "results" / "thr").exists() or not any((project / "results" / "thr").iterdir())


def _as_unet(project: Path, weights: object) -> None:
    """Make ``thr`` a PyTorch classifier (resnet18 U-Net) with ``weights`` as its model.pt."""
    _tamper(project, lambda m: m.update(architecture="unet", backbone="resnet18"))
    folder = store.classifier_dir(project, "thr")
    (folder / "model.onnx").unlink()
    if isinstance(weights, bytes):
        (folder / "model.pt").write_bytes(weights)
    else:
        torch.save(weights, folder / "model.pt")


@pytest.mark.parametrize("weights, needle", [
    (b"not a pickle at all", "model.pt"),
    ([1, 2, 3], "not a state dict"),
    ("another class count", "2 classes"),
])
def test_a_model_pt_that_does_not_fit_is_one_line(env, capsys, weights, needle):
    project, _ = env
    if weights == "another class count":
        from dlpixel.models.factory import create_model

        weights = create_model("resnet18", 3, 3, pretrained=False)[0].state_dict()
    _as_unet(project, weights)
    code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--output", "map",
                           "--backend", "torch", "--quiet")
    one_line_error(code, err, needle)


def test_an_onnx_that_does_not_fit_its_metadata_is_one_line(env, capsys, tmp_path):
    project, _ = env
    folder = store.classifier_dir(project, "thr")
    export_threshold(folder / "model.onnx", classes=3)  # three output classes for two in the metadata
    code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--quiet")
    one_line_error(code, err, "returns 3 classes")
    export_threshold(folder / "model.onnx", channels=4)  # four input channels for three
    code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--quiet")
    one_line_error(code, err, "takes 4 input channels")


@pytest.mark.parametrize("downsample", ["0", "-1", "nan"])
def test_import_onnx_refuses_a_downsample_that_is_not_positive(env, capsys, onnx_file, downsample):
    project, _ = env
    code, _, err = run_cli(capsys, "models", "import-onnx", "new", "--project", str(project), "--file",
                           str(onnx_file), "--classes", "A,B", "--channels", "Red,Green,Blue", "--tile-size", "32",
                           "--downsample", downsample)
    one_line_error(code, err, "--downsample")
    assert "new" not in [e.name for e in store.list_classifiers(project)]


# --- models import -------------------------------------------------------------------------------------------------

def test_a_zip_bomb_is_refused_before_anything_is_unpacked(env, capsys, tmp_path):
    project, _ = env
    bomb = tmp_path / "bomb.zip"
    metadata = (store.classifier_dir(project, "thr") / "metadata.json").read_text().replace('"thr"', '"bomb"')
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/metadata.json", metadata)
        with zf.open("bomb/model.onnx", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(64):
                member.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    code, _, err = run_cli(capsys, "models", "import", "--project", str(project), "--file", str(bomb))
    one_line_error(code, err, "model.onnx", "refusing")
    assert [e.name for e in store.list_classifiers(project)] == ["thr"] and hidden_leftovers(project) == []


def test_a_damaged_zip_member_is_one_line_and_leaves_nothing(env, capsys, tmp_path):
    project, _ = env
    good = tmp_path / "good.zip"
    store.export_classifier(project, "thr", good)
    data = bytearray(good.read_bytes())
    start = data.find(b"thr/model.onnx") + len("thr/model.onnx") + 40
    data[start: start + 64] = bytes(64)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "models", "import", "copy", "--project", str(project), "--file", str(damaged))
    one_line_error(code, err, str(damaged))
    assert [e.name for e in store.list_classifiers(project)] == ["thr"] and hidden_leftovers(project) == []


# --- images, annotations and settings ------------------------------------------------------------------------------

def _with_image(project: Path, write) -> None:
    (project / "a.tif").unlink()
    write(project / "a.tif")


@pytest.mark.parametrize("case, needle", [
    ("truncated", "truncated or damaged"),
    ("empty", "cannot read image"),
    ("nan", "NaN or infinite"),
    ("inf", "NaN or infinite"),
    ("5-D", "5-D image"),
])
def test_bad_images_are_one_line(env, capsys, case, needle):
    project, _ = env

    def write(path):
        if case == "truncated":
            tifffile.imwrite(path, np.zeros((256, 256, 3), np.uint8), photometric="rgb")
            path.write_bytes(path.read_bytes()[:3000])
        elif case == "empty":
            path.write_bytes(b"")
        elif case in ("nan", "inf"):
            img = np.full((64, 64, 3), 0.5, np.float32)
            img[10, 10, 0] = np.nan if case == "nan" else np.inf
            tifffile.imwrite(path, img, photometric="rgb")
        else:
            tifffile.imwrite(path, np.zeros((2, 2, 3, 64, 64), np.uint8))

    _with_image(project, write)
    for output in ("map", "measurements"):
        code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--output",
                               output, "--quiet")
        one_line_error(code, err, needle)
    assert not list((project / "results").rglob("a.*")) if (project / "results").exists() else True


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 100_000, 3)])
def test_tiny_and_thin_images_give_exact_maps(env, capsys, shape):
    project, _ = env

    def write(path):
        img = np.zeros(shape, np.uint8)
        img[..., 0][:, ::2] = 255
        tifffile.imwrite(path, img, photometric="rgb")

    _with_image(project, write)
    (project / "a.tif.geojson").unlink()
    code, out, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--output", "map",
                             "--scope", "image", "--quiet")
    assert code == 0, err
    classes = tifffile.imread(project / "results" / "thr" / "a.classes.ome.tif").reshape(shape[:2])
    expected = np.zeros(shape[:2], np.uint8)
    expected[:, ::2] = 1
    assert np.array_equal(classes, expected)


@pytest.mark.parametrize("geometry", [
    '{"type": "Polygon", "coordinates": [[[0, 0], [NaN, 1], [1, 1], [0, 0]]]}',
    '{"type": "Polygon", "coordinates": [[[0, 0], [Infinity, 1], [1, 1], [0, 0]]]}',
])
def test_nan_and_infinite_coordinates_are_one_line(env, capsys, geometry):
    project, _ = env
    (project / "a.tif.geojson").write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                                           f'"geometry": {geometry}, "properties": {{}}}}]}}')
    code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--quiet")
    one_line_error(code, err, "NaN or infinite coordinates", "a.tif.geojson")


def test_geojson_nested_too_deeply_is_one_line(env, capsys):
    project, _ = env
    (project / "a.tif.geojson").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_cli(capsys, "apply", "--project", str(project), "--classifier", "thr", "--quiet")
    one_line_error(code, err, "nested too deeply")


@pytest.mark.parametrize("setting", ["learning_rate=nan", "learning_rate=inf", "tile_overlap=nan",
                                     "context_scale=9", "augment.scale=nan"])
def test_settings_that_are_not_finite_or_too_large_are_one_line(tmp_path, capsys, setting):
    project = labelled_project(tmp_path / "p")
    code, _, err = run_cli(capsys, "train", "--project", str(project), "--name", "x", "--quiet", *QUICK_TRAIN,
                           "--set", setting)
    one_line_error(code, err, setting.split("=")[0].split(".")[-1])
    assert not store.classifiers_dir(project).exists()


def test_settings_and_request_files_nested_too_deeply_are_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    project = labelled_project(tmp_path / "p")
    code, _, err = run_cli(capsys, "train", "--project", str(project), "--name", "x", "--config", str(deep))
    one_line_error(code, err, "nested too deeply")
    with pytest.raises(ConfigError):
        build_config(TrainingConfig, "not a dict", source="settings")  # type: ignore[arg-type]


# --- requests of the wrong JSON types ------------------------------------------------------------------------------

@pytest.mark.parametrize("request_text, needle", [
    ('{"action": ["train"]}', "'action' must be a string"),
    ('{"action": "list_models", "project": 5}', "'project' must be a string"),
    ('{"action": "list_models", "project": ["a"]}', "'project' must be a string"),
    ('{"action": "train", "project": "p", "settings": "epochs=1", "name": "x"}', "'settings' must be an object"),
    ('{"action": "train", "project": "p", "name": 5}', "'name' must be a string"),
    ('{"action": "apply", "project": "p", "classifier": "thr", "images": [1]}', "list of strings"),
    ('{"action": "train", "overwrite": "yes"}', "'overwrite' must be true or false"),
    ('[' * 100_000 + ']' * 100_000, "nested too deeply"),
    ('{"a": ' * 100_000 + '1' + '}' * 100_000, "nested too deeply"),
    ("[1, 2]", "JSON object"),
    ("not json", "not valid JSON"),
    ('{"action": "nope"}', "unknown action"),
    ('{"action": "list_models", "project": "/no/such/project"}', "project not found"),
])
def test_every_request_gets_a_json_error_reply(tmp_path, capsys, request_text, needle):
    f = tmp_path / "request.json"
    f.write_text(request_text)
    code, out, err = run_cli(capsys, "request", str(f), "--quiet")
    assert code != 0
    reply = json.loads(out.strip().splitlines()[-1])
    assert reply["ok"] is False and needle in reply["error"], reply
    assert "\n" not in reply["error"] and "Traceback" not in err


# --- the command line ----------------------------------------------------------------------------------------------

def test_models_list_on_a_missing_project_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "models", "list", "--project", str(tmp_path / "nowhere"))
    one_line_error(code, err, "project not found")
    assert not (tmp_path / "nowhere").exists()


def test_demo_refuses_an_out_folder_under_a_file_and_zero_epochs(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path / "file" / "demo"), "--quiet")
    one_line_error(code, err, "--out")
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"), "--epochs", "0", "--quiet")
    one_line_error(code, err, "--epochs")
    assert not (tmp_path / "demo").exists()


def test_export_to_a_missing_or_file_target_is_one_line(env, capsys, tmp_path):
    project, _ = env
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "missing" / "x.zip", tmp_path / "file" / "x.zip"):
        code, _, err = run_cli(capsys, "models", "export", "thr", "--project", str(project), "--file", str(target))
        one_line_error(code, err, str(target))


def test_errors_of_the_system_are_one_line(capsys, monkeypatch, env):
    """A disk or permission error that no check foresaw still ends in one line naming the file and what to do."""
    import errno
    import importlib

    cli_main = importlib.import_module("dlpixel.cli.main")
    project, _ = env

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(project / "x"))

    monkeypatch.setattr(cli_main, "cmd_models", full)
    code, _, err = run_cli(capsys, "models", "list", "--project", str(project))
    one_line_error(code, err, "No space left on device", "free disk space", str(project / "x"))


def test_a_truth_the_threshold_model_gets_right(env):
    """The fixture itself: the classifier maps exactly the red half (so the tests above test real outputs)."""
    project, _ = env
    from dlpixel.config import InferenceConfig
    from dlpixel.inference.run import apply_classifier
    from dlpixel.projects import open_project

    written = apply_classifier(open_project(project), "thr", InferenceConfig(output="map", scope="image"))
    classes = tifffile.imread(written[0]).squeeze()
    assert np.array_equal(classes == 1, truth())
    assert hidden_leftovers(project) == []
