"""``apply`` with a classifier whose output is known by construction: exact areas, exact polygons, maps."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import shapely
import tifffile
import torch
from dlpixel.classifiers import store
from dlpixel.classifiers.onnx_import import import_onnx
from dlpixel.cli.main import main
from dlpixel.config import InferenceConfig, NormalizationConfig
from dlpixel.errors import ClassifierError, DataError, DlpixelError
from dlpixel.inference.run import apply_classifier
from dlpixel.projects import open_project
from shapely.geometry import mapping

SIZE = 300


class Threshold(torch.nn.Module):
    """Class 1 where the first input channel exceeds 0.5, class 0 elsewhere (logits ±50·(x − 0.5))."""

    def forward(self, x):
        d = 50.0 * (x[:, :1] - 0.5)
        return torch.cat([-d, d], dim=1)


def truth_shapes():
    disk = shapely.Point(150.3, 140.2).buffer(40.7, quad_segs=32)
    bar = shapely.box(20.4, 200.6, 260.2, 230.3)
    ring = shapely.Point(60.1, 60.3).buffer(30.2, quad_segs=32).difference(
        shapely.Point(60.1, 60.3).buffer(12.4, quad_segs=32))
    return [disk, bar, ring]


def centres(geom, shape=(SIZE, SIZE)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return shapely.contains_xy(geom, xx + 0.5, yy + 0.5)


@pytest.fixture
def threshold_project(tmp_path):
    positive = np.zeros((SIZE, SIZE), bool)
    for g in truth_shapes():
        positive |= centres(g)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[positive, 0] = 255
    img[..., 1] = 80
    folder = tmp_path / "project"
    folder.mkdir()
    tifffile.imwrite(folder / "slide.tif", img, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    triangle = shapely.Polygon([(10.2, 10.7), (280.4, 40.1), (120.8, 290.3)])
    holed = shapely.box(100.3, 100.1, 230.7, 250.2).difference(shapely.box(140.2, 150.6, 170.9, 170.4))
    feats = [{"type": "Feature", "id": i, "geometry": mapping(g),
              "properties": {"objectType": "annotation"}} for i, g in (("triangle", triangle), ("holed", holed))]
    (folder / "slide.tif.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    onnx_path = tmp_path / "threshold.onnx"
    torch.onnx.export(Threshold(), torch.zeros(1, 3, 64, 64), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    import_onnx(folder, "threshold", onnx_path, ["Ignore*", "Positive"], ["Red", "Green", "Blue"], 64,
                normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
    return folder, positive, {"triangle": triangle, "holed": holed}


def test_measurements_equal_the_truth_to_the_pixel(threshold_project):
    folder, positive, annotations = threshold_project
    written = apply_classifier(open_project(folder), "threshold", InferenceConfig(output="measurements", overlap=16))
    rows = {r["id"]: r for r in csv.DictReader(open(next(p for p in written if p.suffix == ".csv")))}
    for name, geom in annotations.items():
        inside = centres(geom)
        pos = int((inside & positive).sum())
        neg = int((inside & ~positive).sum())
        row = rows[name]
        assert float(row["threshold: Positive area px^2"]) == pos
        assert float(row["threshold: Ignore* area px^2"]) == neg
        assert float(row["threshold: Positive area µm^2"]) == pytest.approx(pos * 0.25)
        # Ignore* classes are left out of the percentage's denominator.
        assert float(row["threshold: Positive %"]) == pytest.approx(100.0)
        assert pos > 1000 and neg > 1000


def test_objects_match_the_true_shapes(threshold_project):
    folder, positive, _ = threshold_project
    written = apply_classifier(open_project(folder), "threshold",
                               InferenceConfig(output="objects", scope="image", overlap=16))
    data = json.loads(next(p for p in written if p.name.endswith(".objects.geojson")).read_text())
    by_class = {}
    for f in data["features"]:
        by_class.setdefault(f["properties"]["classification"]["name"], []).append(shapely.geometry.shape(f["geometry"]))
    assert set(by_class) == {"Ignore*", "Positive"}  # every class appears
    found = shapely.union_all(by_class["Positive"])
    truth = shapely.union_all([shapely.box(x, y, x + 1, y + 1) for y, x in np.argwhere(positive)])
    assert found.intersection(truth).area / found.union(truth).area >= 0.99
    assert found.symmetric_difference(truth).area < 1e-6  # exact pixel outlines


def test_map_and_probabilities(threshold_project):
    folder, positive, _ = threshold_project
    written = apply_classifier(open_project(folder), "threshold", InferenceConfig(output="map", scope="image"))
    tif = next(p for p in written if p.name.endswith(".ome.tif"))
    assert np.array_equal(tifffile.imread(tif).squeeze() == 1, positive)
    with tifffile.TiffFile(tif) as t:
        assert t.is_ome and "PhysicalSizeX=\"0.5\"" in t.ome_metadata
    assert any(p.suffix == ".png" for p in written)
    written = apply_classifier(open_project(folder), "threshold", InferenceConfig(output="probabilities",
                                                                                   scope="image"))
    probs = tifffile.imread(next(p for p in written if p.name.endswith(".ome.tif"))).squeeze()
    assert probs.shape[0] == 2 or probs.shape[-1] == 2


def test_bad_inputs(threshold_project, tmp_path, capsys):
    folder, _, _ = threshold_project
    assert main(["apply", "--project", str(folder), "--classifier", "nope"]) == 2
    assert "no classifier named 'nope'" in capsys.readouterr().err
    gray = tmp_path / "gray"
    gray.mkdir()
    tifffile.imwrite(gray / "g.tif", np.zeros((100, 100), np.uint8))
    (gray / "classifiers").symlink_to(folder / "classifiers")
    with pytest.raises(DataError, match="lacks the channels"):
        apply_classifier(open_project(gray), "threshold", InferenceConfig(scope="image", output="map"))
    far = tmp_path / "far"
    far.mkdir()
    tifffile.imwrite(far / "f.tif", np.zeros((100, 100, 3), np.uint8), photometric="rgb")
    (far / "f.tif.geojson").write_text(json.dumps([{"type": "Feature", "geometry": mapping(
        shapely.box(500, 500, 600, 600)), "properties": {"objectType": "annotation"}}]))
    (far / "classifiers").symlink_to(folder / "classifiers")
    with pytest.raises(DataError, match="outside"):
        apply_classifier(open_project(far), "threshold", InferenceConfig())
    bad = tmp_path / "bad.onnx"
    torch.onnx.export(Threshold(), torch.zeros(1, 3, 64, 64), str(bad), dynamo=False)
    with pytest.raises(ClassifierError, match="4 channel"):
        import_onnx(folder, "bad", bad, ["A", "B"], ["a", "b", "c", "d"], 64)
    with pytest.raises(ClassifierError, match="returns shape"):
        import_onnx(folder, "bad", bad, ["A", "B", "C"], ["a", "b", "c"], 64)
    assert not store.classifier_dir(folder, "bad").exists()


@pytest.mark.parametrize("output", ["map", "measurements"])
def test_unwritable_output_folder_is_one_line_error_before_computing(threshold_project, output):
    folder, _, _ = threshold_project
    (folder / "results").write_text("a file where the results folder would go")
    tiles = []
    with pytest.raises(DlpixelError) as err:
        cfg = InferenceConfig(output=output, scope="image" if output == "map" else "annotations")
        apply_classifier(open_project(folder), "threshold", cfg,
                         listeners=[lambda e: tiles.append(e) if e["event"] == "tiles" else None])
    message = str(err.value)
    assert "\n" not in message
    assert str(folder / "results" / "threshold") in message
    assert not tiles  # refused before any tile was computed


def test_pixel_size_far_from_training_warns_with_both_values(threshold_project, tmp_path):
    folder, _, _ = threshold_project
    onnx_path = store.classifier_dir(folder, "threshold") / store.ONNX
    import_onnx(folder, "coarse", onnx_path, ["Ignore*", "Positive"], ["Red", "Green", "Blue"], 64,
                normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255), pixel_size_um=2.0)
    events = []
    apply_classifier(open_project(folder), "coarse", InferenceConfig(output="map", scope="image"),
                     listeners=[events.append])
    warnings = [e["message"] for e in events if e["event"] == "log" and e.get("level") == "warning"]
    assert len(warnings) == 1
    assert "0.5 µm" in warnings[0] and "2 µm" in warnings[0]
    events.clear()
    apply_classifier(open_project(folder), "threshold", InferenceConfig(output="map", scope="image"),
                     listeners=[events.append])
    assert not [e for e in events if e["event"] == "log" and e.get("level") == "warning"]


def test_settings_that_cannot_give_a_result_are_refused(threshold_project, tmp_path, capsys):
    folder, _, _ = threshold_project
    base = ["apply", "--project", str(folder), "--classifier", "threshold"]
    for extra, message in ((["--output", "measurements", "--scope", "image"], "inside annotations"),
                           (["--scope", "selected"], "selected annotations")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err
    assert not (folder / "results" / "threshold" / "slide.measurements.csv").exists()
    assert main(["request", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the request file" in capsys.readouterr().err
    (tmp_path / "not.zip").write_text("plain text")
    assert main(["models", "import", "--project", str(folder), "--file", str(tmp_path / "not.zip")]) == 2
    assert "zip" in capsys.readouterr().err
    exported = tmp_path / "t.zip"
    assert main(["models", "export", "threshold", "--project", str(folder), "--file", str(exported)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    assert main(["models", "import", "--project", str(other), "--file", str(exported)]) == 0  # keeps its own name
    assert store.load_classifier(other, "threshold").metadata.architecture == "custom_onnx"
