"""Outputs of ``apply`` from class maps whose right answer is known by construction: exact areas inside
non-rectangular annotations, polygons that match the drawn shapes, and a pyramidal OME-TIFF written in bounded
memory."""

from __future__ import annotations

import math
import tracemalloc
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from dlpixel.data.base import LabelShape
from dlpixel.data.geometry import polygon_mask
from dlpixel.data.images import FileImageSource
from dlpixel.inference import outputs_map
from dlpixel.inference.outputs import (
    AreaAccumulator,
    ClassMapWriter,
    ObjectBuilder,
    is_ignored_class,
    measurement_names,
)
from dlpixel.inference.outputs_map import reduce_mean, reduce_mode
from PIL import Image

CLASSES = ["Background", "Tumor", "Stroma", "Ignore*"]


def strips(array: np.ndarray, rows: int):
    for y in range(0, array.shape[0], rows):
        yield y, array[y : y + rows]


def area_shape(geom: shapely.Geometry, id_: str) -> LabelShape:
    return LabelShape("Region", geom, LabelShape.kind_of(geom), id=id_)


# ---------------------------------------------------------------------------------------------------- measurements
def measured_map(downsample: int) -> tuple[np.ndarray, list[LabelShape]]:
    """A 60 × 80 (map pixels) class map of bands and blocks of four classes, and annotations in full-resolution
    coordinates: a polygon with a hole, a triangle, a line and a point (the last two get no measurements)."""
    rng = np.random.default_rng(3)
    cmap = np.zeros((60, 80), np.uint8)
    cmap[:, 20:45] = 1
    cmap[10:50, 50:70] = 2
    cmap[44:58, 10:32] = 3
    cmap[rng.random(cmap.shape) < 0.05] = 2
    s = downsample
    with_hole = shapely.Polygon(
        [(3.3 * s, 4.7 * s), (60.3 * s, 2.2 * s), (75.6 * s, 40.3 * s), (30.2 * s, 55.7 * s), (2.7 * s, 35.1 * s)],
        [[(20.3 * s, 20.3 * s), (40.7 * s, 20.3 * s), (40.7 * s, 35.7 * s), (20.3 * s, 35.7 * s)]],
    )
    triangle = shapely.Polygon([(10.2 * s, 58.9 * s), (78.4 * s, 12.3 * s), (70.1 * s, 59.6 * s)])
    line = shapely.LineString([(0, 0), (30 * s, 30 * s)])
    point = shapely.Point(5 * s, 5 * s)
    shapes = [area_shape(with_hole, "hole"), area_shape(triangle, "tri"), area_shape(line, "line"),
              area_shape(point, "pt")]
    return cmap, shapes


def true_counts(cmap: np.ndarray, geom: shapely.Geometry, downsample: int) -> np.ndarray:
    """Class counts of the full-resolution pixels whose centres lie inside ``geom`` (shapely's point-in-polygon
    test), each with the class of the map pixel that holds its centre (the map repeated ``downsample`` times)."""
    full = np.repeat(np.repeat(cmap, downsample, 0), downsample, 1)
    rows, cols = np.mgrid[: full.shape[0], : full.shape[1]]
    inside = shapely.contains_xy(geom, cols + 0.5, rows + 0.5)
    return np.bincount(full[inside], minlength=len(CLASSES))


@pytest.mark.parametrize("downsample", [1, 2])
@pytest.mark.parametrize("rows", [60, 7])
def test_areas_equal_the_pixels_inside_each_shape(downsample: int, rows: int) -> None:
    cmap, shapes = measured_map(downsample)
    acc = AreaAccumulator(shapes, CLASSES, downsample, 0.25)
    for y0, strip in strips(cmap, rows):
        acc.add_strip(y0, strip)
    result = acc.result()
    assert set(result) == {"hole", "tri"}
    for shape in shapes[:2]:
        counts = true_counts(cmap, shape.geometry, downsample)
        assert counts.sum() > 500 and (counts > 0).all()
        values = result[shape.id]
        assert list(values) == measurement_names(CLASSES, calibrated=True)
        quantified = counts[:3].sum()
        for k, name in enumerate(CLASSES):
            assert values[f"{name} area px^2"] == counts[k]
            assert values[f"{name} area µm^2"] == pytest.approx(counts[k] * 0.0625)
            if k < 3:
                assert values[f"{name} %"] == pytest.approx(100 * counts[k] / quantified)
        assert "Ignore* %" not in values
        assert values["Total classified area px^2"] == counts.sum()
        assert values["Total quantified area px^2"] == quantified
        assert sum(values[f"{n} %"] for n in CLASSES[:3]) == pytest.approx(100)


