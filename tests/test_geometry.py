"""The geometry of a classifier applied to an image, with exact answers: the sub-pixel read of a tile, class maps that
do not depend on the tile layout, the map's size, areas at full resolution, strokes of the stated width and objects
inside the image. Downsamples 1.4 (= 7/5) and 3 keep full-resolution pixel centres off map-pixel borders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from dlpixel.classifiers.metadata import ClassifierMetadata, ClassInfo
from dlpixel.config import NormalizationConfig, TrainingConfig
from dlpixel.data.base import LabelShape
from dlpixel.data.geometry import Frame, map_length, rasterize, read_pixels
from dlpixel.data.images import FileImageSource, write_ome_tiff
from dlpixel.data.preprocessing import Preprocessing, read_tile, stats_for
from dlpixel.inference.outputs import AreaAccumulator, ObjectBuilder
from dlpixel.inference.predictor import Predictor

NAMES = ["A", "B", "C"]


def image(tmp_path: Path, h: int = 211, w: int = 237, seed: int = 0) -> tuple[FileImageSource, np.ndarray]:
    """A noisy 3-channel uint8 image with blocks (sizes that no downsample here divides)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    img[40:120, 30:150, 0] = 250
    path = tmp_path / f"img{seed}.tif"
    tifffile.imwrite(path, img, photometric="rgb")
    return FileImageSource(path), img


def box_truth(img: np.ndarray, ds_num: int, ds_den: int, rows: int, cols: int) -> np.ndarray:
    """The mean over each square [j·ds, (j+1)·ds) of ``img`` (ds = ds_num / ds_den), computed independently: repeat
    every pixel ds_den times, then average blocks of ds_num (only the part inside the image, as the read does)."""
    fine = np.repeat(np.repeat(img.astype(np.float64), ds_den, 0), ds_den, 1)
    inside = np.ones(fine.shape[:2])
    ph, pw = rows * ds_num - fine.shape[0], cols * ds_num - fine.shape[1]
    fine = np.pad(fine, ((0, max(ph, 0)), (0, max(pw, 0)), (0, 0)))[: rows * ds_num, : cols * ds_num]
    inside = np.pad(inside, ((0, max(ph, 0)), (0, max(pw, 0))))[: rows * ds_num, : cols * ds_num]
    s = fine.reshape(rows, ds_num, cols, ds_num, -1).sum((1, 3))
    n = inside.reshape(rows, ds_num, cols, ds_num).sum((1, 3))
    return s / n[..., None]


@pytest.mark.parametrize("num,den", [(1, 1), (7, 5), (3, 1)])
def test_the_read_is_the_mean_over_each_map_pixel(tmp_path, num, den):
    src, img = image(tmp_path)
    ds = num / den
    frame = Frame(src.width, src.height, ds)
    cols, rows = frame.map_size
    got = frame.read(src, 0, 0, cols, rows)
    assert np.allclose(got, box_truth(img, num, den, rows, cols), atol=1e-3)
    # Any tile of it is the same pixels, bit for bit, wherever it starts.
    for c, r in [(5, 3), (17, 29), (cols - 9, rows - 4)]:
        assert np.array_equal(frame.read(src, c, r, 9, 4), got[r: r + 4, c: c + 9])


def test_the_read_from_a_pyramid_level_is_the_mean_over_that_level(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (600, 520, 2)).astype(np.uint8)
    src = FileImageSource(write_ome_tiff(tmp_path / "p.ome.tif", img, tile=128, channel_names=["a", "b"]))
    assert src.downsamples[:2] == (1.0, 2.0)
    level = src.read_region(2.0, 0, 0, 520, 600)  # the stored level, as it is
    got = read_pixels(src, 0.0, 0.0, 3.0, 0, 0, map_length(520, 3.0), map_length(600, 3.0))
    # Downsample 3 on level 2 is 1.5 level pixels per map pixel.
    assert np.allclose(got, box_truth(level, 3, 2, *got.shape[:2]), atol=1e-3)


