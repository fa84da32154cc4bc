"""``dlpixel batch`` on a real QuPath project: workers read the image files, the driver alone writes into
data.qpdata, once per result; reruns replace and never duplicate."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from dlpixel.cli.main import main
from dlpixel.data.base import LabelShape

sys.path.insert(0, str(Path(__file__).parent))
from qupath_kit import require_qupath, write_pyramid_tiff

SIZE = 96
NAMES = ["a.tif", "b.tif"]
FAST = ["--tile-size", "64", "--overlap", "16", "--device", "cpu", "--backend", "onnx", "--workers", "1", "--quiet"]


class Threshold(torch.nn.Module):
    def forward(self, x):
        d = 50.0 * (x[:, :1] - 0.5)
        return torch.cat([-d, d], dim=1)


def _disk(i: int) -> shapely.Geometry:
    return shapely.Point(40.3 + 10 * i, 45.2).buffer(14.7 + 3 * i, quad_segs=16)


def _centres(geom: shapely.Geometry) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return shapely.contains_xy(geom, xx + 0.5, yy + 0.5)


REGION = shapely.box(6.5, 7.25, 90.5, 88.75)


@pytest.fixture()
def qupath_project(tmp_path: Path) -> dict:
    from dlpixel.classifiers.onnx_import import import_onnx
    from dlpixel.config import NormalizationConfig
    from dlpixel.qupath import jvm
    from dlpixel.qupath.project import create_qupath_project

    home = require_qupath()
    jvm.start_jvm(home)
    images = tmp_path / "images"
    images.mkdir()
    qp = create_qupath_project(tmp_path / "project")
    for i, name in enumerate(NAMES):
        img = np.zeros((SIZE, SIZE, 3), np.uint8)
        img[_centres(_disk(i)), 0] = 255
        img[..., 1] = 60
        qp.add_image(write_pyramid_tiff(images / name, [img], 0.5), name).add_annotations(
            [LabelShape(None, REGION, "area", name="region")])
    onnx_path = tmp_path / "threshold.onnx"
    torch.onnx.export(Threshold(), torch.zeros(1, 3, 64, 64), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    import_onnx(tmp_path / "project", "threshold", onnx_path, ["Other", "Positive"], ["Red", "Green", "Blue"], 64,
                normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
    return {"qpproj": tmp_path / "project" / "project.qpproj", "home": home}


def _batch(p: dict, *extra: str) -> int:
    return main(["batch", "--project", str(p["qpproj"]), "--qupath", str(p["home"]), "--classifier", "threshold",
                 *FAST, *extra])


def _images(p: dict) -> dict:
    from dlpixel.qupath.project import open_qupath_project

    return {im.name: im for im in open_qupath_project(p["qpproj"]).images()}


def test_results_are_merged_into_qupath_once(qupath_project, capsys):
    p = qupath_project
    assert _batch(p) == 0
    for i, image in enumerate(_images(p).values()):
        (region,) = image.annotations()
        truth = int((_centres(_disk(i)) & _centres(REGION)).sum())
        assert region.measurements["threshold: Positive area px^2"] == truth
        assert len(list(image.data_file.parent.glob("data.qpdata.*.bak"))) == 1
    capsys.readouterr()
    assert _batch(p) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert all(len(list(im.data_file.parent.glob("data.qpdata.*.bak"))) == 1 for im in _images(p).values())

    # Objects: a rerun with other settings replaces them, never adds a second set.
    assert _batch(p, "--output", "objects", "--scope", "image") == 0
    first = {n: len(im.detections()) for n, im in _images(p).items()}
    assert all(n > 0 for n in first.values())
    assert _batch(p, "--output", "objects", "--scope", "image", "--overlap", "32") == 0
    assert {n: len(im.detections()) for n, im in _images(p).items()} == first
    for i, image in enumerate(_images(p).values()):
        found = shapely.union_all([d.geometry for d in image.detections() if d.class_name == "Positive"])
        truth = shapely.union_all([shapely.box(x, y, x + 1, y + 1) for y, x in np.argwhere(_centres(_disk(i)))])
        assert found.symmetric_difference(truth).area < 1e-6
        (region,) = image.annotations()  # the measurements of the first run are still there
        assert "threshold: Positive area px^2" in region.measurements
