"""Folder-project backend: image files read by region, QuPath GeoJSON, folder projects and their result files."""

from __future__ import annotations

import csv
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import tifffile.zarr
import zarr
from dlpixel.data import ImageSource, LabelShape, Project, ProjectImage
from dlpixel.data.folder import (
    FileImageSource,
    FolderProject,
    open_folder_project,
    read_geojson,
    write_geojson,
    write_ome_tiff,
)
from dlpixel.errors import ConfigError, DataError
from PIL import Image
from shapely.geometry import LineString, MultiPoint, Polygon, box


def mean_blocks(a: np.ndarray, f: int) -> np.ndarray:
    h, w, c = a.shape
    return a.reshape(h // f, f, w // f, f, c).mean(axis=(1, 3))


def ramp(h: int, w: int, c: int, dtype: type = np.uint16) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx + 2 * yy + 1000 * k for k in range(c)], axis=-1).astype(dtype)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    truth = ramp(512, 768, 3)
    path = tmp_path_factory.mktemp("pyr") / "slide.ome.tif"
    write_ome_tiff(path, truth, pixel_size_um=0.25, channel_names=["DAPI", "CD3", "CD8"], tile=256)
    return path, truth


# ---------------------------------------------------------------------------------------------------- images


def test_pyramid_metadata(pyramid: tuple[Path, np.ndarray]) -> None:
    path, _ = pyramid
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and [lv.shape for lv in tif.series[0].levels] == [(3, 512, 768), (3, 256, 384), (3, 128, 192)]
    with FileImageSource(path) as src:
        assert isinstance(src, ImageSource)
        assert (src.width, src.height, src.n_channels) == (768, 512, 3)
        assert src.downsamples == (1.0, 2.0, 4.0)
        assert src.channel_names == ["DAPI", "CD3", "CD8"]
        assert src.dtype == np.uint16
        assert src.pixel_size_um == pytest.approx(0.25)
        assert src.name == "slide.ome.tif"


def test_pyramid_levels_exact(pyramid: tuple[Path, np.ndarray]) -> None:
    path, truth = pyramid
    with FileImageSource(path) as src:
        np.testing.assert_array_equal(src.read_region(1, 0, 0, 768, 512), truth)
        for f in (2, 4):
            out = src.read_region(f, 0, 0, 768, 512)
            assert out.dtype == np.uint16 and out.shape == (512 // f, 768 // f, 3)
            np.testing.assert_array_equal(out, np.rint(mean_blocks(truth, f)))
        offset = src.read_region(2, 100, 60, 200, 120)
        np.testing.assert_array_equal(offset, np.rint(mean_blocks(truth, 2))[30:90, 50:150])
        np.testing.assert_array_equal(src.read_region(1, 37, 11, 5, 3), truth[11:14, 37:42])


def test_between_levels_is_block_mean(pyramid: tuple[Path, np.ndarray]) -> None:
    path, truth = pyramid
    with FileImageSource(path) as src:
        out = src.read_region(3, 0, 0, 768, 510)
        assert out.shape == (170, 256, 3)
        assert np.abs(out.astype(float) - mean_blocks(truth[:510], 3)).max() <= 1.0
        odd = src.read_region(2.5, 10, 20, 101, 99)
        assert odd.shape == (40, 40, 3)


def test_only_the_region_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 255, (1024, 1024, 1), dtype=np.uint8)
    path = write_ome_tiff(tmp_path / "big.ome.tif", truth, tile=128, pyramid=False, compression=None)
    reads: list[int] = []
    original = os.pread

    def counting_read(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return original(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting_read)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("whole page decoded"))
    with FileImageSource(path) as src:
        out = src.read_region(1, 1000, 1000, 50, 40)
    np.testing.assert_array_equal(out[:24, :24], truth[1000:, 1000:])
    assert not out[24:].any() and not out[:, 24:].any()
    assert len(reads) == 1 and sum(reads) == 128 * 128


