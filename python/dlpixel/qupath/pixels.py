"""Pixels out of QuPath: an ImageSource over an ImageServer, and BufferedImage -> numpy without per-pixel Java calls."""

from __future__ import annotations

import sys
from typing import Any

import jpype
import numpy as np

from ..data.base import region_shape
from ..errors import DataError

_PIXEL_DTYPES = {
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "UINT16": np.dtype(np.uint16),
    "INT16": np.dtype(np.int16),
    "UINT32": np.dtype(np.uint32),
    "INT32": np.dtype(np.int32),
    "FLOAT32": np.dtype(np.float32),
    "FLOAT64": np.dtype(np.float64),
}

# java.awt.image.DataBuffer.TYPE_* -> dtype of the Java array (bytes and ushorts come back signed)
_BUFFER_DTYPES = {0: np.dtype(np.uint8), 1: np.dtype(np.uint16), 2: np.dtype(np.int16), 3: np.dtype(np.int32),
                  4: np.dtype(np.float32), 5: np.dtype(np.float64)}
_PACKED_RGB_TYPES = (1, 2, 3)  # BufferedImage.TYPE_INT_RGB, TYPE_INT_ARGB, TYPE_INT_ARGB_PRE
_ARGB_PRE = 3
# Bytes of a packed 0xAARRGGBB int in memory are B, G, R, A on little-endian machines and A, R, G, B on big-endian.
_RGB_BYTES = slice(2, None, -1) if sys.byteorder == "little" else slice(1, None)
_SAMPLE_MODELS: dict[str, Any] = {}


def _component_sample_model() -> Any:
    if "component" not in _SAMPLE_MODELS:
        _SAMPLE_MODELS["component"] = jpype.JClass("java.awt.image.ComponentSampleModel")
    return _SAMPLE_MODELS["component"]


def _java_array(arr: Any, dtype: np.dtype) -> np.ndarray:
    """A read-only numpy array over a Java primitive array through the buffer protocol: JPype hands over one
    JNI copy of the elements, which the array then owns (no element-by-element conversion)."""
    return np.frombuffer(memoryview(arr), dtype=dtype)


def _unpack_rgb(packed: Any, h: int, w: int, premultiplied: bool = False) -> np.ndarray:
    """A Java int[] of packed 0xAARRGGBB pixels as an (H, W, 3) uint8 view of its bytes: the one copy is the JNI
    copy; R, G, B are picked by strides, so nothing is shifted or byte-swapped. Premultiplied colours
    (``TYPE_INT_ARGB_PRE``) are divided by their alpha, as Java's own ``getRGB`` does (round(c · 255 / a); 0 where
    a = 0), so the model sees the straight colours."""
    argb = _java_array(packed, np.dtype(np.uint8)).reshape(h, w, 4)
    rgb = argb[..., _RGB_BYTES]
    if not premultiplied:
        return rgb
    alpha = argb[..., 3 if sys.byteorder == "little" else 0].astype(np.uint16)[..., None]
    if (alpha == 255).all():
        return rgb
    straight = (rgb.astype(np.uint32) * 510 + alpha) // (2 * np.maximum(alpha, 1))  # floor(c·255/a + ½)
    return np.where(alpha == 0, 0, np.minimum(straight, 255)).astype(np.uint8)


def _arithmetic_step(values: list[int]) -> int | None:
    """The common difference of ``values`` (0 for a single value), or None when they are not evenly spaced."""
    if len(values) == 1:
        return 0
    step = values[1] - values[0]
    ok = step != 0 and all(b - a == step for a, b in zip(values, values[1:]))
    return step if ok else None


def _component_to_numpy(raster: Any, buf: Any, sm: Any, dtype: np.dtype, w: int, h: int, tx: int,
                        ty: int) -> np.ndarray:
    """Pixels of a ComponentSampleModel raster: one pixel-interleaved bank as a strided view of its single JNI
    copy; several banks (one per channel, QuPath's usual layout) copied band by band into a channel-first array,
    each bank released as soon as it is copied so that large temporary buffers do not pile up."""
    nb = int(raster.getNumBands())
    pixel_stride = int(sm.getPixelStride())
    scanline = int(sm.getScanlineStride())
    bank_indices = [int(i) for i in sm.getBankIndices()]
    band_offsets = [int(i) for i in sm.getBandOffsets()]
    bank_offsets = [int(i) for i in buf.getOffsets()]
    base = -ty * scanline - tx * pixel_stride
    size = dtype.itemsize
    if len(set(bank_indices)) == 1:
        step = _arithmetic_step(band_offsets)
        if step is not None:
            k = bank_indices[0]
            bank = _java_array(buf.getData(k), dtype)
            start = bank_offsets[k] + band_offsets[0] + base
            return np.lib.stride_tricks.as_strided(
                bank[start:], shape=(h, w, nb), strides=(scanline * size, pixel_stride * size, step * size),
                writeable=False)
    out = np.empty((nb, h, w), dtype)
    for b in range(nb):
        k = bank_indices[b]
        bank = _java_array(buf.getData(k), dtype)
        start = bank_offsets[k] + band_offsets[b] + base
        if pixel_stride == 1 and scanline == w:
            out[b] = bank[start:start + w * h].reshape(h, w)
        else:
            out[b] = np.lib.stride_tricks.as_strided(
                bank[start:], shape=(h, w), strides=(scanline * size, pixel_stride * size), writeable=False)
        del bank
    return out.transpose(1, 2, 0)