def test_hole_is_excluded_and_bounding_box_is_not_used() -> None:
    cmap = np.ones((40, 40), np.uint8)
    ring = shapely.Polygon([(0, 0), (40, 0), (40, 40), (0, 40)], [[(10, 10), (30, 10), (30, 30), (10, 30)]])
    diamond = shapely.Polygon([(20, 0), (40, 20), (20, 40), (0, 20)])
    acc = AreaAccumulator([area_shape(ring, "ring"), area_shape(diamond, "diamond")], ["Other", "Tumor"], 1, None)
    acc.add_strip(0, cmap[:15])
    acc.add_strip(15, cmap[15:])
    result = acc.result()
    assert result["ring"]["Tumor area px^2"] == 40 * 40 - 20 * 20
    assert result["diamond"]["Tumor area px^2"] == 800
    assert result["ring"]["Tumor %"] == 100.0
    assert not any("µm" in name for name in result["ring"])


def test_prefix_unclassified_values_and_empty_annotations() -> None:
    cmap = np.full((10, 10), 255, np.uint8)
    cmap[:5] = 0
    box = shapely.box(0, 0, 10, 10)
    acc = AreaAccumulator([area_shape(box, "a")], ["Background", "Tumor"], 1.0, 0.5, classifier="net")
    acc.add_strip(0, cmap)
    values = acc.result()["a"]
    assert all(name.startswith("net: ") for name in values)
    assert values["net: Total classified area px^2"] == 50
    assert values["net: Background %"] == 100.0
    empty = AreaAccumulator([area_shape(box, "a")], ["Background", "Tumor"], 1.0, None)
    empty.add_strip(0, np.full((10, 10), 255, np.uint8))
    assert math.isnan(empty.result()["a"]["Tumor %"])
    assert is_ignored_class("Ignore*") and is_ignored_class("Artefact*") and not is_ignored_class("Tumor")


# ---------------------------------------------------------------------------------------------------- objects
OBJ_CLASSES = ["Background", "Rect", "Disk", "Ring", "Unused"]
SIZE = 360
RECT = (20, 30, 90, 110)  # x0, y0, x1, y1 in map pixels
DISK = ((250.0, 90.0), 50.0)
RING = ((130.0, 250.0), 80.0, 30.0)
SPECK = (300, 300, 302, 302)
HOLE = (50, 60, 53, 63)


def object_map() -> np.ndarray:
    """A 360 × 360 class map: a rectangle with a 3 × 3 hole, a disk, a ring and a 2 × 2 speck of the rectangle's
    class, on background."""
    rows, cols = np.mgrid[:SIZE, :SIZE] + 0.5
    cmap = np.zeros((SIZE, SIZE), np.uint8)
    x0, y0, x1, y1 = RECT
    cmap[y0:y1, x0:x1] = 1
    hx0, hy0, hx1, hy1 = HOLE
    cmap[hy0:hy1, hx0:hx1] = 0
    (cx, cy), r = DISK
    cmap[(cols - cx) ** 2 + (rows - cy) ** 2 <= r * r] = 2
    (cx, cy), ro, ri = RING
    d2 = (cols - cx) ** 2 + (rows - cy) ** 2
    cmap[(d2 <= ro * ro) & (d2 > ri * ri)] = 3
    sx0, sy0, sx1, sy1 = SPECK
    cmap[sy0:sy1, sx0:sx1] = 1
    return cmap


def pixel_union(mask: np.ndarray, scale: float = 1.0) -> shapely.Geometry:
    rows, cols = np.nonzero(mask)
    return shapely.union_all(shapely.box(cols * scale, rows * scale, (cols + 1) * scale, (rows + 1) * scale))


def build(cmap: np.ndarray, rows: int, **kwargs) -> list[LabelShape]:
    kwargs.setdefault("downsample", 1.0)
    builder = ObjectBuilder(OBJ_CLASSES, **kwargs)
    for y0, strip in strips(cmap, rows):
        builder.add_strip(y0, strip)
    return builder.result()


def by_class(objects: list[LabelShape]) -> dict[str, list[LabelShape]]:
    out: dict[str, list[LabelShape]] = {}
    for o in objects:
        out.setdefault(o.class_name or "", []).append(o)
    return out


def iou(a: shapely.Geometry, b: shapely.Geometry) -> float:
    return shapely.intersection(a, b).area / shapely.union(a, b).area