@pytest.mark.parametrize("layout", ["strips-uint16", "tiles-rgb", "tiles-big-endian-float", "planes-ome", "jpeg"])
def test_segment_reads_equal_zarr_reads(tmp_path: Path, layout: str) -> None:
    """Regions decoded segment by segment equal tifffile's zarr view of the same level, pixel for pixel, at every
    pyramid level and edge; layouts that need zarr (separate planes, subsampled JPEG) still read through it."""
    from dlpixel.data.images import _SegmentLevel, _ZarrLevel

    if layout == "jpeg":
        pytest.importorskip("imagecodecs", reason="tifffile decodes JPEG tiles with imagecodecs")
    rng = np.random.default_rng(1)
    path = tmp_path / f"{layout}.tif"
    if layout == "strips-uint16":
        tifffile.imwrite(path, rng.integers(0, 65535, (300, 410), dtype=np.uint16), rowsperstrip=37,
                         compression="zlib")
    elif layout == "tiles-rgb":
        path = write_ome_tiff(tmp_path / "rgb.ome.tif", rng.integers(0, 255, (700, 900, 3), dtype=np.uint8), tile=128)
    elif layout == "tiles-big-endian-float":
        tifffile.imwrite(path, rng.random((200, 330, 2)).astype(">f4"), tile=(64, 64), planarconfig="contig",
                         byteorder=">")
    elif layout == "planes-ome":
        tifffile.imwrite(path, rng.integers(0, 255, (3, 200, 330), dtype=np.uint8), tile=(64, 64), ome=True)
    else:
        tifffile.imwrite(path, rng.integers(0, 255, (200, 330, 3), dtype=np.uint8), tile=(64, 64),
                         compression="jpeg", photometric="rgb")
    fast = layout not in ("planes-ome", "jpeg")
    with FileImageSource(path) as src, tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert all(isinstance(lv, _SegmentLevel) == fast for lv in src._levels)
        assert len(src._levels) == len(series.levels) >= (3 if layout == "tiles-rgb" else 1)
        for i, level in enumerate(src._levels):
            reference = _ZarrLevel(zarr.open_array(series.aszarr(level=i), mode="r"), series.levels[i].axes, path)
            boxes = [(0, level.height, 0, level.width)]
            for _ in range(12):
                y0, y1 = sorted(rng.choice(level.height + 1, 2, replace=False))
                x0, x1 = sorted(rng.choice(level.width + 1, 2, replace=False))
                boxes.append((y0, y1, x0, x1))
            for y0, y1, x0, x1 in boxes:
                got, want = level.read(y0, y1, x0, x1), reference.read(y0, y1, x0, x1)
                assert got.dtype == want.dtype.newbyteorder("=")
                np.testing.assert_array_equal(got, want)
    if fast:  # a closed file's descriptor is never read again (the number may name another file by then)
        with pytest.raises(DataError, match="was closed"):
            src._levels[0].read(0, 1, 0, 1)


def test_threaded_and_pickled_reads(pyramid: tuple[Path, np.ndarray]) -> None:
    path, truth = pyramid
    boxes = [(x, y) for x in range(0, 768, 96) for y in range(0, 512, 128)]
    with FileImageSource(path) as src, ThreadPoolExecutor(4) as pool:
        tiles = list(pool.map(lambda xy: src.read_region(1, xy[0], xy[1], 96, 128), boxes))
        copy = pickle.loads(pickle.dumps(src))
    for (x, y), tile in zip(boxes, tiles, strict=True):
        np.testing.assert_array_equal(tile, truth[y : y + 128, x : x + 96])
    np.testing.assert_array_equal(copy.read_region(2, 8, 8, 64, 64), np.rint(mean_blocks(truth, 2))[4:36, 4:36])
    copy.close()


