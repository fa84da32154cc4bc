"""z-stacks and time series: annotations train against the pixels of their own plane, apply measures each plane's
annotations on that plane's pixels, objects go back to their plane, and what cannot be done per plane is a one-line
error naming the image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
import tifffile
import torch
from dlpixel.classifiers.onnx_import import import_onnx
from dlpixel.config import InferenceConfig, NormalizationConfig, TrainingConfig
from dlpixel.data.base import LabelShape, at_plane
from dlpixel.data.geojson import read_geojson, write_geojson
from dlpixel.data.images import FileImageSource
from dlpixel.data.patches import UNLABELLED, extract_patches
from dlpixel.data.preprocessing import Preprocessing, fixed_stats
from dlpixel.errors import DataError
from dlpixel.inference.run import apply_classifier
from dlpixel.projects import open_project
from dlpixel.training.run import gather_training_data
from shapely.geometry import mapping

S = 64
NAMES = ["c0", "c1", "c2"]


def zstack() -> np.ndarray:
    """(Z=3, C=3, S, S) uint8: channel 0 is bright left of x = 32 on z = 0, above y = 32 on z = 2, nowhere on z = 1."""
    yy, xx = np.mgrid[:S, :S]
    stack = np.full((3, 3, S, S), 40, np.uint8)
    stack[0, 0][xx < 32] = 230
    stack[2, 0][yy < 32] = 230
    stack[:, 1] = np.arange(3)[:, None, None] * 50  # which plane, readable from the pixels
    return stack


def feature(geom, cls=None, plane=None, id_=None):
    g = dict(mapping(geom))
    if plane is not None:
        g["plane"] = {"c": -1, "z": plane[0], "t": plane[1]}
    props = {"objectType": "annotation"}
    if cls:
        props["classification"] = {"name": cls}
    return {"type": "Feature", "id": id_, "geometry": g, "properties": props}


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    tifffile.imwrite(folder / "stack.ome.tif", zstack(), ome=True,
                     metadata={"axes": "ZCYX", "Channel": {"Name": NAMES}})
    left, right = shapely.box(2.2, 2.3, 29.8, 61.7), shapely.box(34.2, 2.3, 61.8, 61.7)
    top, bottom = shapely.box(2.2, 2.3, 61.8, 29.7), shapely.box(2.2, 34.3, 61.8, 61.7)
    feats = [feature(left, "Bright", None, "l0"), feature(right, "Dark", None, "r0"),
             feature(top, "Bright", (2, 0), "t2"), feature(bottom, "Dark", (2, 0), "b2")]
    (folder / "stack.ome.tif.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return folder


def test_a_plane_view_reads_its_plane(project):
    src = FileImageSource(project / "stack.ome.tif")
    assert (src.n_z, src.n_t) == (3, 1)
    for z in range(3):
        view = at_plane(src, (z, 0))
        assert np.array_equal(view.read_region(1.0, 0, 0, S, S), zstack()[z].transpose(1, 2, 0))
    with pytest.raises(DataError, match="'stack.ome.tif' has 3 z-slice"):
        at_plane(src, (3, 0), "stack.ome.tif")
    src.close()


def test_geojson_keeps_the_plane_as_qupath_writes_it(tmp_path):
    shapes = [LabelShape("A", shapely.box(1, 2, 3, 4), "area", id="a", plane=(5, 2)),
              LabelShape("B", shapely.box(1, 2, 3, 4), "area", id="b")]
    path = write_geojson(tmp_path / "x.geojson", shapes)
    raw = json.loads(path.read_text())["features"]
    assert raw[0]["geometry"]["plane"] == {"c": -1, "z": 5, "t": 2} and "plane" not in raw[1]["geometry"]
    assert [s.plane for s in read_geojson(path)] == [(5, 2), (0, 0)]


def test_annotations_train_against_their_own_plane(project):
    data = gather_training_data(open_project(project), None, TrainingConfig(tile_size=32, classes=["Bright", "Dark"]))
    try:
        assert [getattr(s, "plane", None) for s in data.sources] == [(0, 0), (2, 0)]
        assert [sorted(x.id for x in shapes) for shapes in data.shapes] == [["l0", "r0"], ["b2", "t2"]]
        pre = Preprocessing(channels=[0, 1, 2], channel_names=NAMES,
                            normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
        stats = [fixed_stats(pre.normalization, 3)] * 2
        cache = extract_patches(data.sources, data.shapes, stats, pre, {"Bright": 0, "Dark": 1}, 32, 1.0, 0, 3.0)
        assert len(cache) == 8
        for i, tile in enumerate(cache.tiles):
            raw, mask = cache.raw[i], cache.masks[i]
            plane = data.sources[tile.image].plane[0]
            assert (raw[1] == 50 * plane).all()  # the pixels come from the annotations' plane
            assert (raw[0][mask == 0] == 230).all() and (raw[0][mask == 1] == 40).all()
            assert (mask != UNLABELLED).any()
    finally:
        for s in data.sources:
            s.close()


class Threshold(torch.nn.Module):
    def forward(self, x):
        d = 50.0 * (x[:, :1] - 0.5)
        return torch.cat([-d, d], dim=1)


def test_apply_measures_each_plane_on_its_pixels_and_writes_objects_to_it(project, tmp_path):
    onnx_path = tmp_path / "t.onnx"
    torch.onnx.export(Threshold(), torch.zeros(1, 3, 32, 32), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    import_onnx(project, "t", onnx_path, ["Dark", "Bright"], NAMES, 32,
                normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
    written = apply_classifier(open_project(project), "t", InferenceConfig(output="measurements", overlap=8))
    rows = {f["id"]: f["properties"]["measurements"] for f in json.loads(next(
        p for p in written if p.name.endswith(".annotations.geojson")).read_text())["features"]}
    yy, xx = np.mgrid[:S, :S]
    stack = zstack()
    for id_, geom, z in (("l0", shapely.box(2.2, 2.3, 29.8, 61.7), 0), ("r0", shapely.box(34.2, 2.3, 61.8, 61.7), 0),
                         ("t2", shapely.box(2.2, 2.3, 61.8, 29.7), 2), ("b2", shapely.box(2.2, 34.3, 61.8, 61.7), 2)):
        inside = shapely.contains_xy(geom, xx + 0.5, yy + 0.5)
        bright = int((inside & (stack[z, 0] > 128)).sum())
        assert rows[id_]["t: Bright area px^2"] == bright
        assert rows[id_]["t: Dark area px^2"] == int(inside.sum()) - bright
    written = apply_classifier(open_project(project), "t", InferenceConfig(output="objects", overlap=8))
    feats = json.loads(next(p for p in written if p.name.endswith(".objects.geojson")).read_text())["features"]
    planes = {(f["geometry"].get("plane") or {}).get("z", 0) for f in feats}
    assert planes == {0, 2}
    bright_z2 = [shapely.geometry.shape(f["geometry"]) for f in feats
                 if f["properties"]["classification"]["name"] == "Bright" and f["geometry"].get("plane")]
    assert shapely.union_all(bright_z2).bounds[3] <= 30  # z = 2 is bright above y = 32 only


def test_what_cannot_be_done_per_plane_names_the_image(project, tmp_path):
    onnx_path = tmp_path / "t.onnx"
    torch.onnx.export(Threshold(), torch.zeros(1, 3, 32, 32), str(onnx_path), dynamo=False)
    import_onnx(project, "t", onnx_path, ["Dark", "Bright"], NAMES, 32,
                normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
    with pytest.raises(DataError, match="image 'stack.ome.tif' has 3 z-slices") as err:
        apply_classifier(open_project(project), "t", InferenceConfig(output="map", scope="image"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="annotations on 2 planes"):
        apply_classifier(open_project(project), "t", InferenceConfig(output="map", scope="annotations"))
    # A plane the image lacks.
    flat = tmp_path / "flat"
    flat.mkdir()
    tifffile.imwrite(flat / "f.tif", np.zeros((S, S, 3), np.uint8), photometric="rgb")
    (flat / "f.tif.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        feature(shapely.box(1, 1, 20, 20), "Bright", (1, 0), "x"), feature(shapely.box(30, 30, 50, 50), "Dark")]}))
    with pytest.raises(DataError, match="image 'f.tif' has 1 z-slice"):
        gather_training_data(open_project(flat), None, TrainingConfig(tile_size=32))
