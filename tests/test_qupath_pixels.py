"""Pixels out of a real QuPath JVM: premultiplied ARGB (``TYPE_INT_ARGB_PRE``) comes out as its straight colours."""

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