def test_rgb_tiff_with_samples_axis_and_resolution(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(2000, 2000), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "YXS"
    with FileImageSource(path) as src:
        assert src.channel_names == ["Red", "Green", "Blue"] and src.dtype == np.uint8
        assert src.pixel_size_um == pytest.approx(5.0)
        np.testing.assert_array_equal(src.read_region(1, 0, 0, 80, 60), rgb)
        np.testing.assert_array_equal(src.read_region(2, 0, 0, 80, 60), np.rint(mean_blocks(rgb, 2)))
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, rgb, photometric="rgb", resolution=(12700, 12700), resolutionunit="INCH")
    with FileImageSource(inch) as src:
        assert src.pixel_size_um == pytest.approx(2.0)
    svs = tmp_path / "slide.svs"
    aperio = "Aperio Image Library v10.0.51\r\n80x60 [0,0 80x60] (32x32) RAW|AppMag = 20|MPP = 0.4990"
    tifffile.imwrite(svs, rgb, photometric="rgb", tile=(32, 32), description=aperio, metadata=None)
    with FileImageSource(svs) as src:
        assert src.pixel_size_um == pytest.approx(0.499) and src.channel_names == ["Red", "Green", "Blue"]
        np.testing.assert_array_equal(src.read_region(1, 5, 5, 40, 40), rgb[5:45, 5:45])
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, rgb, photometric="rgb")
    with FileImageSource(bare) as src:
        assert src.pixel_size_um is None


def test_rgb_ome_tiff_written_as_rgb(tmp_path: Path) -> None:
    rgb = ramp(64, 96, 3, np.uint8)
    path = write_ome_tiff(tmp_path / "rgb.ome.tif", rgb, tile=32)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.photometric == tifffile.PHOTOMETRIC.RGB
    with FileImageSource(path) as src:
        assert src.channel_names == ["Red", "Green", "Blue"] and src.downsamples == (1.0, 2.0, 4.0)
        assert src.pixel_size_um is None
        np.testing.assert_array_equal(src.read_region(4, 0, 0, 96, 64), np.rint(mean_blocks(rgb, 4)))


def test_float32_single_channel(tmp_path: Path) -> None:
    truth = np.random.default_rng(2).random((40, 50)).astype(np.float32)
    path = tmp_path / "prob.tif"
    tifffile.imwrite(path, truth)
    with FileImageSource(path) as src:
        assert src.dtype == np.float32 and src.channel_names == ["Channel 1"]
        full = src.read_region(1, 0, 0, 50, 40)
        assert full.shape == (40, 50, 1) and full.dtype == np.float32
        np.testing.assert_array_equal(full[:, :, 0], truth)
        np.testing.assert_allclose(src.read_region(2, 0, 0, 50, 40), mean_blocks(truth[:, :, None], 2), rtol=1e-6)


def test_channels_first_imagej_many_channels(tmp_path: Path) -> None:
    truth = ramp(48, 64, 7)
    path = tmp_path / "stack.tif"
    metadata = {"axes": "CYX", "unit": "um"}
    tifffile.imwrite(path, truth.transpose(2, 0, 1), imagej=True, resolution=(2.0, 2.0), metadata=metadata)
    with FileImageSource(path) as src:
        assert src.n_channels == 7 and src.channel_names[-1] == "Channel 7"
        assert src.pixel_size_um == pytest.approx(0.5)
        np.testing.assert_array_equal(src.read_region(1, 3, 4, 20, 10), truth[4:14, 3:23])
        third = src.read_region(3, 0, 0, 63, 48)
        assert third.shape == (16, 21, 7)
        assert np.abs(third.astype(float) - mean_blocks(truth[:, :63], 3)).max() <= 1.0
        area = src.read_region(1.5, 0, 0, 63, 48)
        assert area.shape == (32, 42, 7) and abs(float(area[..., 6].mean()) - float(truth[..., 6].mean())) < 2