def buffered_image_to_numpy(img: Any) -> np.ndarray:
    """A ``java.awt.image.BufferedImage`` as an (H, W, C) array: packed RGB as a view of its int[]'s bytes, other
    layouts through their primitive banks with numpy strides, anything else with ``Raster.getSamples``.

    The result is read-only and may be a strided view (RGB skips the alpha byte; multi-channel images are stored
    channel by channel, which is also the order a model wants); ``np.array`` gives a writable C-ordered copy where
    that matters."""
    raster = img.getRaster()
    buf = raster.getDataBuffer()
    w, h = int(raster.getWidth()), int(raster.getHeight())
    tx, ty = int(raster.getSampleModelTranslateX()), int(raster.getSampleModelTranslateY())
    kind = int(img.getType())
    if kind in _PACKED_RGB_TYPES:
        data = buf.getData()
        if tx == 0 and ty == 0 and len(data) == w * h and int(buf.getOffset()) == 0:
            return _unpack_rgb(data, h, w, premultiplied=kind == _ARGB_PRE)
        return _unpack_rgb(img.getRGB(0, 0, w, h, None, 0, w), h, w)  # getRGB gives straight colours
    sm = raster.getSampleModel()
    dtype = _BUFFER_DTYPES.get(int(buf.getDataType()))
    if dtype is not None and isinstance(sm, _component_sample_model()):
        return _component_to_numpy(raster, buf, sm, dtype, w, h, tx, ty)
    nb = int(raster.getNumBands())
    JArray, JDouble = jpype.JArray, jpype.JDouble
    out = np.empty((nb, h, w), np.float64)
    for b in range(nb):
        out[b] = np.asarray(raster.getSamples(0, 0, w, h, b, JArray(JDouble)(w * h))).reshape(h, w)
    return out.transpose(1, 2, 0)


class QuPathImageSource:
    """An ``ImageSource`` over a QuPath ``ImageServer<BufferedImage>``, reading plane ``plane`` = (z, t) ((0, 0)
    unless made by ``at_plane``)."""

    def __init__(self, server: Any, name: str, owns_server: bool = True):
        self._server = server
        self._owns_server = owns_server
        self._path = server.getPath()
        self.name = name
        self.width = int(server.getWidth())
        self.height = int(server.getHeight())
        self.channel_names = [str(c.getName()) for c in server.getMetadata().getChannels()]
        pixel_type = str(server.getPixelType().name())
        if pixel_type not in _PIXEL_DTYPES:
            raise DataError(f"image '{name}': pixel type {pixel_type} is not supported")
        self.dtype = _PIXEL_DTYPES[pixel_type]
        cal = server.getPixelCalibration()
        self.pixel_size_um = (
            (float(cal.getPixelWidthMicrons()) + float(cal.getPixelHeightMicrons())) / 2.0
            if bool(cal.hasPixelSizeMicrons()) else None
        )
        self.downsamples = tuple(float(server.getDownsampleForResolution(i)) for i in range(int(server.nResolutions())))
        self.n_z, self.n_t = int(server.nZSlices()), int(server.nTimepoints())
        self.plane = (0, 0)
        self._request = jpype.JClass("qupath.lib.regions.RegionRequest")

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def server(self) -> Any:
        """The Java ImageServer (for code inside dlpixel.qupath)."""
        return self._server

    def read_java(self, downsample: float, x: int, y: int, w: int, h: int) -> Any:
        """QuPath's own ``readRegion`` for the rectangle (a BufferedImage, or None when wholly outside)."""
        z, t = self.plane
        request = self._request.createInstance(self._path, float(downsample), int(x), int(y), int(w), int(h),
                                               int(z), int(t))
        return self._server.readRegion(request)

    def at_plane(self, z: int, t: int, owns: bool = False) -> QuPathImageSource:
        """A view of plane (z, t) over the same server; closing the view closes the server only with ``owns``."""
        import copy

        view = copy.copy(self)
        view.plane = (int(z), int(t))
        view._owns_server = self._owns_server and owns
        return view

    def read_region(self, downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of the full-resolution rectangle (x, y, w, h) at ``downsample``; parts outside the image are 0.

        A region wholly inside the image comes back read-only, often as a strided view of the one copy taken out of
        Java (see ``buffered_image_to_numpy``)."""
        rows, cols = region_shape(downsample, w, h)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return np.zeros((rows, cols, self.n_channels), self.dtype)
        if (x0, y0, x1, y1) == (x, y, x + w, y + h):
            arr = self._convert(self.read_java(downsample, x, y, w, h))
            if arr.shape[:2] == (rows, cols):
                return arr
            out = np.zeros((rows, cols, self.n_channels), self.dtype)
            out[: min(rows, arr.shape[0]), : min(cols, arr.shape[1])] = arr[:rows, :cols]
            return out
        out = np.zeros((rows, cols, self.n_channels), self.dtype)
        inner = self.read_region(downsample, x0, y0, x1 - x0, y1 - y0)
        oy, ox = int(round((y0 - y) / downsample)), int(round((x0 - x) / downsample))
        ih, iw = min(inner.shape[0], rows - oy), min(inner.shape[1], cols - ox)
        out[oy:oy + ih, ox:ox + iw] = inner[:ih, :iw]
        return out

    def _convert(self, img: Any) -> np.ndarray:
        if img is None:
            return np.zeros((0, 0, self.n_channels), self.dtype)
        arr = buffered_image_to_numpy(img)
        return arr if arr.dtype == self.dtype else arr.astype(self.dtype, copy=False)

    def close(self) -> None:
        """Release the server's files (not those of a server QuPath itself has open)."""
        if not self._owns_server:
            return
        try:
            self._server.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass

    def __repr__(self) -> str:
        return (f"QuPathImageSource({self.name!r}, {self.width}x{self.height}, channels={self.channel_names},"
                f" {self.dtype})")