def pointwise(mix: np.ndarray):
    """A per-pixel model with a known answer: softmax of fixed channel mixes, summed in a fixed order."""

    def backend(batch):
        logits = np.stack([sum(mix[k, c] * batch[:, c] for c in range(batch.shape[1])) for k in range(len(mix))], 1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    backend.name, backend.device = "pointwise", "cpu"
    return backend


def meta_at(ds: float) -> ClassifierMetadata:
    pre = Preprocessing(channels=[0, 1, 2], channel_names=NAMES, normalization=NormalizationConfig())
    return ClassifierMetadata(
        name="pw", input_channels=NAMES, tile_size=64, downsample=ds,
        classes=[ClassInfo(index=i, name=n, color=(80 * i, 40, 200)) for i, n in enumerate(NAMES)],
        preprocessing=pre, training=TrainingConfig(), labelled_pixels={}, class_weights={})


def predicted(src, meta, backend, tile, overlap):
    pred = Predictor(backend, meta, tile, overlap, batch_size=3)
    strips = list(pred.strips(src, stats_for(src, meta.preprocessing)))
    assert all(s.computed.all() for s in strips)
    return np.concatenate([s.probabilities for s in strips])


@pytest.mark.parametrize("ds", [1.0, 1.4, 3.0])
def test_maps_of_a_pointwise_model_do_not_depend_on_the_tile_layout(tmp_path, ds):
    src, _ = image(tmp_path, 331, 301)
    meta = meta_at(ds)
    backend = pointwise(np.random.default_rng(5).normal(0, 3, (3, 3)).astype(np.float32))
    a = predicted(src, meta, backend, 64, 16)
    b = predicted(src, meta, backend, 96, 0)
    frame = Frame(src.width, src.height, ds)
    assert a.shape[:2] == b.shape[:2] == (frame.map_height, frame.map_width)
    # The one-pass answer: the model on the whole map read at once.
    cols, rows = frame.map_size
    whole = read_tile(src, meta.preprocessing, stats_for(src, meta.preprocessing), ds, 0, 0, max(cols, rows))
    truth = backend(whole.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)[:rows, :cols]
    assert np.array_equal(a.argmax(-1), b.argmax(-1))
    assert np.array_equal(a.argmax(-1), truth.argmax(-1))
    assert np.abs(a - b).max() <= 1e-6 and np.abs(a - truth).max() <= 1e-6


def test_the_map_covers_every_full_resolution_pixel(tmp_path):
    src, _ = image(tmp_path, 40, 1001)
    meta = meta_at(2.0)
    assert Predictor(pointwise(np.eye(3, dtype=np.float32)), meta, 64, 16).image_size(src) == (501, 20)
    probs = predicted(src, meta, pointwise(np.eye(3, dtype=np.float32)), 64, 16)
    assert probs.shape[:2] == (20, 501)
    assert map_length(1001, 1.4) == 715 and map_length(1002, 1.4) == 716  # 1001 / 1.4 = 715 exactly


def full_resolution_counts(cmap: np.ndarray, geom, ds: float, width: int, height: int, n: int) -> np.ndarray:
    """Independently: every full-resolution pixel whose centre shapely finds inside ``geom`` takes the class of the
    map pixel holding its centre."""
    yy, xx = np.mgrid[:height, :width]
    inside = shapely.contains_xy(geom, xx + 0.5, yy + 0.5)
    r = np.floor((yy + 0.5) / ds).astype(int)
    c = np.floor((xx + 0.5) / ds).astype(int)
    return np.bincount(cmap[r[inside], c[inside]], minlength=n)[:n]


@pytest.mark.parametrize("ds", [1.0, 1.4, 3.0])
def test_reported_areas_are_the_full_resolution_count_of_the_map(ds):
    width, height = 250, 190
    frame = Frame(width, height, ds)
    rng = np.random.default_rng(1)
    # The map of a truth drawn at full resolution: a disc and a band (the class of the pixel at each map centre).
    yy, xx = np.mgrid[:height, :width]
    truth = np.where((xx - 120.3) ** 2 + (yy - 90.7) ** 2 < 60 ** 2, 1, 0).astype(np.uint8)
    truth[(xx + yy) % 70 < 12] = 2
    mr, mc = np.mgrid[: frame.map_height, : frame.map_width]
    cmap = truth[np.minimum(((mr + 0.5) * ds).astype(int), height - 1),
                 np.minimum(((mc + 0.5) * ds).astype(int), width - 1)]
    cmap[rng.random(cmap.shape) < 0.02] = 2
    outer = shapely.Polygon([(10.2, 8.9), (230.6, 20.3), (244.1, 181.7), (30.4, 170.2)],
                            [[(80.3, 60.1), (150.8, 64.2), (120.5, 120.9)]])
    shapes = [LabelShape("Region", outer, "area", id="a"), LabelShape("Region", shapely.box(0, 150, 300, 260),
                                                                       "area", id="edge")]
    acc = AreaAccumulator(shapes, NAMES, ds, None, image_size=(width, height))
    for y in range(0, frame.map_height, 7):
        acc.add_strip(y, cmap[y: y + 7])
    result = acc.result()
    for shape in shapes:
        want = full_resolution_counts(cmap, shape.geometry, ds, width, height, 3)
        got = [result[shape.id][f"{n} area px^2"] for n in NAMES]
        assert got == want.tolist()
    # Everything drawn is counted once, whatever the downsample: the annotation's own full-resolution pixels.
    yy, xx = np.mgrid[:height, :width]
    drawn = shapely.contains_xy(outer, xx + 0.5, yy + 0.5)
    assert result["a"]["Total classified area px^2"] == drawn.sum()
    assert result["edge"]["Total classified area px^2"] == 40 * width  # rows 150..189, nothing past the edge
    if ds == 1.0:  # at full resolution the map is the truth
        assert [result["a"][f"{n} area px^2"] for n in NAMES] == np.bincount(
            cmap[drawn], minlength=3).tolist()


@pytest.mark.parametrize("ds", [1.0, 1.4, 3.0])
@pytest.mark.parametrize("width", [1.0, 3.0, 5.0])
def test_a_line_labels_exactly_the_pixels_within_half_its_width(ds, width):
    a, b = np.array([11.3, 17.9]), np.array([151.7, 83.1])
    line = LabelShape("L", shapely.LineString([a, b]), "line")
    mask = rasterize([line], {"L": 0}, 0.0, 0.0, ds, (70, 70), width)
    rows, cols = np.mgrid[:70, :70]
    p = np.stack([(cols + 0.5) * ds, (rows + 0.5) * ds], -1)
    d = b - a
    t = ((p - a) @ d) / (d @ d)
    dist = np.abs((p - a) @ np.array([-d[1], d[0]])) / np.hypot(*d)
    want = (t >= 0) & (t <= 1) & (dist < width * ds / 2)
    assert want.sum() > 20
    assert np.array_equal(mask == 0, want)


def test_a_horizontal_stroke_of_five_pixels_is_five_rows_and_stops_at_its_ends():
    line = LabelShape("L", shapely.LineString([(10.0, 20.2), (30.0, 20.2)]), "line")
    mask = rasterize([line], {"L": 1}, 0.0, 0.0, 1.0, (40, 40), 5.0)
    rows, cols = np.nonzero(mask == 1)
    assert sorted(set(rows)) == [18, 19, 20, 21, 22]
    assert cols.min() == 10 and cols.max() == 29


@pytest.mark.parametrize("ds", [2.0, 3.0])
def test_objects_stay_inside_the_image(ds):
    width, height = 101, 77  # the last map row and column reach past the image
    frame = Frame(width, height, ds)
    cmap = np.ones((frame.map_height, frame.map_width), np.uint8)
    builder = ObjectBuilder(["bg", "fg"], ds, image_size=(width, height))
    builder.add_strip(0, cmap)
    objects = builder.result()
    assert len(objects) == 1
    assert objects[0].geometry.bounds == (0.0, 0.0, width, height)
    assert math.isclose(objects[0].geometry.area, width * height)