def test_png_and_jpeg(tmp_path: Path) -> None:
    rgb = ramp(40, 60, 3, np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    yy, xx = np.mgrid[0:40, 0:60]
    smooth = np.stack([xx * 4, yy * 6, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    gray16 = (ramp(30, 20, 1)[:, :, 0] * 50).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    with FileImageSource(tmp_path / "a.png") as src:
        assert src.channel_names == ["Red", "Green", "Blue"] and src.downsamples == (1.0,)
        np.testing.assert_array_equal(src.read_region(1, 0, 0, 60, 40), rgb)
        np.testing.assert_array_equal(src.read_region(2, 10, 10, 20, 20), np.rint(mean_blocks(rgb, 2))[5:15, 5:15])
    with FileImageSource(tmp_path / "a.jpg") as src:
        out = src.read_region(1, 0, 0, 60, 40)
        assert out.dtype == np.uint8 and np.abs(out.astype(int) - smooth).mean() < 2
    with FileImageSource(tmp_path / "g.png") as src:
        assert src.dtype == np.uint16 and src.channel_names == ["Channel 1"]
        np.testing.assert_array_equal(src.read_region(1, 0, 0, 20, 30)[:, :, 0], gray16)


def test_out_of_bounds_is_zero(pyramid: tuple[Path, np.ndarray]) -> None:
    path, truth = pyramid
    with FileImageSource(path) as src:
        corner = src.read_region(1, -10, -20, 30, 40)
        assert not corner[:20].any() and not corner[:, :10].any()
        np.testing.assert_array_equal(corner[20:, 10:], truth[:20, :20])
        edge = src.read_region(2, 700, 500, 100, 40)
        np.testing.assert_array_equal(edge[:6, :34], np.rint(mean_blocks(truth, 2))[250:, 350:])
        assert not edge[6:].any() and not edge[:, 34:].any()
        assert not src.read_region(4, 2000, 2000, 64, 64).any()


def test_unreadable_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.tif.*not found"):
        FileImageSource(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_text("not a tiff")
    with pytest.raises(DataError, match=r"junk\.tif: cannot read image"):
        FileImageSource(tmp_path / "junk.tif")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"junk\.png: cannot read image"):
        FileImageSource(tmp_path / "junk.png")


# --------------------------------------------------------------------------------------------------- GeoJSON

SQUARE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]


def feature(geometry: dict, **props: object) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": {"objectType": "annotation", **props}}


def test_read_geojson_every_geometry_and_colour_style(tmp_path: Path) -> None:
    features = [
        {
            **feature(
                {"type": "Polygon", "coordinates": SQUARE},
                classification={"name": "Tumor", "color": [200, 0, 0]},
                name="first",
                measurements={"Area": 100},
            ),
            "id": "a-1",
        },
        feature(
            {"type": "MultiPolygon", "coordinates": [SQUARE, [[[20, 20], [30, 20], [30, 30], [20, 20]]]]},
            classification={"name": "Stroma", "colorRGB": -16711936},
        ),
        feature(
            {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
            classification={"name": "Edge", "colorRGB": 0x0000FF},
        ),
        feature({"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]}),
        feature(
            {"type": "Point", "coordinates": [4, 5]},
            classification={"name": "Tumor"},
            measurements=[{"name": "Score", "value": 0.5}],
        ),
        feature({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}, classification={"name": "Tumor"}),
        feature({"type": "Polygon", "coordinates": SQUARE}, objectType="detection", classification={"name": "Cell"}),
        feature({"type": "Polygon", "coordinates": SQUARE}, objectType="cell"),
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [7, 7]}, "properties": None},
    ]
    path = tmp_path / "all.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    shapes = read_geojson(path)
    assert [s.geometry.geom_type for s in shapes] == [
        "Polygon",
        "MultiPolygon",
        "LineString",
        "MultiLineString",
        "Point",
        "MultiPoint",
        "Point",
    ]
    assert [s.kind for s in shapes] == ["area", "area", "line", "line", "point", "point", "point"]
    assert [s.class_name for s in shapes] == ["Tumor", "Stroma", "Edge", None, "Tumor", "Tumor", None]
    assert [s.color for s in shapes[:4]] == [(200, 0, 0), (0, 255, 0), (0, 0, 255), None]
    assert shapes[0].id == "a-1" and shapes[0].name == "first" and shapes[0].measurements == {"Area": 100.0}
    assert shapes[4].measurements == {"Score": 0.5}
    assert shapes[1].geometry.area == pytest.approx(150.0)
    with_detections = read_geojson(path, object_types=("annotation", "detection"))
    assert len(with_detections) == 8 and with_detections[6].class_name == "Cell"


def test_read_geojson_list_and_single_feature(tmp_path: Path) -> None:
    one = feature({"type": "Polygon", "coordinates": SQUARE}, classification={"name": "A", "color": [1, 2, 3]})
    (tmp_path / "list.geojson").write_text(json.dumps([one, one]))
    (tmp_path / "one.geojson").write_text(json.dumps(one))
    assert len(read_geojson(tmp_path / "list.geojson")) == 2
    (shape,) = read_geojson(tmp_path / "one.geojson")
    assert shape.class_name == "A" and shape.color == (1, 2, 3) and shape.geometry.equals(box(0, 0, 10, 10))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"bad\.geojson: not valid JSON"),
        (json.dumps({"hello": 1}), r"bad\.geojson: not GeoJSON"),
        (
            json.dumps(
                [
                    feature({"type": "Point", "coordinates": [1, 1]}),
                    feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}),
                ]
            ),
            r"bad\.geojson: feature 1: invalid Polygon",
        ),
        (json.dumps([feature({"type": "Circle", "coordinates": [1, 1]})]), r"feature 0: unsupported or missing"),
        (json.dumps([{"type": "Feature"}]), r"feature 0 is not a GeoJSON Feature"),
    ],
)
def test_bad_geojson(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_geojson(path)


def test_geojson_round_trip(tmp_path: Path) -> None:
    shapes = [
        LabelShape("Tumor", box(0, 0, 5, 5), "area", (255, 0, 0), "id-1", "big one", {"Area": 25.0}),
        LabelShape(None, LineString([(0, 0), (3, 4)]), "line", id="id-2"),
        LabelShape("Immune", MultiPoint([(1, 1), (2, 2)]), "point", (0, 0, 255), "id-3"),
        LabelShape("Tumor", Polygon([(0, 0), (8, 0), (8, 8)], [[(1, 0.5), (2, 0.5), (2, 1.5)]]), "area", (255, 0, 0)),
    ]
    path = write_geojson(tmp_path / "out.geojson", shapes)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and all(f["type"] == "Feature" for f in data["features"])
    first = data["features"][0]
    assert first["id"] == "id-1" and first["properties"] == {
        "objectType": "annotation",
        "classification": {"name": "Tumor", "color": [255, 0, 0]},
        "name": "big one",
        "measurements": {"Area": 25.0},
    }
    assert data["features"][3]["id"]
    back = read_geojson(path)
    assert back[:3] == shapes[:3]
    assert back[3].geometry.equals(shapes[3].geometry) and back[0].measurements == {"Area": 25.0}
    det = write_geojson(tmp_path / "det.geojson", shapes[:1], object_type="detection")
    assert read_geojson(det) == []
    assert read_geojson(det, object_types=("detection",)) == shapes[:1]
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------------- folder projects


def make_project(root: Path) -> Path:
    root.mkdir()
    write_ome_tiff(root / "a.ome.tif", ramp(64, 64, 2), tile=32, pyramid=False)
    Image.fromarray(ramp(20, 30, 3, np.uint8)).save(root / "b.png")
    Image.fromarray(ramp(20, 30, 3, np.uint8)).save(root / "c.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "results").mkdir()
    (root / "a.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        **feature(
                            {"type": "Polygon", "coordinates": SQUARE},
                            classification={"name": "Tumor", "color": [200, 0, 0]},
                        ),
                        "id": "t1",
                    },
                    feature(
                        {"type": "Polygon", "coordinates": [[[20, 20], [40, 20], [40, 40], [20, 20]]]},
                        classification={"name": "Stroma", "colorRGB": 0x00FF00},
                        name="no id",
                    ),
                    feature({"type": "Point", "coordinates": [3, 3]}),
                ],
            }
        )
    )
    (root / "b.png.geojson").write_text(
        json.dumps(
            [
                feature(
                    {"type": "Polygon", "coordinates": SQUARE}, classification={"name": "Tumor", "color": [9, 9, 9]}
                ),
            ]
        )
    )
    return root


