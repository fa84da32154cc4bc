"""What a new user meets first: the command line's messages, defaults and small conveniences, each through
``dlpixel.cli.main`` or a subprocess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, strokes_from_truth, synthetic_image, write_folder_project
from dlpixel.classifiers import store
from dlpixel.cli.main import main

FAST = ["--set", "method=unet",
        "--set", "backbone=efficientnet-lite0", "--set", "tile_size=64", "--set", "batch_size=4", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder project with one classifier 'tiny' (one epoch), shared by the tests that only read it."""
    img, truth = synthetic_image(192)
    folder = write_folder_project(tmp_path_factory.mktemp("tiny") / "project",
                                  {"synthetic.tif": (img, strokes_from_truth(truth, per_class=6))})
    assert main(["train", "--project", str(folder), "--name", "tiny", *FAST, "--set", "epochs=1"]) == 0
    return folder


def test_a_class_left_without_training_pixels_by_the_split_stops_training_with_its_name(synthetic_project,
                                                                                          monkeypatch, capsys):
    """Whatever the split does, the check after it sees the final training tiles: here every tile holding
    'Fibre' goes to validation, and training stops before a model is built, naming the class."""
    import dlpixel.training.run as run

    real = run.split_tiles

    def fibre_to_validation(tiles, counts, *args, **kwargs):
        split = real(tiles, counts, *args, **kwargs)
        fibre = {i for i in range(len(tiles)) if counts[i][sorted(CLASSES).index("Fibre")] > 0}
        split.val = sorted(set(split.val) | fibre)
        split.train = [i for i in split.train if i not in fibre]
        return split

    monkeypatch.setattr(run, "split_tiles", fibre_to_validation)
    monkeypatch.setattr("dlpixel.models.factory.create_model", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a model was built")))
    folder, _, _ = synthetic_project
    assert main(["train", "--project", str(folder), "--name", "m", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[-1]] and err[0].startswith("error: class 'Fibre' has no training pixels")
    assert "validation_split" in err[0] and "[2]" not in err[0]
    assert not store.classifiers_dir(folder).exists() or not any(store.classifiers_dir(folder).iterdir())


def test_channels_are_found_by_name_wherever_they_sit_in_each_image(tmp_path, monkeypatch, capsys):
    """'b' holds the same pixels as 'a' with its channels in another order: training reads the same tiles from
    both (by name), and the classifier records the first image's order."""
    import json

    import dlpixel.training.run as run
    from dlpixel.data.images import write_ome_tiff

    img, truth = synthetic_image(192)
    feats = json.dumps({"type": "FeatureCollection", "features": strokes_from_truth(truth, per_class=6)})
    folder = tmp_path / "project"
    folder.mkdir()
    names = ["Hematoxylin", "DAB", "Eosin"]
    order = [2, 0, 1]
    write_ome_tiff(folder / "a.ome.tif", img, channel_names=names, tile=64)
    write_ome_tiff(folder / "b.ome.tif", img[..., order], channel_names=[names[i] for i in order], tile=64)
    for n in ("a.ome.tif", "b.ome.tif"):
        (folder / f"{n}.geojson").write_text(feats)
    caches = []
    real = run.extract_patches

    def keep(*args, **kwargs):
        caches.append(real(*args, **kwargs))
        return caches[-1]

    monkeypatch.setattr(run, "extract_patches", keep)
    args = ["train", "--project", str(folder), "--name", "m", *FAST, "--set", "epochs=1", "--set", "channels=DAB,Eosin"]
    assert main(args) == 0, capsys.readouterr().err
    cache = caches[0]
    by_image = {}
    for i, t in enumerate(cache.tiles):
        by_image.setdefault(t.image, {})[(t.x, t.y)] = cache.images[i]
    assert by_image[0].keys() == by_image[1].keys()
    for xy, raw in by_image[0].items():
        assert np.array_equal(raw, by_image[1][xy])
        assert not np.array_equal(raw[0], raw[1])
    entry = store.load_classifier(folder, "m")
    assert entry.metadata.input_channels == ["DAB", "Eosin"]
    # Every channel (no names chosen) needs the same channels in each image, in any order.
    assert main(["train", "--project", str(folder), "--name", "n", *FAST, "--set", "epochs=1"]) == 0


def test_scripts_name_the_project_absolute_and_apply_refuses_a_missing_classifier(tiny, monkeypatch, capsys):
    """QuPath's script editor runs in QuPath's working folder: a relative --project is written absolute."""
    monkeypatch.chdir(tiny.parent)
    assert main(["script", "apply", "--project", tiny.name, "--classifier", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"def project = '{tiny.resolve()}'" in out
    assert main(["script", "train", "--project", tiny.name, "--name", "again"]) == 0
    assert f"def project = '{tiny.resolve()}'" in capsys.readouterr().out
    assert main(["script", "apply", "--project", tiny.name, "--classifier", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: no classifier named 'nope'")


def test_models_show_open_with_a_relative_project(tiny, monkeypatch, capsys):
    report = tiny / "classifiers" / "dl" / "tiny" / store.REPORT
    if not report.exists():  # the report is tested in test_report.py; here only how it is opened
        report.write_text("<html></html>")
    monkeypatch.chdir(tiny.parent)
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert main(["models", "show", "tiny", "--project", tiny.name, "--open"]) == 0
    assert opened == [(tiny.resolve() / "classifiers" / "dl" / "tiny" / store.REPORT).as_uri()]


def test_scripts_find_the_helper_where_qupath_install_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from dlpixel.qupath.scripting import default_helper_path

    default = default_helper_path()
    assert default == tmp_path / "home" / "QuPath" / "dlpixel" / "DLPixel.groovy"
    assert main(["script", "apply", "--classifier", "c"]) == 0
    assert repr(str(default)) in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["qupath", "install", "--user-dir", "lab QuPath"]) == 0
    helper = tmp_path / "lab QuPath" / "dlpixel" / "DLPixel.groovy"
    assert helper.is_file() and str(helper) in capsys.readouterr().out
    assert main(["script", "apply", "--classifier", "c"]) == 0
    out = capsys.readouterr().out
    assert repr(str(helper)) in out and repr(str(default)) not in out
    assert main(["script", "train", "--name", "c", "--helper", "mine/DLPixel.groovy"]) == 0
    assert repr(str(tmp_path / "mine" / "DLPixel.groovy")) in capsys.readouterr().out


def test_classifier_folders_and_results_follow_the_umask(synthetic_project):
    """mkdtemp/mkstemp create 0700/0600; what dlpixel leaves behind has the modes the umask gives (here 027:
    folders 0750, files 0640), so colleagues on a shared project can read it."""
    import os
    import stat

    folder, _, _ = synthetic_project
    old = os.umask(0o027)
    try:
        assert main(["train", "--project", str(folder), "--name", "shared", *FAST, "--set", "epochs=1"]) == 0
        assert main(["apply", "--project", str(folder), "--classifier", "shared", "--output", "map",
                     "--scope", "image", "--quiet"]) == 0
    finally:
        os.umask(old)
    classifier = store.classifiers_dir(folder) / "shared"
    results = [p for p in (folder / "results").rglob("*") if p.is_file()]
    files = [p for p in classifier.iterdir() if p.is_file()]
    assert results and {store.METADATA, store.WEIGHTS, store.ONNX} <= {p.name for p in files}
    assert stat.S_IMODE(classifier.stat().st_mode) == 0o750
    for path in files + results:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


@pytest.mark.parametrize("setting,expected", [
    ("freeze=all", "error: settings: freeze: 'all' is not a choice: use auto, none, small, medium or large, or name "
                   "encoder blocks (stem, block1"),
    ("epoch=5", "error: settings: epoch: unknown setting; did you mean epochs?"),
    ("augment.elastc=true", "error: settings: augment.elastc: unknown setting; did you mean augment.elastic?"),
    ("tile_overlap=0.25", "error: settings: tile_overlap: is a percentage from 0 to 50, and 0.25 looks like a "
                          "fraction: write 25 (or '25%')"),
    ("validation_split=20", "error: settings: validation_split: is a fraction between 0 and 1, and 20 looks like a "
                            "percentage: write 0.2 (or '20%')"),
])
def test_a_wrong_setting_is_one_line_that_says_what_to_write(tmp_path, capsys, setting, expected):
    assert main(["train", "--project", str(tmp_path), "--name", "m", "--set", setting]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(expected) and captured.err.count("\n") == 1, captured.err
    assert "Input should be" not in captured.err and "literal[" not in captured.err
    assert list(tmp_path.iterdir()) == []


def test_settings_with_commas_and_percent_signs_are_read_as_meant(capsys):
    assert main(["script", "train", "--name", "m", "--set", "description=Tumor, stroma", "--set", "tile_overlap=25%",
                 "--set", "validation_split=15%", "--set", "channels=0,2", "--set", "classes=Tumor,Stroma"]) == 0
    out = capsys.readouterr().out
    for line in ["description: 'Tumor, stroma'", "tile_overlap: 25.0", "validation_split: 0.15",
                 "channels: [0, 2]", "classes: ['Tumor', 'Stroma']"]:
        assert line in out, line


def _train_and_interrupt(folder: Path, name: str, signals: int) -> tuple[int, str]:
    """Run ``dlpixel train`` in a subprocess, send ``signals`` Ctrl-Cs (SIGINT) once its first epoch is done."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "dlpixel", "train", "--project", str(folder), "--name", name,
                             *FAST[:-1], "--set", "epochs=500", "--set", "early_stop_patience=0", "--events", "jsonl"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "epoch":
            break
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_first_ctrl_c_stops_after_the_epoch_and_saves_the_best_so_far(tiny):
    code, err = _train_and_interrupt(tiny, "ctrl_c", 1)
    assert code == 0, err
    assert "stopping… (training ends after this epoch and saves the best one so far" in err
    r = store.load_classifier(tiny, "ctrl_c").metadata.results
    assert r.stopped_by_user and 1 <= r.epochs_run < 10 and 1 <= r.best_epoch <= r.epochs_run


def test_second_ctrl_c_aborts_and_writes_nothing(tiny):
    code, err = _train_and_interrupt(tiny, "ctrl_c_twice", 2)
    assert code == 130, err
    assert err.strip().splitlines()[-1] in ("training was interrupted; nothing was written",
                                           "interrupted; nothing was written")
    assert "Traceback" not in err
    assert not (store.classifiers_dir(tiny) / "ctrl_c_twice").exists()
    assert not [p for p in store.classifiers_dir(tiny).iterdir() if p.name.startswith(".ctrl_c_twice")]


def test_help_settings_piped_into_a_reader_that_stops_ends_quietly():
    """`dlpixel train --help-settings | head`: the reader is gone before the first line is written."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "dlpixel", "train", "--help-settings"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b"", err.decode()


def test_maps_cover_the_whole_image_and_a_run_that_writes_nothing_fails(tiny, tmp_path, capsys):
    """An image annotated with strokes only: a map covers the whole image by default; objects in the default scope
    (area annotations) have nowhere to go, and apply says so and exits non-zero."""
    import json
    import shutil

    import tifffile

    strokes = tmp_path / "strokes"
    strokes.mkdir()
    shutil.copyfile(tiny / "synthetic.tif", strokes / "synthetic.tif")
    feats = json.loads((tiny / "synthetic.tif.geojson").read_text())
    feats["features"] = [f for f in feats["features"] if f["geometry"]["type"] == "LineString"]
    assert feats["features"]
    (strokes / "synthetic.tif.geojson").write_text(json.dumps(feats))
    shutil.copytree(tiny / "classifiers", strokes / "classifiers")

    assert main(["apply", "--project", str(strokes), "--classifier", "tiny", "--output", "map", "--quiet"]) == 0
    maps = [p for p in capsys.readouterr().out.split() if p.endswith(".ome.tif")]
    assert len(maps) == 1
    with tifffile.TiffFile(maps[0]) as tif:
        classes = tif.series[0].levels[0].asarray()
    assert classes.shape[-2:] == (192, 192) and (classes != 255).all()

    before = sorted(p for p in strokes.rglob("*") if p.is_file())
    assert main(["apply", "--project", str(strokes), "--classifier", "tiny", "--output", "objects", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: nothing was written: image 'synthetic.tif' has no annotations in scope 'annotations'; "
                   "draw area annotations, or use --scope image")
    assert sorted(p for p in strokes.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("offline", [True, False])
def test_missing_pretrained_weights_stop_training_before_any_tile_is_read(synthetic_project, tmp_path, monkeypatch,
                                                                           capsys, offline):
    """Offline, or with the weights' server out of reach, training says in one line where to put the weights,
    before reading images (no stage event at all) and without trying to download."""
    import json
    import socket
    import urllib.request

    folder, _, _ = synthetic_project
    monkeypatch.setenv("DLPIXEL_WEIGHTS_DIR", str(tmp_path / "weights"))
    if not offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("DLPIXEL_OFFLINE", "0")

        def unreachable(address, timeout=None, *args, **kwargs):
            assert timeout is not None and timeout <= 5
            raise TimeoutError("timed out")

        monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("a download was tried"))
    args = ["train", "--project", str(folder), "--name", "w", *FAST[:-1], "--set", "backbone=resnet50_kather100k",
            "--events", "jsonl"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert [json.loads(line)["event"] for line in captured.out.splitlines()] == []
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("error: resnet50_kather100k weights are not in the cache and ")
    assert str(tmp_path / "weights") in err
    assert ("downloads are off" if offline else "huggingface.co cannot be reached (timed out)") in err


def _copy_of_tiny(tiny: Path, tmp_path: Path) -> Path:
    import shutil

    project = tmp_path / "copy"
    shutil.copytree(tiny / "classifiers", project / "classifiers")
    return project


def test_models_has_a_help_page_per_action(capsys):
    for action, flags in {"list": ["--project"], "show": ["--json", "--open"], "delete": ["--yes"],
                          "export": ["--file", "--overwrite"], "import": ["--file", "--overwrite", "NAME"],
                          "import-onnx": ["--classes", "--channels", "--tile-size"]}.items():
        with pytest.raises(SystemExit) as exit_:
            main(["models", action, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: dlpixel models {action} ") and all(f in out for f in flags), action
    with pytest.raises(SystemExit):
        main(["models", "--help"])
    out = capsys.readouterr().out
    assert "`dlpixel models ACTION --help`" in " ".join(out.split()) and "import-onnx" in out


def test_models_delete_asks_first_or_takes_yes(tiny, tmp_path, monkeypatch, capsys):
    project = _copy_of_tiny(tiny, tmp_path)
    folder = store.classifiers_dir(project) / "tiny"
    # No terminal to ask (a script, a pipe): one line naming --yes, nothing deleted.
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["models", "delete", "tiny", "--project", str(project)]) == 2
    assert capsys.readouterr().err.strip() == ("error: `dlpixel models delete` asks before deleting, and there is "
                                               "no terminal to ask: add --yes")
    assert folder.is_dir()
    # At a terminal: anything but yes keeps it.
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["n", "y"])
    asked = []
    monkeypatch.setattr("builtins.input", lambda question: asked.append(question) or next(answers))
    assert main(["models", "delete", "tiny", "--project", str(project)]) == 1
    assert folder.is_dir() and "nothing deleted" in capsys.readouterr().out
    assert asked == [f"delete classifier 'tiny' ({folder}) for good? [y/N] "]
    assert main(["models", "delete", "tiny", "--project", str(project)]) == 0
    assert not folder.exists()
    # --yes: no question.
    project = _copy_of_tiny(tiny, tmp_path / "again")
    monkeypatch.setattr("builtins.input", lambda question: pytest.fail("asked despite --yes"))
    assert main(["models", "delete", "tiny", "--project", str(project), "--yes"]) == 0
    assert not (store.classifiers_dir(project) / "tiny").exists()


def test_models_export_keeps_an_existing_file_unless_overwrite(tiny, tmp_path, capsys):
    out = tmp_path / "tiny.zip"
    assert main(["models", "export", "tiny", "--project", str(tiny), "--file", str(out)]) == 0
    first = out.read_bytes()
    out.write_bytes(b"someone else's file")
    assert main(["models", "export", "tiny", "--project", str(tiny), "--file", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{out} exists; add --overwrite to replace it, or choose "
                                                    "another --file")
    assert out.read_bytes() == b"someone else's file"
    assert main(["models", "export", "tiny", "--project", str(tiny), "--file", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:2] == b"PK" and len(out.read_bytes()) == len(first)
    # Renaming on import keeps both.
    assert main(["models", "import", "tiny_v2", "--project", str(tiny), "--file", str(out)]) == 0
    assert {"tiny", "tiny_v2"} <= {e.name for e in store.list_classifiers(tiny)}


def test_images_details_of_a_folder_project(tiny, tmp_path, capsys):
    """Before training: each image's size, channels and pixel size, and per class the annotations and the area of
    the area annotations (counted here from the GeoJSON itself)."""
    import json

    import shapely
    from shapely.geometry import shape

    assert main(["images", "--project", str(tiny)]) == 0
    assert capsys.readouterr().out.splitlines() == ["synthetic.tif"]
    assert main(["images", "--project", str(tiny), "--details"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "synthetic.tif: 192 × 192 px, 3 channel(s) (Red, Green, Blue), pixel size unknown (areas in px²)"
    feats = json.loads((tiny / "synthetic.tif.geojson").read_text())["features"]
    for name in CLASSES:
        mine = [shape(f["geometry"]) for f in feats if f["properties"]["classification"]["name"] == name]
        areas = [g for g in mine if isinstance(g, shapely.Polygon)]
        expected = (f"    {name}: {len(mine)} annotation(s) ({len(areas)} area(s), {len(mine) - len(areas)} "
                    f"line(s)/point(s)), {sum(g.area for g in areas):,.0f} px² in areas")
        assert expected in out, expected
    assert out[-1] == ("1 image(s); classes to train: " + ", ".join(
        f"{n} ({sum(f['properties']['classification']['name'] == n for f in feats)} annotation(s) in all)"
        for n in sorted(CLASSES)))
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "nothing.txt"):
        assert main(["images", "--project", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a QuPath project" in err


def test_init_weights_from_starts_the_model_from_another_classifier(tiny, monkeypatch, capsys):
    """--init-weights-from: the model starts from the classifier's trained weights (all of them with the same
    classes; all but the output layer with other classes); another backbone is refused before any tile is read."""
    import dlpixel.training.trainer as trainer
    import torch

    start = {}
    real = trainer.fit

    def record(model, *args, **kwargs):
        start.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "fit", record)
    source = torch.load(store.classifiers_dir(tiny) / "tiny" / store.WEIGHTS, weights_only=True)
    tuned = ["train", "--project", str(tiny), *FAST, "--set", "epochs=1", "--init-weights-from", "tiny"]
    assert main([*tuned, "--name", "tuned"]) == 0
    assert start.keys() == source.keys() and all(torch.equal(start[k], source[k]) for k in source)
    weights = store.load_classifier(tiny, "tuned").metadata.weights
    assert weights is not None and "classifier 'tiny'" in weights.source

    start.clear()
    assert main([*tuned, "--name", "reordered", "--set", "classes=Nucleus,Fibre,Background"]) == 0
    assert "its output layer starts afresh" in capsys.readouterr().err
    head = [k for k in source if k.startswith("segmentation_head.")]
    assert head and all(torch.equal(start[k], source[k]) for k in source if k not in head)
    assert not all(torch.equal(start[k], source[k]) for k in head)

    assert main([*tuned, "--name", "other", "--set", "backbone=resnet18", "--events", "jsonl"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == ("error: classifier 'tiny' is a U-Net on efficientnet-lite0, this one on resnet18: "
                                    "set backbone=efficientnet-lite0 (or add --from-model tiny to take all its "
                                    "settings)")


def test_demo_ends_with_what_to_do_next(tmp_path, capsys):
    import shlex

    out_dir = tmp_path / "demo here"
    assert main(["demo", "--out", str(out_dir), "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("\nnext:\n"):].splitlines()
    classifier = (out_dir / "project" / "classifiers" / "dl" / "ihc_demo").resolve()
    assert tail[2] == f"  training report: {classifier / store.REPORT}  (open it in a web browser)"
    command = tail[3].split("summary:", 1)[1].strip()
    assert command.startswith("dlpixel models show ihc_demo --project ")
    assert main(shlex.split(command)[1:]) == 0
    assert "validation mean IoU" in capsys.readouterr().out
    assert tail[4].endswith(f"drag {(out_dir / 'project' / 'ihc.tif').resolve()} into QuPath to open the image")
    dragged = [Path(line.split("drag ", 1)[1].split(" onto it")[0]) for line in tail[5:] if " onto it" in line]
    maps = [Path(line.split("class map ", 1)[1].split(" opens")[0]) for line in tail[5:] if "class map" in line]
    assert len(dragged) == len(maps) == 1 and dragged[0].is_file() and maps[0].is_file()
    assert dragged[0].name.endswith(".geojson") and maps[0].name.endswith(".ome.tif")


def _parsers(parser, path):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, [*path, name])


def test_every_flag_has_help_and_no_help_shows_none_or_double_back_quotes(capsys):
    """Every page of `dlpixel ... --help` and `train --help-settings`: each option and argument explained, in words
    a terminal shows (no Python `None`, no reStructuredText ``code`` marks)."""
    import argparse

    from dlpixel.cli.main import build_parser

    pages = 0
    for path, parser in _parsers(build_parser(), ["dlpixel"]):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (path, action.option_strings or action.dest)
        text = parser.format_help()
        assert "``" not in text and "None" not in text, (path, text)
        pages += 1
    assert pages > 15
    assert main(["train", "--help-settings"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text and "None" not in text and "tile_overlap = 0.0" in text


def test_a_cancelled_run_says_so_once(synthetic_project, monkeypatch, capsys):
    import importlib

    from dlpixel.runtime.events import CancelToken

    cli_main = importlib.import_module("dlpixel.cli.main")

    def cancelled() -> CancelToken:
        token = CancelToken()
        token.cancel()
        return token

    monkeypatch.setattr(cli_main, "cancel_on_sigint", cancelled)
    folder, _, _ = synthetic_project
    assert main(["train", "--project", str(folder), "--name", "c", *FAST, "--set", "pretrained=false"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "cancelled; nothing was written"


def test_training_says_where_the_classifier_went_once(tiny, capsys):
    assert main(["train", "--project", str(tiny), "--name", "once", *FAST[:-1], "--set", "epochs=1"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert text.count(str(store.classifiers_dir(tiny) / "once")) == 1, text


def test_too_few_tiles_advice_points_the_right_way(tmp_path, capsys):
    import json

    from conftest import COLORS

    img, _ = synthetic_image(128)
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[x, 10], [x + 8, 10], [x + 8, 18],
                                                                                   [x, 18], [x, 10]]]},
              "properties": {"objectType": "annotation", "classification": {"name": n, "color": COLORS[n]}}}
             for x, n in ((10, "Background"), (30, "Nucleus"))]
    folder = write_folder_project(tmp_path / "p", {"small.tif": (img, feats)})
    assert json.loads((folder / "small.tif.geojson").read_text())["features"]
    assert main(["train", "--project", str(folder), "--name", "few", *FAST, "--set", "pretrained=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: only 1 labelled tile(s) at tile_size 64") and err.endswith(
        "annotate more, or use a smaller tile_size or a larger tile_overlap")