def test_objects_match_the_shapes_for_every_class() -> None:
    cmap = object_map()
    objects = build(cmap, rows=300)
    classes = by_class(objects)
    assert set(classes) == {"Background", "Rect", "Disk", "Ring"}
    for o in objects:
        assert o.kind == "area" and o.id is None and o.geometry.is_valid
        assert o.geometry.geom_type == "Polygon"
        assert o.measurements["Area px^2"] == o.geometry.area
    for k, name in enumerate(OBJ_CLASSES[:4]):
        got = shapely.union_all([o.geometry for o in classes[name]])
        assert got.area == (cmap == k).sum()
        assert np.array_equal(polygon_mask(got, 0, 0, 1.0, cmap.shape), cmap == k)
    rect = max(classes["Rect"], key=lambda o: o.geometry.area).geometry
    x0, y0, x1, y1 = RECT
    hx0, hy0, hx1, hy1 = HOLE
    hole = shapely.box(hx0, hy0, hx1, hy1).exterior
    assert rect.equals(shapely.Polygon(shapely.box(x0, y0, x1, y1).exterior, [hole]))
    assert len(classes["Rect"]) == 2 and min(o.geometry.area for o in classes["Rect"]) == 4
    (cx, cy), r = DISK
    assert iou(classes["Disk"][0].geometry, shapely.Point(cx, cy).buffer(r, quad_segs=64)) >= 0.99
    (cx, cy), ro, ri = RING
    ring = shapely.Point(cx, cy).buffer(ro, quad_segs=64).difference(shapely.Point(cx, cy).buffer(ri, quad_segs=64))
    (ring_obj,) = classes["Ring"]
    assert len(ring_obj.geometry.interiors) == 1 and iou(ring_obj.geometry, ring) >= 0.99
    background = max(classes["Background"], key=lambda o: o.geometry.area).geometry
    assert len(background.interiors) == 4


@pytest.mark.parametrize("rows", [1, 13, 64])
def test_strips_merge_seamlessly(rows: int) -> None:
    cmap = object_map()
    whole = build(cmap, rows=300)
    split = build(cmap, rows=rows)
    assert len(split) == len(whole)
    for name, objs in by_class(whole).items():
        other = by_class(split)[name]
        assert sorted(o.geometry.area for o in objs) == sorted(o.geometry.area for o in other)
        diff = shapely.symmetric_difference(
            shapely.union_all([o.geometry for o in objs]), shapely.union_all([o.geometry for o in other])
        )
        assert diff.area == 0


def test_downsample_scales_coordinates_and_calibrated_minimum_areas() -> None:
    cmap = object_map()
    objects = build(cmap, rows=50, downsample=2.0, pixel_size_um=0.5)
    rects = sorted(by_class(objects)["Rect"], key=lambda o: o.geometry.area)
    x0, y0, x1, y1 = RECT
    assert rects[-1].geometry.exterior.equals(shapely.box(2 * x0, 2 * y0, 2 * x1, 2 * y1).exterior)
    assert rects[0].measurements["Area px^2"] == 16 and rects[0].measurements["Area µm^2"] == 4
    # The speck is 2 × 2 map pixels = 16 full-resolution px² = 4 µm²; the rectangle's hole is 9 µm².
    kept = build(cmap, rows=50, downsample=2.0, pixel_size_um=0.5, min_object_area=4.0, min_hole_area=9.0)
    assert len(by_class(kept)["Rect"]) == 2 and len(by_class(kept)["Rect"][0].geometry.interiors) == 1
    dropped = build(cmap, rows=50, downsample=2.0, pixel_size_um=0.5, min_object_area=4.5, min_hole_area=9.5)
    (rect,) = by_class(dropped)["Rect"]
    assert len(rect.geometry.interiors) == 0
    assert rect.geometry.area == 4 * (x1 - x0) * (y1 - y0)
    (ring,) = by_class(dropped)["Ring"]
    assert len(ring.geometry.interiors) == 1


def test_minimum_areas_in_pixels_when_uncalibrated() -> None:
    cmap = object_map()
    objects = build(cmap, rows=40, min_object_area=5, min_hole_area=10)
    (rect,) = by_class(objects)["Rect"]
    assert len(rect.geometry.interiors) == 0
    assert "Area µm^2" not in rect.measurements


