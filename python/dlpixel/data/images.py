"""Image files as ``ImageSource``s: TIFF and pyramidal OME-TIFF read region by region, PNG and JPEG read whole.

Regions come from the coarsest stored pyramid level that is not coarser than the request, so a whole-slide image
is never loaded whole; the remaining factor is an exact block mean when it is an integer, else ``cv2.INTER_AREA``.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
import zarr
from PIL import Image
from tifffile.tifffile import svs_description_metadata

from ..errors import DataError
from ._io import atomic_path
from .base import region_shape

FLAT_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".svs")
RGB_NAMES = ["Red", "Green", "Blue"]

_UNIT_TO_UM = {
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
_TOL = 1e-9


def block_mean(array: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Mean over non-overlapping fy × fx blocks of an (H, W, C) array whose H and W are multiples of the factors,
    rounded back to the input dtype (the exact downsample of an integer factor)."""
    h, w, c = array.shape
    means = array.reshape(h // fy, fy, w // fx, fx, c).mean(axis=(1, 3), dtype=np.float64)
    return _cast(means, array.dtype)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def resize_area(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize an (H, W, C) array to (rows, cols, C): block mean for integer factors, area interpolation otherwise."""
    h, w, c = array.shape
    if (h, w) == (rows, cols):
        return array
    if h % rows == 0 and w % cols == 0:
        return block_mean(array, h // rows, w // cols)
    interpolation = cv2.INTER_AREA if rows <= h and cols <= w else cv2.INTER_LINEAR
    work = array if array.dtype in _CV2_DTYPES else array.astype(np.float64)
    parts = []
    for start in range(0, c, 4):
        part = np.ascontiguousarray(work[:, :, start : start + 4])
        parts.append(cv2.resize(part, (cols, rows), interpolation=interpolation).reshape(rows, cols, -1))
    out = np.concatenate(parts, axis=2)
    return out if out.dtype == array.dtype else _cast(out, array.dtype)


def _snap_downsample(ratio: float) -> float:
    nearest = round(ratio)
    if nearest >= 1 and abs(ratio - nearest) <= 0.01 * ratio:
        return float(nearest)
    return round(ratio, 4)


class _ArrayLevel:
    """A level held in memory as (H, W, C)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.height, self.width = array.shape[:2]

    def read(self, y0: int, y1: int, x0: int, x1: int, plane: tuple[int, int] = (0, 0)) -> np.ndarray:
        return self.array[y0:y1, x0:x1]


class _ZarrLevel:
    """A TIFF pyramid level read lazily through zarr, mapped from its stored axes to (Y, X, C)."""

    def __init__(self, array: Any, axes: str, path: Path) -> None:
        self.array = array
        if "Y" not in axes or "X" not in axes or len(axes) != len(array.shape):
            raise DataError(f"{path}: unsupported TIFF layout (axes {axes!r}); save it as a 2D (multichannel) OME-TIFF")
        channel_axes = [i for i, a in enumerate(axes) if a in "CS"]
        if not channel_axes:
            channel_axes = [i for i, a in enumerate(axes) if a not in "YXZT"][:1]
        self._fixed = {i for i, a in enumerate(axes) if a not in "YX" and i not in channel_axes}
        extra = [f"{axes[i]}={array.shape[i]}" for i in sorted(self._fixed)
                 if axes[i] not in "ZT" and array.shape[i] > 1]
        if extra:
            raise DataError(f"{path}: {len(axes)}-D image (axes {axes!r}, {', '.join(extra)} beside Y, X and channels);"
                            " save each plane as its own 2-D (multichannel) image")
        self.path = path
        self._axes = axes
        self.n_z = int(array.shape[axes.index("Z")]) if "Z" in axes else 1
        self.n_t = int(array.shape[axes.index("T")]) if "T" in axes else 1
        self._y, self._x = axes.index("Y"), axes.index("X")
        kept = [i for i in range(len(axes)) if i not in self._fixed]
        self._order = [kept.index(self._y), kept.index(self._x)] + [kept.index(i) for i in channel_axes]
        self.height, self.width = int(array.shape[self._y]), int(array.shape[self._x])
        self.channels = int(np.prod([array.shape[i] for i in channel_axes], dtype=np.int64))

    def read(self, y0: int, y1: int, x0: int, x1: int, plane: tuple[int, int] = (0, 0)) -> np.ndarray:
        index: list[Any] = []
        for i in range(len(self.array.shape)):
            if i == self._y:
                index.append(slice(y0, y1))
            elif i == self._x:
                index.append(slice(x0, x1))
            elif i in self._fixed:
                axis = self._axes[i]
                index.append(plane[0] if axis == "Z" else plane[1] if axis == "T" else 0)
            else:
                index.append(slice(None))
        try:
            block = np.asarray(self.array[tuple(index)])
        except Exception as exc:  # noqa: BLE001 - tifffile, zarr and the codecs raise many types for damaged data
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise DataError(f"{self.path}: cannot read its pixels ({reason}); the file is truncated or damaged: "
                            "copy or export it again") from None
        return block.transpose(self._order).reshape(y1 - y0, x1 - x0, self.channels)


class _SegmentLevel:
    """A TIFF pyramid level stored as one page of tiles or strips in pixel-interleaved order (axes YX or YXS), read
    by decoding just the segments a region touches, each read with ``os.pread`` (no shared file position, so threads
    read at once) and decoded by tifffile's codecs, which release the interpreter lock: several times faster than
    zarr's chunk machinery for the many row-sized regions of ``apply``, and equal pixel for pixel (tests compare
    both). Anything else (separate planes, Z/T stacks, pages in other files) is read through ``_ZarrLevel``."""

    def __init__(self, page: Any, tif: tifffile.TiffFile, fileno: int, path: Path) -> None:
        self.page, self.handle, self.fileno, self.path = page, tif.filehandle, fileno, path
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.channels = int(page.samplesperpixel)
        self.dtype = np.dtype(page.dtype).newbyteorder("=")
        if page.is_tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self.seg_h, self.seg_w = int(page.rowsperstrip) or self.height, self.width
        self.seg_h = min(self.seg_h, self.height)
        self.n_x = -(-self.width // self.seg_w)
        self.offsets, self.counts = page.dataoffsets, page.databytecounts
        self.decode = page.decode
        self.n_z = self.n_t = 1

    @staticmethod
    def fits(level: Any, page: Any, tif: tifffile.TiffFile) -> bool:
        """Whether ``level`` (a tifffile series level) is one such page of this file."""
        try:
            return (len(level.pages) == 1 and level.axes in ("YX", "YXS") and page.parent is tif
                    and page.imagedepth == 1 and (page.samplesperpixel == 1 or page.planarconfig == 1)
                    and len(page.dataoffsets) == len(page.databytecounts) > 0 and not page.is_subsampled)
        except Exception:  # noqa: BLE001 - any oddity of the file: zarr reads it
            return False

    def read(self, y0: int, y1: int, x0: int, x1: int, plane: tuple[int, int] = (0, 0)) -> np.ndarray:
        if self.handle.closed:  # its descriptor may since name another file
            raise DataError(f"{self.path}: the image was closed; open it again to read it")
        out = np.empty((y1 - y0, x1 - x0, self.channels), self.dtype)
        sh, sw = self.seg_h, self.seg_w
        try:
            for sy in range(y0 // sh, (y1 - 1) // sh + 1):
                for sx in range(x0 // sw, (x1 - 1) // sw + 1):
                    i = sy * self.n_x + sx
                    count = int(self.counts[i])
                    data = os.pread(self.fileno, count, int(self.offsets[i])) if count else None
                    if count and len(data) != count:
                        raise ValueError(f"segment {i} is cut short")
                    segment, _, shape = self.decode(data, i)
                    ya, yb, xa, xb = max(y0, sy * sh), min(y1, sy * sh + sh), max(x0, sx * sw), min(x1, sx * sw + sw)
                    target = out[ya - y0: yb - y0, xa - x0: xb - x0]
                    if segment is None:
                        target[...] = self.page.fillvalue or 0
                        continue
                    segment = segment.reshape(shape[-3], shape[-2], self.channels)
                    target[...] = segment[ya - sy * sh: yb - sy * sh, xa - sx * sw: xb - sx * sw]
        except Exception as exc:  # noqa: BLE001 - tifffile and the codecs raise many types for damaged data
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise DataError(f"{self.path}: cannot read its pixels ({reason}); the file is truncated or damaged: "
                            "copy or export it again") from None
        return out


class FileImageSource:
    """An ``ImageSource`` over a TIFF/OME-TIFF/SVS file (read lazily, level by level) or a PNG/JPEG (read whole)."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self._tif: tifffile.TiffFile | None = None
        self._view = False
        self._pid = os.getpid()
        self._reopen_lock = threading.Lock()
        if not self.path.is_file():
            raise DataError(f"{self.path}: image file not found; check the path and that the file was not moved")
        try:
            if self.path.name.lower().endswith(FLAT_SUFFIXES):
                self._open_flat()
            else:
                self._open_tiff()
        except DataError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DataError(
                f"{self.path}: cannot read image ({reason}); save it as TIFF, OME-TIFF, PNG or JPEG"
            ) from exc
        base = self._levels[0]
        self.width, self.height = base.width, base.height
        self.n_z, self.n_t = getattr(base, "n_z", 1), getattr(base, "n_t", 1)
        self.plane = (0, 0)
        """(z, t) this source reads (``at_plane``)."""
        self.downsamples = tuple(
            1.0 if i == 0 else _snap_downsample((self.width / lv.width + self.height / lv.height) / 2)
            for i, lv in enumerate(self._levels)
        )

    def _open_flat(self) -> None:
        with Image.open(self.path) as image:
            mode = image.mode
            if mode in ("1", "LA"):
                array = np.asarray(image.convert("L"))
            elif mode in ("P", "PA", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
                array = np.asarray(image.convert("RGB"))
            else:
                array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        self._levels: list[_ArrayLevel | _ZarrLevel | _SegmentLevel] = [_ArrayLevel(np.ascontiguousarray(array))]
        self.dtype = array.dtype
        rgb = array.shape[2] == 3
        self.channel_names = list(RGB_NAMES) if rgb else _default_names(array.shape[2])
        self.pixel_size_um: float | None = None

    def _open_tiff(self) -> None:
        self._tif = tif = tifffile.TiffFile(self.path)
        series = tif.series[0]
        self._levels = []
        fileno = _fileno(tif)
        for i, level in enumerate(series.levels):
            page = level.pages[0] if len(level.pages) else None
            if fileno is not None and page is not None and _SegmentLevel.fits(level, page, tif):
                self._levels.append(_SegmentLevel(page, tif, fileno, self.path))
                continue
            array = zarr.open_array(series.aszarr(level=i), mode="r")
            self._levels.append(_ZarrLevel(array, level.axes, self.path))
        base = self._levels[0]
        self.dtype = np.dtype(series.dtype)
        page = series.keyframe
        ome = _ome_pixels(tif.ome_metadata) if tif.is_ome else None
        names = _ome_channel_names(ome, base.channels) if ome is not None else None
        if names is None:
            rgb = base.channels == 3 and page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
            names = list(RGB_NAMES) if rgb else _default_names(base.channels)
        self.channel_names = names
        size = _ome_pixel_size(ome) if ome is not None else None
        self.pixel_size_um = size if size is not None else _tiff_pixel_size(tif)

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def read_region(self, downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of the full-resolution rectangle (x, y, w, h) at ``downsample`` as (rows, cols, C), zero outside."""
        if not downsample > 0 or w <= 0 or h <= 0:
            raise ValueError(f"invalid region: downsample={downsample}, w={w}, h={h}")
        if self._pid != os.getpid():
            self._reopen()
        out = self._read_region(downsample, x, y, w, h)
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise DataError(f"{self.path}: NaN or infinite pixel values in the region at ({x}, {y}); replace them "
                            "(for example with 0) before training or applying")
        return out

    def _read_region(self, downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        rows, cols = region_shape(downsample, w, h)
        index = max(i for i, d in enumerate(self.downsamples) if i == 0 or d <= downsample * (1 + _TOL))
        level_ds = self.downsamples[index]
        x0 = math.floor(x / level_ds + _TOL)
        y0 = math.floor(y / level_ds + _TOL)
        if abs(level_ds - downsample) <= _TOL * downsample:
            return self._read_padded(index, y0, y0 + rows, x0, x0 + cols)
        x1 = max(x0 + 1, math.ceil((x + w) / level_ds - _TOL))
        y1 = max(y0 + 1, math.ceil((y + h) / level_ds - _TOL))
        return resize_area(self._read_padded(index, y0, y1, x0, x1), rows, cols)

    def _read_padded(self, index: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        level = self._levels[index]
        cy0, cy1 = max(y0, 0), min(y1, level.height)
        cx0, cx1 = max(x0, 0), min(x1, level.width)
        if (cy0, cy1, cx0, cx1) == (y0, y1, x0, x1):
            return np.ascontiguousarray(level.read(y0, y1, x0, x1, self.plane))
        out = np.zeros((y1 - y0, x1 - x0, self.n_channels), dtype=self.dtype)
        if cy1 > cy0 and cx1 > cx0:
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = level.read(cy0, cy1, cx0, cx1, self.plane)
        return out

    def _reopen(self) -> None:
        """Open the file again in a forked process, whose inherited handle shares its file position with the parent."""
        with self._reopen_lock:
            if self._pid == os.getpid():
                return
            if self._tif is not None:
                self._tif.filehandle.close()
                self._open_tiff()
            self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "plane": self.plane}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["name"])  # type: ignore[misc]
        self.plane = tuple(state.get("plane", (0, 0)))  # type: ignore[assignment]

    def at_plane(self, z: int, t: int, owns: bool = False) -> FileImageSource:
        """A view of plane (z, t) of a z-stack or time series (OME-TIFF Z/T axes) sharing this source's file; with
        ``owns`` closing the view closes the file (the source itself is then not closed)."""
        view = copy.copy(self)
        view.plane = (int(z), int(t))
        view._view = self._view or not owns
        return view

    def close(self) -> None:
        """Release the open file (TIFF only; PNG/JPEG hold no file); a plane view leaves it to its source."""
        if self._view:
            return
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> FileImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"FileImageSource({str(self.path)!r}, {self.width}x{self.height}x{self.n_channels} {self.dtype}, "
            f"downsamples={self.downsamples})"
        )


def _fileno(tif: tifffile.TiffFile) -> int | None:
    """The OS file descriptor of an open TIFF file (None for a file-like object without one)."""
    try:
        return int(tif.filehandle.fileno())
    except Exception:  # noqa: BLE001 - in-memory or wrapped handles
        return None


def _default_names(n: int) -> list[str]:
    return [f"Channel {i + 1}" for i in range(n)]


def _ome_pixels(xml: str | None) -> ET.Element | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def _ome_channel_names(pixels: ET.Element, n_channels: int) -> list[str] | None:
    channels = [el for el in pixels if el.tag.rsplit("}", 1)[-1] == "Channel"]
    if len(channels) != n_channels or not any(el.get("Name") for el in channels):
        return None
    return [el.get("Name") or f"Channel {i + 1}" for i, el in enumerate(channels)]


def _ome_pixel_size(pixels: ET.Element) -> float | None:
    value = pixels.get("PhysicalSizeX")
    factor = _UNIT_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
    try:
        size = float(value) * factor if value is not None and factor is not None else None
    except ValueError:
        return None
    return size if size and size > 0 and math.isfinite(size) else None


def _tiff_pixel_size(tif: tifffile.TiffFile) -> float | None:
    page = tif.pages.first
    if tif.is_svs:
        try:
            mpp = float(svs_description_metadata(page.description)["MPP"])
            if mpp > 0:
                return mpp
        except (KeyError, ValueError, TypeError):
            pass
    xres = page.resolution[0]
    if not xres or xres <= 0:
        return None
    unit = page.resolutionunit
    if unit == tifffile.RESUNIT.CENTIMETER:
        return 1e4 / xres
    if unit == tifffile.RESUNIT.INCH:
        return 25400.0 / xres
    if unit == tifffile.RESUNIT.NONE and tif.is_imagej:
        factor = _UNIT_TO_UM.get(str((tif.imagej_metadata or {}).get("unit", "")))
        if factor is not None:
            return factor / xres
    return None


def pyramid_factors(height: int, width: int, tile: int) -> list[int]:
    """Downsample factors of pyramid levels: halved until the longer side fits one tile."""
    factors = [1]
    while max(height, width) // factors[-1] > tile and min(height, width) // (factors[-1] * 2) >= 1:
        factors.append(factors[-1] * 2)
    return factors


def write_ome_tiff(
    path: str | Path,
    array: np.ndarray,
    *,
    pixel_size_um: float | None = None,
    channel_names: Sequence[str] | None = None,
    tile: int = 256,
    pyramid: bool = True,
    compression: str | None = "zlib",
) -> Path:
    """Write an (H, W, C) array as a tiled OME-TIFF with a pyramid in SubIFDs (each level half the previous, down to
    one tile), which QuPath and ``FileImageSource`` read level by level. 8-bit 3-channel data without other names is
    written as RGB. The file appears atomically."""
    path = Path(path)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"write_ome_tiff needs an (H, W, C) array, got shape {array.shape}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    height, width, n_channels = array.shape
    names = list(channel_names) if channel_names is not None else None
    if names is not None and len(names) != n_channels:
        raise ValueError(f"{len(names)} channel names for {n_channels} channels")
    rgb = array.dtype == np.uint8 and n_channels == 3 and names in (None, RGB_NAMES)
    factors = pyramid_factors(height, width, tile) if pyramid else [1]

    def stored(level: np.ndarray) -> np.ndarray:
        return level if rgb else np.ascontiguousarray(level.transpose(2, 0, 1))

    metadata: dict[str, Any] = {"axes": "YXS" if rgb else "CYX"}
    options: dict[str, Any] = {
        "tile": (tile, tile),
        "photometric": "rgb" if rgb else "minisblack",
        "compression": compression,
    }
    if pixel_size_um is not None:
        metadata.update(
            PhysicalSizeX=pixel_size_um, PhysicalSizeXUnit="µm", PhysicalSizeY=pixel_size_um, PhysicalSizeYUnit="µm"
        )
        options.update(resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um), resolutionunit="CENTIMETER")
    if names is not None and not rgb:
        metadata["Channel"] = {"Name": names}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=array.nbytes > 2**31 - 2**25, ome=True) as tw:
        tw.write(stored(array), subifds=len(factors) - 1, metadata=metadata, **options)
        options.pop("resolution", None)
        options.pop("resolutionunit", None)
        for f in factors[1:]:
            h, w = height // f, width // f
            tw.write(stored(block_mean(array[: h * f, : w * f], f, f)), subfiletype=1, metadata=None, **options)
    return path
