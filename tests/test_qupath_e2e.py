"""A user's whole path through a QuPath project (a real QuPath, see tests/qupath_kit.py):
train from its annotations, apply back as objects, measurements and maps, rerun, and answer a Groovy request."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from conftest import COLORS, strokes_from_truth, synthetic_image
from dlpixel.cli.main import main
from dlpixel.data.base import LabelShape

sys.path.insert(0, str(Path(__file__).parent))
from qupath_kit import require_qupath, write_pyramid_tiff  # noqa: E402

SIZE = 128
FAST = ["method=unet",
        "tile_size=64", "epochs=1", "batch_size=4", "backbone=resnet18", "pretrained=false", "freeze=none",
        "num_workers=0", "mixed_precision=false", "line_stroke_width=3", "early_stop_patience=0", "device=cpu"]
APPLY = ["--tile-size", "64", "--overlap", "16", "--batch-size", "4", "--device", "cpu", "--backend", "torch"]


@pytest.fixture(scope="module")
def qupath_dir() -> Path:
    from dlpixel.qupath import jvm

    home = require_qupath()
    jvm.start_jvm(home)
    return home


def _shapes(features: list[dict]) -> list[LabelShape]:
    out = []
    for f in features:
        geom = shapely.geometry.shape(f["geometry"])
        cls = f["properties"]["classification"]
        out.append(LabelShape(cls["name"], geom, LabelShape.kind_of(geom), color=tuple(cls["color"])))
    return out


@pytest.fixture()
def project(tmp_path: Path, qupath_dir: Path) -> dict:
    """A project with an 8-bit RGB image (0.5 µm pixels) and a 16-bit 3-channel image of the same scene, each with
    classified polygons and polylines, one large unclassified polygon to measure in, and a point annotation."""
    from dlpixel.qupath.project import create_qupath_project

    rgb, truth = synthetic_image(SIZE, seed=3)
    rng = np.random.default_rng(4)
    levels = np.array([[800, 300, 5000], [9000, 1200, 700], [1500, 7000, 900]], np.float64)
    multi = np.clip(levels[truth] + rng.normal(0, 150, (SIZE, SIZE, 3)), 0, 65535).astype(np.uint16)
    images = tmp_path / "images"
    images.mkdir()
    files = {"rgb.tif": write_pyramid_tiff(images / "rgb.tif", [rgb], 0.5),
             "multi.tif": write_pyramid_tiff(images / "multi.tif", [multi], None)}
    labels = _shapes(strokes_from_truth(truth, per_class=6, seed=5))
    assert {s.kind for s in labels} == {"area", "line"}
    region = LabelShape(None, shapely.box(8.5, 10.25, 120.75, 100.5), "area")
    probe = LabelShape(None, shapely.Polygon([(70, 100), (125, 105), (100, 126)]), "area")
    qp = create_qupath_project(tmp_path / "project")
    for name, f in files.items():
        qp.add_image(f, name).add_annotations([*labels, region, probe,
                                               LabelShape("Nucleus", shapely.MultiPoint([(5, 5)]), "point",
                                                          color=tuple(COLORS["Nucleus"]))])
    return {"qpproj": tmp_path / "project" / "project.qpproj", "root": tmp_path / "project", "qupath": qupath_dir,
            "truth": truth}


def _open(qpproj: Path):
    from dlpixel.qupath.project import open_qupath_project

    return open_qupath_project(qpproj)


def _run(*argv: str) -> int:
    return main([*argv])


def _backups(image) -> list[Path]:
    return sorted(image.data_file.parent.glob("data.qpdata.*.bak"))


def _train(p: dict, name: str, image: str) -> None:
    args = ["train", "--project", str(p["qpproj"]), "--qupath", str(p["qupath"]), "--name", name, "--image", image,
            "--quiet"]
    for s in FAST:
        args += ["--set", s]
    assert _run(*args) == 0


def _apply(p: dict, classifier: str, image: str, output: str, *extra: str) -> int:
    return _run("apply", "--project", str(p["qpproj"]), "--qupath", str(p["qupath"]), "--classifier", classifier,
                "--image", image, "--output", output, *APPLY, "--quiet", *extra)


def test_train_apply_write_back_and_rerun(project, capsys):
    p = project
    mixed = ["train", "--project", str(p["qpproj"]), "--qupath", str(p["qupath"]), "--name", "both", "--quiet"]
    assert _run(*mixed, *[a for s in FAST for a in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'multi.tif' has channels" in err and "name the channels to train" in err
    assert not (p["root"] / "classifiers" / "dl" / "both").exists()

    # One classifier per kind of image, as a user with two channel sets would do.
    _train(p, "bright", "rgb.tif")
    _train(p, "fluo", "multi.tif")
    from dlpixel.classifiers import store

    assert [e.name for e in store.list_classifiers(p["root"])] and {e.name for e in store.list_classifiers(
        p["root"])} == {"bright", "fluo"}
    assert store.load_classifier(p["root"], "fluo").metadata.input_channels == ["Channel 1", "Channel 2", "Channel 3"]

    before = {im.name: im.data_file.read_bytes() for im in _open(p["qpproj"]).images()}
    for classifier, image in (("bright", "rgb.tif"), ("fluo", "multi.tif")):
        assert _apply(p, classifier, image, "objects") == 0
        assert _apply(p, classifier, image, "measurements") == 0
    capsys.readouterr()

    first = {}
    for classifier, image_name in (("bright", "rgb.tif"), ("fluo", "multi.tif")):
        image = _open(p["qpproj"]).image(image_name)
        assert image.data_file.read_bytes() != before[image_name]
        assert len(_backups(image)) == 2
        classes = set(store.load_classifier(p["root"], classifier).metadata.class_names)
        dets = image.detections()
        assert dets and {d.name for d in dets} == {f"dlpixel: {classifier}"}
        assert {d.class_name for d in dets} <= classes and all(d.kind == "area" for d in dets)
        areas = [a for a in image.annotations() if a.kind == "area"]
        for a in areas:
            names = [n for n in a.measurements if n.startswith(f"{classifier}: ")]
            assert {f"{classifier}: {c} area px^2" for c in classes} <= set(names), names
            counted = sum(a.measurements[f"{classifier}: {c} area px^2"] for c in classes)
            yy, xx = np.mgrid[:SIZE, :SIZE]
            inside = int(shapely.contains_xy(a.geometry, xx + 0.5, yy + 0.5).sum())
            on_edge = int(shapely.intersects_xy(a.geometry.boundary, xx + 0.5, yy + 0.5).sum())
            assert inside <= counted <= inside + on_edge, a.geometry.wkt
            if image_name == "rgb.tif":
                assert f"{classifier}: Nucleus area µm^2" in a.measurements
        non_area = [a for a in image.annotations() if a.kind != "area"]
        assert non_area and not any(n.startswith(f"{classifier}: ") for a in non_area for n in a.measurements)
        first[image_name] = (sorted(shapely.normalize(d.geometry).wkt for d in dets),
                             {a.id: a.measurements for a in image.annotations()})

    # A rerun replaces the classifier's results instead of adding to them.
    assert _apply(p, "bright", "rgb.tif", "objects") == 0
    assert _apply(p, "bright", "rgb.tif", "measurements") == 0
    image = _open(p["qpproj"]).image("rgb.tif")
    assert sorted(shapely.normalize(d.geometry).wkt for d in image.detections()) == first["rgb.tif"][0]
    assert {a.id: a.measurements for a in image.annotations()} == first["rgb.tif"][1]
    assert len(_backups(image)) == 4
    other = _open(p["qpproj"]).image("multi.tif")
    assert len(_backups(other)) == 2 and {d.name for d in other.detections()} == {"dlpixel: fluo"}

    # Maps go beside the project, one per image.
    assert _apply(p, "bright", "rgb.tif", "map", "--scope", "image") == 0
    assert _apply(p, "fluo", "multi.tif", "map", "--scope", "image") == 0
    for classifier, stem in (("bright", "rgb"), ("fluo", "multi")):
        path = p["root"] / "results" / classifier / f"{stem}.classes.ome.tif"
        with tifffile.TiffFile(path) as tif:
            classes_map = tif.series[0].levels[0].asarray()
        assert classes_map.shape[-2:] == (SIZE, SIZE)
        n = len(store.load_classifier(p["root"], classifier).metadata.classes)
        assert classes_map.max() < n


def test_request_apply_to_selected_annotations(project, tmp_path, capfd):
    p = project
    _train(p, "bright", "rgb.tif")
    image = _open(p["qpproj"]).image("rgb.tif")
    areas = [a for a in image.annotations() if a.kind == "area"]
    chosen = max(areas, key=lambda a: a.geometry.area)
    request = {"action": "apply", "project": str(p["qpproj"]), "qupath": str(p["qupath"]), "classifier": "bright",
               "images": ["rgb.tif"], "selected": [chosen.id],
               "settings": {"output": "measurements", "scope": "selected", "tile_size": 64, "overlap": 16,
                            "device": "cpu", "backend": "torch"}}
    file = tmp_path / "request.json"
    file.write_text(json.dumps(request))
    capfd.readouterr()
    assert main(["request", str(file), "--events", "jsonl"]) == 0
    # Standard output holds nothing but the event lines, though QuPath logs while it saves the image.
    lines = capfd.readouterr().out.strip().splitlines()
    events = [json.loads(line) for line in lines]
    assert {"stage", "tiles", "result"} <= {e["event"] for e in events}
    reply = events[-1]
    assert reply["ok"] is True and reply["result"]["written"] == [str(image.data_file)]
    measured = {a.id for a in _open(p["qpproj"]).image("rgb.tif").annotations()
                if any(n.startswith("bright: ") for n in a.measurements)}
    assert measured == {chosen.id}

    file.write_text(json.dumps({**request, "selected": []}))
    assert main(["request", str(file), "--quiet"]) == 2
    reply = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert reply["ok"] is False and "selected" in reply["error"]