def test_objects_are_clipped_to_each_annotation() -> None:
    cmap = object_map()
    left = shapely.Polygon([(0, 0), (240.3, 0), (160.7, SIZE), (0, SIZE)])
    right = shapely.box(260, 0, SIZE, 150)
    clip = [area_shape(left, "L"), area_shape(right, "R"), area_shape(shapely.LineString([(0, 0), (9, 9)]), "x")]
    objects = build(cmap, rows=32, clip_to=clip, classifier="net")
    disk_parts = by_class(objects)["Disk"]
    assert len(disk_parts) == 2
    disk = pixel_union(cmap == 2)
    assert sum(o.geometry.area for o in disk_parts) == pytest.approx(
        disk.intersection(left).area + disk.intersection(right).area
    )
    for o in objects:
        assert o.id is None
        assert any(o.geometry.difference(a).area < 1e-6 for a in (left, right))
        assert set(o.measurements) == {"net: Area px^2"}
    inside_left = [o for o in objects if o.geometry.difference(left).area < 1e-6]
    assert shapely.union_all([o.geometry for o in inside_left]).area == pytest.approx(left.area)


def test_simplification_keeps_the_shape() -> None:
    cmap = object_map()
    exact = by_class(build(cmap, rows=300))["Disk"][0].geometry
    simple = by_class(build(cmap, rows=300, simplify=1.5))["Disk"][0].geometry
    assert len(simple.exterior.coords) < len(exact.exterior.coords) / 4
    assert iou(simple, exact) >= 0.98


# ---------------------------------------------------------------------------------------------------- map
def write_map(path: Path, array: np.ndarray, rows: int, **kwargs) -> Path:
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    with ClassMapWriter(path, width, height, channels, **kwargs) as writer:
        for y0, strip in strips(array, rows):
            writer.add_strip(y0, strip)
    return path


def ome_pixels(path: Path) -> ET.Element:
    with tifffile.TiffFile(path) as tif:
        root = ET.fromstring(tif.ome_metadata)
    return next(el for el in root.iter() if el.tag.endswith("}Pixels"))


def test_reduce_mode_takes_the_most_frequent_class_and_the_top_left_on_ties() -> None:
    """Every 2 x 2 block of four classes (256 of them) against a count by hand."""
    import itertools
    from collections import Counter

    blocks = list(itertools.product(range(4), repeat=4))  # (top-left, top-right, bottom-left, bottom-right)
    rows = np.zeros((2, 2 * len(blocks), 1), np.uint8)
    for i, (a, b, c, d) in enumerate(blocks):
        rows[:, 2 * i: 2 * i + 2, 0] = [[a, b], [c, d]]
    got = reduce_mode(rows)[0, :, 0]
    for i, block in enumerate(blocks):
        counts = Counter(block)
        top = max(counts.values())
        expected = next(v for v in block if counts[v] == top)  # the first in reading order among the most frequent
        assert got[i] == expected, (block, got[i])


@pytest.mark.parametrize("chunk", [None, 5000])
def test_class_map_round_trip_with_pyramid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int | None) -> None:
    """Reduced levels are the 2 × 2 mode of the level above, whether strips are halved whole or in column chunks
    by parallel threads (``chunk``: pixels per chunk)."""
    if chunk is not None:
        monkeypatch.setattr(outputs_map, "REDUCE_CHUNK_PIXELS", chunk)
    rng = np.random.default_rng(0)
    cmap = rng.integers(0, 3, (700, 1000), dtype=np.uint8)
    cmap[100:400, 200:700] = 1
    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    out = write_map(tmp_path / "map.ome.tif", cmap, 97, pixel_size_um=0.5, channel_names=["Classification"],
                    colors=colors, preview=tmp_path / "map.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.ome.tif", "map.png"]
    with tifffile.TiffFile(out) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        assert tif.pages.first.is_tiled and tif.pages.first.tilewidth == 256
    assert len(levels) >= 2
    assert np.array_equal(levels[0], cmap)
    expected = cmap[:, :, None]
    for level in levels[1:]:
        h, w = expected.shape[0] // 2, expected.shape[1] // 2
        expected = reduce_mode(expected[: 2 * h, : 2 * w])
        assert np.array_equal(level, expected[:, :, 0])
    pixels = ome_pixels(out)
    assert float(pixels.get("PhysicalSizeX")) == 0.5 and pixels.get("PhysicalSizeXUnit") == "µm"
    with FileImageSource(out) as source:
        assert source.pixel_size_um == 0.5 and source.channel_names == ["Classification"]
        assert np.array_equal(source.read_region(1.0, 0, 0, 1000, 700)[:, :, 0], cmap)
    preview = np.asarray(Image.open(tmp_path / "map.png"))
    assert preview.shape == (700, 1000, 3)
    assert np.array_equal(preview, np.asarray(colors, np.uint8)[cmap])


