"""Pixels and planes through a real QuPath JVM: premultiplied ARGB (``TYPE_INT_ARGB_PRE``) comes out as its straight
colours, a plane of a z-stack reads that plane, objects go to their plane, and class maps and overlays open where
they belong."""

from __future__ import annotations

import numpy as np
import pytest
from qupath_kit import require_qupath


@pytest.fixture(scope="module")
def jvm_started():
    from dlpixel.qupath import jvm

    jvm.start_jvm(require_qupath())


def test_premultiplied_argb_gives_the_straight_colours(jvm_started):
    import jpype
    from dlpixel.qupath.pixels import buffered_image_to_numpy

    BufferedImage = jpype.JClass("java.awt.image.BufferedImage")
    h, w = 7, 9
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (h, w, 3))
    alpha = rng.integers(0, 256, (h, w))
    alpha[0, :3] = (0, 1, 255)
    argb = (alpha << 24) | (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pixels = jpype.JArray(jpype.JInt)(argb.astype(np.uint32).view(np.int32).reshape(-1).tolist())
    straight = BufferedImage(w, h, BufferedImage.TYPE_INT_ARGB)
    straight.setRGB(0, 0, w, h, pixels, 0, w)
    pre = BufferedImage(w, h, BufferedImage.TYPE_INT_ARGB_PRE)
    pre.setRGB(0, 0, w, h, pixels, 0, w)  # Java stores the colours multiplied by alpha

    got = buffered_image_to_numpy(pre)
    # Java's own un-premultiplied colours, pixel by pixel.
    back = np.asarray(pre.getRGB(0, 0, w, h, None, 0, w), np.int64).reshape(h, w) & 0xFFFFFF
    java = np.stack([(back >> 16) & 255, (back >> 8) & 255, back & 255], -1)
    assert np.array_equal(got, java)
    # The straight colours, up to what 8-bit premultiplication keeps (exact where alpha is 255).
    opaque = alpha == 255
    assert np.array_equal(got[opaque], rgb[opaque])
    visible = alpha > 0
    err = np.abs(got.astype(int) - rgb)[visible].max(-1)
    assert (err <= np.ceil(255 / alpha[visible] / 2)).all()
    assert (got[alpha == 0] == 0).all()
    # A straight ARGB image is read as it is.
    assert np.array_equal(buffered_image_to_numpy(straight), rgb)


def test_the_helper_places_an_overlay_where_apply_computed_it(jvm_started, tmp_path):
    """``DLPixel.overlayRegion`` reads what ``apply --output overlay`` wrote: the PNG and the full-resolution region
    and plane it covers (``showOverlay`` hands exactly these to QuPath's BufferedImageOverlay in the viewer)."""
    import json

    import jpype
    from dlpixel.inference.outputs_map import ClassMapWriter
    from dlpixel.qupath.install import groovy_source_dir

    try:
        GroovyShell = jpype.JClass("groovy.lang.GroovyShell")
    except Exception:  # noqa: BLE001 - JPype's error for a missing class
        pytest.skip("this QuPath has no Groovy")
    ds, width, height = 3.0, 50, 20  # a 150 × 60 px image at downsample 3
    cmap = np.zeros((height, width), np.uint8)
    cmap[5:15, 10:40] = 1
    cmap[0, 0] = 255  # not computed: transparent
    with ClassMapWriter(tmp_path / "a.classes.ome.tif", width, height, 1, class_names=["A", "B"],
                        colors=[(0, 0, 255), (255, 0, 0)], overlay=tmp_path / "a.overlay.png",
                        region=(0, 0, width * ds, height * ds), plane=(2, 1), tile=16) as writer:
        writer.add_strip(0, cmap)
    helper = json.dumps(str(groovy_source_dir() / "DLPixel.groovy"))
    script = f"""
        def DLPixel = new GroovyClassLoader(getClass().classLoader).parseClass(new File({helper}))
        def o = DLPixel.overlayRegion({json.dumps(str(tmp_path / "a.overlay.json"))})
        def img = o.image
        groovy.json.JsonOutput.toJson([x: o.x, y: o.y, width: o.width, height: o.height, z: o.z, t: o.t,
            w: img.width, h: img.height, inside: img.getRGB(20, 10), corner: img.getRGB(0, 0) >>> 24])
    """
    loader = jpype.JClass("java.lang.Thread").currentThread().getContextClassLoader()
    got = json.loads(str(GroovyShell(loader).evaluate(script)))
    assert got["x"] == 0 and got["y"] == 0 and got["width"] == 150 and got["height"] == 60
    assert (got["z"], got["t"]) == (2, 1) and (got["w"], got["h"]) == (width, height)
    assert got["inside"] & 0xFFFFFFFF == 0xFFFF0000  # class B in its colour, opaque
    assert got["corner"] == 0  # transparent where nothing was computed


def test_qupath_opens_a_class_map_at_the_slides_scale(jvm_started, tmp_path):
    """A class map written at downsample 3 of a 0.5 µm image opens in QuPath (Bio-Formats) with 1.5 µm pixels, so
    it lies on the slide at the right size, and its pixels are the class indices."""
    import jpype
    from dlpixel.inference.outputs_map import ClassMapWriter
    from dlpixel.qupath.pixels import QuPathImageSource

    width, height = 70, 45
    cmap = (np.arange(width)[None, :] // 10 % 3 + np.zeros((height, 1), int)).astype(np.uint8)
    path = tmp_path / "slide.classes.ome.tif"
    with ClassMapWriter(path, width, height, 1, pixel_size_um=0.5 * 3, channel_names=["classes"],
                        class_names=["A", "B", "C"], colors=[(1, 2, 3), (4, 5, 6), (7, 8, 9)], tile=16) as w:
        w.add_strip(0, cmap)
    server = jpype.JClass("qupath.lib.images.servers.ImageServers").buildServer(str(path))
    try:
        cal = server.getPixelCalibration()
        assert float(cal.getPixelWidthMicrons()) == pytest.approx(1.5)
        assert (int(server.getWidth()), int(server.getHeight())) == (width, height)
        src = QuPathImageSource(server, "map", owns_server=False)
        assert np.array_equal(np.asarray(src.read_region(1.0, 0, 0, width, height))[..., 0], cmap)
    finally:
        server.close()


def test_a_z_stack_is_read_plane_by_plane_and_objects_keep_their_plane(jvm_started, tmp_path):
    import jpype
    import shapely
    import tifffile
    from dlpixel.data.base import LabelShape, at_plane
    from dlpixel.qupath.pixels import QuPathImageSource
    from dlpixel.qupath.project import path_objects_to_shapes
    from dlpixel.qupath.writeback import shapes_to_path_objects

    stack = np.stack([np.full((3, 40, 50), 10 * (z + 1), np.uint8) for z in range(3)])
    stack[2, 0, 5:9, 7:12] = 200
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["a", "b", "c"]}})
    server = jpype.JClass("qupath.lib.images.servers.ImageServers").buildServer(str(path))
    try:
        src = QuPathImageSource(server, "z.ome.tif", owns_server=False)
        assert (src.n_z, src.n_t) == (3, 1)
        for z in range(3):
            got = np.asarray(at_plane(src, (z, 0)).read_region(1.0, 0, 0, 50, 40))
            assert np.array_equal(got, stack[z].transpose(1, 2, 0))
    finally:
        server.close()
    shape = LabelShape("Tumor", shapely.box(3, 4, 20, 30), "area", plane=(2, 1))
    objs = shapes_to_path_objects([shape], "annotation")
    roi = objs[0].getROI()
    assert (int(roi.getZ()), int(roi.getT())) == (2, 1)
    assert path_objects_to_shapes(objs)[0].plane == (2, 1)
