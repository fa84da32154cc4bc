"""``apply`` at downsamples 1, 1.4 and 3 with a fixed threshold model (ONNX): measurements equal the full-resolution
count of the map it writes, maps carry what QuPath needs to place and read them, the overlay and the CSV, objects
inside the image, the default smallest object, and imported classifiers' fixed normalisation."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import shapely
import tifffile
import torch
from dlpixel.classifiers.onnx_import import import_onnx
from dlpixel.config import InferenceConfig, NormalizationConfig
from dlpixel.data.geometry import Frame
from dlpixel.data.preprocessing import stats_for
from dlpixel.errors import ConfigError
from dlpixel.inference.outputs import ObjectBuilder, default_min_object_area
from dlpixel.inference.run import apply_classifier
from dlpixel.projects import open_project
from PIL import Image
from shapely.geometry import mapping

W, H = 301, 247
COLORS = {"Ignore*": (10, 20, 30), "Positive": (250, 40, 5)}


class Threshold(torch.nn.Module):
    """Class 1 where the first input channel exceeds 0.5, class 0 elsewhere."""

    def forward(self, x):
        d = 50.0 * (x[:, :1] - 0.5)
        return torch.cat([-d, d], dim=1)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "threshold.onnx"
    torch.onnx.export(Threshold(), torch.zeros(1, 3, 64, 64), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    return path


def make_project(tmp_path, onnx_file, downsample):
    yy, xx = np.mgrid[:H, :W]
    positive = ((xx - 150.2) ** 2 + (yy - 120.7) ** 2 < 70 ** 2) | ((xx + 2 * yy) % 90 < 17)
    img = np.zeros((H, W, 3), np.uint8)
    img[positive, 0] = 255
    img[..., 1] = 80
    folder = tmp_path / "project"
    folder.mkdir()
    tifffile.imwrite(folder / "slide.tif", img, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    shapes = {"holed": shapely.Polygon([(12.3, 9.8), (290.6, 30.2), (270.1, 238.4), (20.7, 200.9)],
                                       [[(100.2, 90.6), (180.9, 95.1), (140.4, 160.3)]]),
              "edge": shapely.box(200.3, 100.7, 400, 400)}
    feats = [{"type": "Feature", "id": i, "geometry": mapping(g), "properties": {"objectType": "annotation"}}
             for i, g in shapes.items()]
    (folder / "slide.tif.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    entry = import_onnx(folder, "threshold", onnx_file, list(COLORS), ["Red", "Green", "Blue"], 64, downsample,
                        normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
    meta = entry.metadata
    meta.classes = [c.model_copy(update={"color": COLORS[c.name]}) for c in meta.classes]
    meta.write(entry.path / "metadata.json")
    return folder, positive, shapes


@pytest.mark.parametrize("ds", [1.0, 1.4, 3.0])
def test_measured_areas_are_the_full_resolution_count_of_the_written_map(tmp_path, onnx_file, ds):
    folder, positive, shapes = make_project(tmp_path, onnx_file, ds)
    written = apply_classifier(open_project(folder), "threshold", InferenceConfig(output="map", scope="image",
                                                                                   overlap=16))
    tif = next(p for p in written if p.name.endswith(".classes.ome.tif"))
    cmap = tifffile.imread(tif).squeeze()
    frame = Frame(W, H, ds)
    assert cmap.shape == (frame.map_height, frame.map_width)
    written = apply_classifier(open_project(folder), "threshold", InferenceConfig(output="measurements",
                                                                                   overlap=16))
    rows = {r["id"]: r for r in csv.DictReader(open(next(p for p in written if p.suffix == ".csv")))}
    yy, xx = np.mgrid[:H, :W]
    full = cmap[np.floor((yy + 0.5) / ds).astype(int), np.floor((xx + 0.5) / ds).astype(int)]
    for name, geom in shapes.items():
        inside = shapely.contains_xy(geom, xx + 0.5, yy + 0.5)
        row = rows[name]
        assert row["image"] == "slide.tif"
        assert float(row["threshold: Positive area px^2"]) == int((full[inside] == 1).sum())
        assert float(row["threshold: Ignore* area px^2"]) == int((full[inside] == 0).sum())
        assert float(row["threshold: Total classified area px^2"]) == int(inside.sum())  # what was drawn
        if ds == 1.0:  # and at full resolution, the truth
            assert float(row["threshold: Positive area px^2"]) == int((positive & inside).sum())


def test_maps_carry_class_names_colours_and_pixel_size_and_the_overlay_shows_them(tmp_path, onnx_file):
    ds = 3.0
    folder, _, _ = make_project(tmp_path, onnx_file, ds)
    written = apply_classifier(open_project(folder), "threshold", InferenceConfig(output="overlay", scope="image"))
    tif = next(p for p in written if p.name.endswith(".classes.ome.tif"))
    with tifffile.TiffFile(tif) as t:
        ome = ET.fromstring(t.ome_metadata)
        cmap = t.asarray().squeeze()
    ns = {"o": ome.tag.split("}")[0].strip("{")}
    pixels = ome.find(".//o:Pixels", ns)
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.5 * ds)
    table = {m.get("K"): m.text for m in ome.findall(".//o:MapAnnotation/o:Value/o:M", ns)}
    assert table["class 0"] == "Ignore*" and table["class 1"] == "Positive"
    assert table["color 1"] == "#fa2805"
    png = next(p for p in written if p.name.endswith(".overlay.png"))
    info = json.loads(png.with_suffix(".json").read_text())
    rgba = np.asarray(Image.open(png))
    assert rgba.shape == (*cmap.shape, 4) and (rgba[..., 3] == 255).all()
    assert np.array_equal(rgba[cmap == 1, :3], np.tile(COLORS["Positive"], ((cmap == 1).sum(), 1)))
    assert info["region"] == {"x": 0, "y": 0, "width": cmap.shape[1] * ds, "height": cmap.shape[0] * ds}
    assert [c["name"] for c in info["classes"]] == list(COLORS)
    # Probabilities: one channel per class, named and coloured as the class.
    written = apply_classifier(open_project(folder), "threshold", InferenceConfig(output="probabilities",
                                                                                   scope="image"))
    with tifffile.TiffFile(next(p for p in written if p.name.endswith(".ome.tif"))) as t:
        channels = ET.fromstring(t.ome_metadata).findall(".//o:Channel", ns)
    assert [c.get("Name") for c in channels] == list(COLORS)
    assert int(channels[1].get("Color")) & 0xFFFFFFFF == 0xFA2805FF


@pytest.mark.parametrize("ds", [2.0, 3.0])
def test_objects_never_reach_past_the_image(tmp_path, onnx_file, ds):
    folder, _, _ = make_project(tmp_path, onnx_file, ds)
    written = apply_classifier(open_project(folder), "threshold", InferenceConfig(output="objects", scope="image"))
    data = json.loads(next(p for p in written if p.name.endswith(".objects.geojson")).read_text())
    geoms = [shapely.geometry.shape(f["geometry"]) for f in data["features"]]
    xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
    assert xmin >= 0 and ymin >= 0 and xmax <= W and ymax <= H
    assert xmax == W and ymax == H  # the positive band reaches the corner


def test_the_default_smallest_object_drops_specks_and_keeps_regions():
    rng = np.random.default_rng(0)
    cmap = np.zeros((200, 200), np.uint8)
    cmap[rng.random(cmap.shape) < 0.03] = 1  # about 1,200 specks of one pixel
    cmap[48:62, 48:62] = 0
    cmap[50:60, 50:60] = 1
    cmap[118:125, 18:25] = 0
    cmap[120:123, 20:23] = 1  # 3 × 3: kept
    for ds, px in ((1.0, None), (2.0, 0.5)):
        every = ObjectBuilder(["bg", "fg"], ds, 0.0, pixel_size_um=px)
        default = ObjectBuilder(["bg", "fg"], ds, default_min_object_area(ds, px), pixel_size_um=px)
        for b in (every, default):
            b.add_strip(0, cmap)
        specks = [o for o in every.result() if o.class_name == "fg"]
        kept = [o for o in default.result() if o.class_name == "fg"]
        assert len(specks) > 1000
        assert min(o.geometry.area for o in kept) >= 9 * ds ** 2
        assert len(kept) < 10 and any(o.geometry.area == 100 * ds ** 2 for o in kept)


def test_imported_classifiers_honour_fixed_statistics(tmp_path, onnx_file):
    folder, _, _ = make_project(tmp_path, onnx_file, 1.0)
    with pytest.raises(ConfigError, match="image_level"):
        import_onnx(folder, "stats", onnx_file, ["A", "B"], ["Red", "Green", "Blue"], 64,
                    normalization=NormalizationConfig(image_level=False))
    entry = import_onnx(folder, "fixed", onnx_file, ["A", "B"], ["Red", "Green", "Blue"], 64,
                        normalization=NormalizationConfig(strategy="fixed_range", min=10, max=110,
                                                          image_level=False))
    pre = entry.metadata.preprocessing
    assert pre.dataset_stats is not None
    src = open_project(folder).image("slide.tif").open()
    stats = stats_for(src, pre)
    assert stats.offset == [10.0] * 3 and stats.scale == [100.0] * 3
    no_stats = pre.model_copy(update={"dataset_stats": None,
                                      "normalization": NormalizationConfig(image_level=False)})
    with pytest.raises(ConfigError, match="holds none"):
        stats_for(src, no_stats)


def test_a_map_read_and_written_by_separate_processes_is_the_same_file(tmp_path, onnx_file, monkeypatch):
    import re

    from dlpixel.inference import map_process, read_process

    used = []
    for cls, method in ((read_process.RowReaders, "read"), (map_process.MapWriterProcess, "add_strip")):
        original = getattr(cls, method)
        monkeypatch.setattr(cls, method, lambda self, *a, _o=original, _c=cls: used.append(_c) or _o(self, *a))
    folder, _, _ = make_project(tmp_path, onnx_file, 1.4)
    contents = {}
    for where in ("same_process", "separate_process"):
        cfg = InferenceConfig(output="overlay", scope="image", map_writer=where,
                              row_readers="separate_processes" if where == "separate_process" else where)
        written = apply_classifier(open_project(folder), "threshold", cfg)
        contents[where] = {p.name: re.sub(rb"urn:uuid:[0-9a-f-]+", b"", p.read_bytes()) for p in written}
    assert len(contents["same_process"]) == 4 and contents["same_process"] == contents["separate_process"]
    assert set(used) == {read_process.RowReaders, map_process.MapWriterProcess}  # the children did the work
    assert not [p for p in (folder / "results").rglob(".*")]  # no temporaries left
