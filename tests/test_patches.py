"""Label rasterisation, tile sampling, the leak-free split and shared preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import shapely.affinity
from dlpixel.config import NormalizationConfig
from dlpixel.data.base import LabelShape
from dlpixel.data.patches import (
    UNLABELLED,
    TileRef,
    check_tile_fits,
    extract_patches,
    rasterize_labels,
    sample_tiles,
    split_tiles,
)
from dlpixel.data.preprocessing import (
    Preprocessing,
    image_stats,
    normalize,
    read_tile,
    resolve_channels,
    tile_footprint,
)
from dlpixel.errors import ConfigError


class ArraySource:
    """An in-memory ImageSource for tests."""

    def __init__(self, array: np.ndarray, name: str = "array"):
        self.array = array if array.ndim == 3 else array[..., None]
        self.name = name
        self.height, self.width = self.array.shape[:2]
        self.channel_names = [f"C{i}" for i in range(self.array.shape[2])]
        self.dtype = self.array.dtype
        self.pixel_size_um = None
        self.downsamples = (1.0,)

    @property
    def n_channels(self) -> int:
        return self.array.shape[2]

    def read_region(self, downsample, x, y, w, h):
        step = int(round(downsample))
        out = np.zeros((int(round(h / downsample)), int(round(w / downsample)), self.n_channels), self.dtype)
        for oy in range(out.shape[0]):
            sy = y + oy * step
            if not 0 <= sy < self.height:
                continue
            xs = x + np.arange(out.shape[1]) * step
            ok = (xs >= 0) & (xs < self.width)
            out[oy, ok] = self.array[sy, xs[ok]]
        return out


def area(cls, geom):
    return LabelShape(cls, geom, LabelShape.kind_of(geom))


def centres_inside(geom, rows, cols):
    yy, xx = np.mgrid[:rows, :cols]
    return shapely.contains_xy(geom, xx.ravel() + 0.5, yy.ravel() + 0.5).reshape(rows, cols)


def test_polygon_with_hole_matches_pixel_centres():
    outer = shapely.Polygon([(3.2, 2.7), (40.6, 5.1), (35.3, 38.8), (6.1, 30.4)],
                            holes=[[(15.3, 12.2), (25.7, 12.6), (25.4, 22.9), (15.2, 22.4)]])
    mask = rasterize_labels([area("A", outer)], {"A": 0}, 0, 0, 1.0, (48, 48))
    truth = centres_inside(outer, 48, 48)
    assert np.array_equal(mask == 0, truth)
    assert ((mask == 0) | (mask == UNLABELLED)).all()
    assert mask[17, 20] == UNLABELLED  # inside the hole
    multi = shapely.MultiPolygon([outer, shapely.box(41.2, 40.3, 47.9, 47.6)])
    shifted = rasterize_labels([area("A", multi)], {"A": 0}, -3.0, 2.5, 1.0, (50, 52))
    assert np.array_equal(shifted == 0, centres_inside(shapely.affinity.translate(multi, 3.0, -2.5), 50, 52))


def test_smaller_shape_wins_and_lines_have_their_width():
    big = shapely.box(0, 0, 40, 40)
    small = shapely.box(10, 10, 20, 20)
    line = shapely.LineString([(25.5, 5.5), (25.5, 35.5)])
    shapes = [area("Small", small), area("Big", big), area("Line", line)]
    mask = rasterize_labels(shapes, {"Big": 0, "Small": 1, "Line": 2}, 0, 0, 1.0, (48, 48), stroke_width=3)
    assert (mask[10:20, 10:20] == 1).all()
    assert mask[5, 5] == 0 and mask[30, 10] == 0
    assert (mask[10:30, 24:27] == 2).all() and mask[20, 22] == 0 and mask[20, 28] == 0
    assert (mask[40:, :] == UNLABELLED).all() and (mask[:, 40:] == UNLABELLED).all()
    unclassified = rasterize_labels([LabelShape(None, big, "area")], {"Big": 0}, 0, 0, 1.0, (8, 8))
    assert (unclassified == UNLABELLED).all()


def test_rasterising_at_a_downsample_and_offset():
    shape = shapely.box(100, 60, 140, 100)
    mask = rasterize_labels([area("A", shape)], {"A": 0}, 80, 40, 4.0, (16, 16))
    expected = np.full((16, 16), UNLABELLED)
    expected[5:15, 5:15] = 0
    assert np.array_equal(mask, expected)


def test_tiles_cover_labels_and_stay_inside_the_image():
    src = ArraySource(np.zeros((300, 250, 1), np.uint8))
    shapes = [area("A", shapely.box(10, 10, 20, 20)), area("B", shapely.box(200, 260, 240, 290))]
    tiles = sample_tiles(0, src, shapes, 64, 1.0, 0, 5)
    assert {(t.x, t.y) for t in tiles} == {(0, 0), (186, 236)}
    assert all(t.x + 64 <= 250 and t.y + 64 <= 300 for t in tiles)
    overlapping = sample_tiles(0, src, [area("A", shapely.box(60, 60, 70, 70))], 64, 1.0, 50, 5)
    assert {(t.x, t.y) for t in overlapping} == {(a, b) for a in (0, 32, 64) for b in (0, 32, 64)}


def _overlap(a, b):
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


@pytest.mark.parametrize("context_scale", [1, 2])
def test_block_split_shares_no_input_pixel(context_scale):
    rng = np.random.default_rng(0)
    tiles = [TileRef(0, x, y) for y in range(0, 1000, 48) for x in range(0, 1000, 48)]  # 25% overlap at 64 px
    counts = rng.integers(0, 50, (len(tiles), 3))
    split = split_tiles(tiles, counts, ["one"], 0.2, 64, 1.0, context_scale, seed=1)
    assert split.method == "by_blocks"
    assert split.train and split.val and not set(split.train) & set(split.val)
    val_fp = [tile_footprint(1.0, context_scale, tiles[i].x, tiles[i].y, 64) for i in split.val]
    for i in split.train:
        fp = tile_footprint(1.0, context_scale, tiles[i].x, tiles[i].y, 64)
        assert all(_overlap(fp, v) == 0 for v in val_fp)
    assert counts[split.val].sum(0).min() > 0  # every class reached validation
    share = counts[split.val].sum() / counts.sum()
    assert 0.1 < share < 0.45


def test_split_by_whole_image_when_every_class_is_on_both_sides():
    tiles = [TileRef(i % 4, 64 * i, 0) for i in range(20)]
    counts = np.ones((20, 2), int)
    split = split_tiles(tiles, counts, ["a", "b", "c", "d"], 0.25, 64, 1.0, 1, seed=0)
    assert split.method == "by_image" and split.val_images == ["a"]
    assert {tiles[i].image for i in split.val} == {0}
    # Class 1 exists only on image 0: keeping it on both sides needs blocks instead of whole images.
    counts2 = counts.copy()
    counts2[[i for i in range(20) if i % 4 != 0], 1] = 0
    assert split_tiles(tiles, counts2, ["a", "b", "c", "d"], 0.25, 64, 1.0, 1, seed=0).method == "by_blocks"


def test_training_tile_equals_inference_tile_after_metadata_round_trip():
    rng = np.random.default_rng(3)
    src = ArraySource(rng.integers(0, 4000, (200, 180, 3)).astype(np.uint16))
    for norm in (NormalizationConfig(), NormalizationConfig(strategy="z_score", per_channel=True),
                 NormalizationConfig(strategy="fixed_range", min=0, max=4095)):
        pre = Preprocessing(channels=[2, 0], channel_names=["C2", "C0"], normalization=norm, context_scale=2)
        stats = image_stats(src, pre)
        shapes = [area("A", shapely.box(20, 20, 60, 60)), area("B", shapely.box(100, 120, 140, 150))]
        cache = extract_patches([src], [shapes], [stats], pre, {"A": 0, "B": 1}, 32, 1.0, 0, 5)
        restored = Preprocessing.model_validate_json(pre.model_dump_json())
        for k, t in enumerate(cache.tiles):
            again = read_tile(src, restored, image_stats(src, restored), 1.0, t.x, t.y, 32)
            assert np.array_equal(cache.images[k], again.transpose(2, 0, 1))
        assert cache.images.shape[1] == 4


def test_normalisation_strategies():
    raw = np.arange(101, dtype=np.float32).reshape(101, 1, 1).repeat(2, axis=2)
    raw[..., 1] *= 10
    pre = Preprocessing(channels=[0, 1], channel_names=["a", "b"],
                        normalization=NormalizationConfig(strategy="min_max", per_channel=True))
    src = ArraySource(raw)
    out = normalize(raw, pre, image_stats(src, pre))
    assert np.allclose(out[0], 0) and np.allclose(out[-1], 1)
    joint = pre.model_copy(update={"normalization": NormalizationConfig(strategy="min_max", per_channel=False)})
    out = normalize(raw, joint, image_stats(src, joint))
    assert np.isclose(out[-1, 0, 0], 0.1) and np.isclose(out[-1, 0, 1], 1.0)
    pct = pre.model_copy(update={"normalization": NormalizationConfig(per_channel=True)})
    out = normalize(raw, pct, image_stats(src, pct))
    assert out.min() == 0 and out.max() == 1 and np.isclose(out[50, 0, 0], 49 / 98)


def test_channel_selection_errors_name_the_channel():
    names = ["DAPI", "CD3", "CD8"]
    assert resolve_channels(["CD8", 0], names) == [2, 0]
    assert resolve_channels(None, names) == [0, 1, 2]
    with pytest.raises(ConfigError, match="'FOXP3'.*DAPI"):
        resolve_channels(["FOXP3"], names, "slide.tif")
    with pytest.raises(ConfigError, match="index 5"):
        resolve_channels([5], names)


def test_tile_larger_than_every_image_is_refused():
    small = ArraySource(np.zeros((100, 150, 3), np.uint8), "small.tif")
    with pytest.raises(ConfigError, match="larger than every image.*96 px"):
        check_tile_fits([small], ["small.tif"], 128, 1.0)
    check_tile_fits([small], ["small.tif"], 96, 1.0)


def test_statistics_read_an_image_without_pyramid_in_strips():
    from dlpixel.data.preprocessing import STATS_STRIP_ROWS, sample_pixels

    src = ArraySource(np.zeros((3000, 2000, 2), np.uint16))
    heights = []
    real = src.read_region

    def spy(downsample, x, y, w, h):
        heights.append(h)
        return real(downsample, x, y, w, h)

    src.read_region = spy
    pixels = sample_pixels(src, [1])
    assert len(heights) > 1 and max(heights) <= STATS_STRIP_ROWS * 3000 / 1024 + 1
    assert sum(heights) == 3000 and pixels.shape[1] == 1