def test_folder_project_listing(tmp_path: Path) -> None:
    project = open_folder_project(make_project(tmp_path / "proj"))
    project_api: Project = project
    assert project_api.root == tmp_path / "proj"
    images = project.images()
    assert [i.name for i in images] == ["a.ome.tif", "b.png", "c.jpg"]
    assert [i.stem for i in images] == ["a", "b", "c"]
    assert [len(i.annotations()) for i in images] == [3, 1, 0]
    assert images[0].geojson_path == tmp_path / "proj" / "a.geojson"
    assert images[1].geojson_path == tmp_path / "proj" / "b.png.geojson"
    image_api: ProjectImage = images[0]
    assert image_api.name == "a.ome.tif"
    assert project.class_colors() == {"Tumor": (200, 0, 0), "Stroma": (0, 255, 0)}
    ids = [a.id for a in images[0].annotations()]
    assert ids[0] == "t1" and ids[1] and ids[1] == images[0].annotations()[1].id and len(set(ids)) == 3
    with images[0].open() as src:
        assert (src.width, src.height, src.n_channels) == (64, 64, 2)
    with images[2].open() as src:
        assert src.read_region(1, 0, 0, 30, 20).shape == (20, 30, 3)
    project.close()


def test_folder_project_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="project folder not found"):
        open_folder_project(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.geojson").write_text("[]")
    with pytest.raises(DataError, match=r"empty: no images found; expected files ending in \.tif"):
        open_folder_project(tmp_path / "empty")
    dup = tmp_path / "dup"
    dup.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(dup / "x.png")
    tifffile.imwrite(dup / "x.ome.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="share the name 'x'"):
        FolderProject(dup)


def test_write_results(tmp_path: Path) -> None:
    project = open_folder_project(make_project(tmp_path / "proj"))
    image = project.image("a.ome.tif")
    anns = image.annotations()
    objects = [LabelShape("Tumor", box(1, 1, 4, 4), "area", (200, 0, 0), "o1")]
    measurements = {"t1": {"Tumor area µm^2": 12.5, "Stroma area µm^2": 0.0}, anns[1].id: {"Tumor area µm^2": 3.0}}
    paths = image.write_results("my-net", objects=objects, measurements=measurements)
    out = tmp_path / "proj" / "results" / "my-net"
    assert paths == [out / "a.objects.geojson", out / "a.annotations.geojson", out / "a.measurements.csv"]
    assert read_geojson(paths[0], object_types=("detection",)) == objects
    assert json.loads(paths[0].read_text())["features"][0]["properties"]["objectType"] == "detection"
    merged = read_geojson(paths[1])
    assert merged == anns
    assert merged[0].measurements == {"Tumor area µm^2": 12.5, "Stroma area µm^2": 0.0}
    assert merged[1].measurements == {"Tumor area µm^2": 3.0} and merged[2].measurements == {}
    with paths[2].open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", "id", "name", "class", "Tumor area µm^2", "Stroma area µm^2"]
    assert rows[1] == ["a.ome.tif", "t1", "", "Tumor", "12.5", "0.0"]
    assert rows[2] == ["a.ome.tif", anns[1].id, "no id", "Stroma", "3.0", ""]
    assert rows[3] == ["a.ome.tif", anns[2].id, "", "", "", ""]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert image.write_results("my-net", objects=[]) == [out / "a.objects.geojson"]
    with pytest.raises(DataError, match="a.ome.tif: measurements name annotation ids not in"):
        image.write_results("my-net", measurements={"nope": {"x": 1.0}})
    with pytest.raises(ConfigError, match="classifier name"):
        image.write_results("../escape", objects=objects)
    assert read_geojson(out / "a.objects.geojson", object_types=("detection",)) == []