@pytest.mark.parametrize("chunk", [None, 3000])
def test_probability_map_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int | None) -> None:
    if chunk is not None:
        monkeypatch.setattr(outputs_map, "REDUCE_CHUNK_PIXELS", chunk)
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    names = ["Background", "Tumor", "Stroma"]
    out = write_map(tmp_path / "p.ome.tif", probs, 50, kind="probabilities", channel_names=names, tile=64,
                    preview=tmp_path / "p.png")
    with tifffile.TiffFile(out) as tif:
        levels = [np.moveaxis(level.asarray(), 0, -1) for level in tif.series[0].levels]
    assert len(levels) == 4 and np.array_equal(levels[0], probs)
    assert np.array_equal(levels[1], reduce_mean(probs))
    assert [c.get("Name") for c in ome_pixels(out) if c.tag.endswith("}Channel")] == names
    assert ome_pixels(out).get("PhysicalSizeX") is None
    assert np.asarray(Image.open(tmp_path / "p.png")).shape == (300, 200, 3)


def test_preview_is_at_most_2048_pixels(tmp_path: Path) -> None:
    cmap = np.zeros((64, 4200), np.uint8)
    cmap[:, 2100:] = 1
    write_map(tmp_path / "wide.ome.tif", cmap, 64, tile=1024, preview=tmp_path / "wide.png")
    preview = Image.open(tmp_path / "wide.png")
    assert max(preview.size) <= 2048 and max(preview.size) >= 1024


def test_map_errors_leave_nothing_behind(tmp_path: Path) -> None:
    cmap = np.zeros((100, 100), np.uint8)
    with pytest.raises(ValueError, match="only 50 of 100 rows"):
        with ClassMapWriter(tmp_path / "short.ome.tif", 100, 100, 1) as writer:
            writer.add_strip(0, cmap[:50])
    with pytest.raises(ValueError, match="expected row 0"):
        with ClassMapWriter(tmp_path / "order.ome.tif", 100, 100, 1) as writer:
            writer.add_strip(10, cmap[:10])
    writer = ClassMapWriter(tmp_path / "aborted.ome.tif", 100, 100, 1)
    writer.add_strip(0, cmap)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_map_memory_stays_far_below_the_image(tmp_path: Path) -> None:
    size, rows = 4000, 80
    col_pattern = (np.arange(size) // 70 % 4).astype(np.uint8)
    tracemalloc.start()
    try:
        with ClassMapWriter(tmp_path / "big.ome.tif", size, size, 1, pixel_size_um=1.0) as writer:
            for y0 in range(0, size, rows):
                row_pattern = (np.arange(y0, y0 + rows) // 50 % 4).astype(np.uint8)[:, None]
                writer.add_strip(y0, (row_pattern + col_pattern) % 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A quarter of the map, plus the row of tiles being compressed while the next one fills (at most a second row
    # buffer per level: 2 × 256 px × the width, summed over the levels), plus what each compressing thread holds at
    # once (a tile, its copy, its output).
    from dlpixel.inference.outputs_map import _compress_pool

    threads = _compress_pool()._max_workers
    bound = size * size / 4 + 2 * 256 * size + threads * 3 * 256 * 256
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB with {threads} threads"
    with tifffile.TiffFile(tmp_path / "big.ome.tif") as tif:
        level0 = tif.series[0].levels[0]
        assert len(tif.series[0].levels) == 5
        row_pattern = (np.arange(size) // 50 % 4).astype(np.uint8)[:, None]
        assert np.array_equal(level0.asarray(), (row_pattern + col_pattern) % 4)


def test_class_map_tiles_are_standard_zlib_streams_whichever_encoder() -> None:
    """Class-map tiles go through zlib-ng where imagecodecs has it, else zlib; both are TIFF compression 8 (any zlib
    decodes them), and an explicit level keeps zlib."""
    from dlpixel.inference.outputs_map import _deflate_encoder

    rng = np.random.default_rng(5)
    block = np.ascontiguousarray(rng.integers(0, 3, (256, 256), dtype=np.uint8))
    for kind, level in [("classes", None), ("classes", 4), ("probabilities", None)]:
        data = _deflate_encoder(kind, level)(block)
        assert np.array_equal(np.frombuffer(zlib.decompress(data), np.uint8).reshape(256, 256), block)
    assert _deflate_encoder("classes", 4)(block) == zlib.compress(block, 4)
    assert _deflate_encoder("probabilities", None)(block) == zlib.compress(block, 6)
