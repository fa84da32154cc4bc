"""The ``map`` output: a tiled, pyramidal OME-TIFF of class indices or probabilities (uint8) written from strips
in bounded memory, and a PNG preview in the class colours.

Each level's tiles are compressed once, as soon as a row of tiles is complete (by parallel threads, while the
writer goes on with the next rows), and appended to a spool file beside the output; every reduced level is built
on the fly from the rows of the level above (2 × 2 mode for class maps, mean for probabilities). ``close`` copies
the compressed tiles into the TIFF in the order TIFF wants (channel by channel) under a temporary name and renames
it into place. Memory: two rows of tiles per level at most.
"""

from __future__ import annotations

import math
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Literal

import cv2
import numpy as np
import tifffile
from PIL import Image

from ..data._io import atomic_path
from ..data.images import pyramid_factors

MapKind = Literal["classes", "probabilities"]
PREVIEW_MAX_SIZE = 2048
OVERLAY_MAX_SIZE = 4096
"""Longest side of the ``overlay`` PNG (RGBA, 64 MB in QuPath at most): maps larger than this are sampled every
k-th map pixel, k the smallest whole factor that fits."""
NOT_COMPUTED = 255


def reduce_mode(rows: np.ndarray) -> np.ndarray:
    """Halve an (2n, 2m, C) class map: each 2 × 2 block becomes its most frequent value (the top-left one on ties),
    so reduced levels show only classes that exist, never a blend of indices.

    Of four values a, b (top), c, d (bottom): a wins whenever it equals any other (no other value can then be more
    frequent); otherwise b if it equals c or d, else c if it equals d, else a (all different)."""
    a, b = rows[0::2, 0::2], rows[0::2, 1::2]
    c, d = rows[1::2, 0::2], rows[1::2, 1::2]
    lone = (a != b) & (a != c) & (a != d)
    take_b = lone & ((b == c) | (b == d))
    out = np.where(take_b, b, a)
    np.copyto(out, c, where=lone & ~take_b & (c == d))
    return out


def reduce_mean(rows: np.ndarray) -> np.ndarray:
    """Halve an (2n, 2m, C) uint8 array by the rounded mean of each 2 × 2 block (probabilities)."""
    s = rows[0::2, 0::2].astype(np.uint16) + rows[0::2, 1::2] + rows[1::2, 0::2] + rows[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


class _Level:
    """One pyramid level being filled row by row; full rows of tiles are compressed into the spool."""

    def __init__(self, height: int, width: int, channels: int, tile: int) -> None:
        self.height, self.width, self.tile = height, width, tile
        self.rows_in = 0
        self.buffer = np.zeros((tile, width, channels), np.uint8)
        self.filled = 0
        self.pending: np.ndarray | None = None
        self.n_tx, self.n_ty = math.ceil(width / tile), math.ceil(height / tile)
        self.spare: np.ndarray | None = None
        """The level's second row buffer, free again once the row compressed from it is in the spool."""
        self.offsets = np.zeros((channels, self.n_ty, self.n_tx), np.int64)
        self.lengths = np.zeros((channels, self.n_ty, self.n_tx), np.int64)


_POOL: ThreadPoolExecutor | None = None


def _compress_pool() -> ThreadPoolExecutor:
    """Threads that compress map tiles (one per core, at most 16), shared by every writer of the process."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1)),
                                   thread_name_prefix="dlpixel-compress")
    return _POOL


CLASS_MAP_ZLIB_NG_LEVEL = 2
"""Class maps are deflated by zlib-ng (imagecodecs) at this level where it is installed: measured on 256-px tiles
(2 CPU cores) 1.4× faster than zlib at level 1 and a little smaller (noisy 3-class tile 0.36 ms and 18.5 kB against
0.53 ms and 18.7 kB; smooth blobs 0.09 ms and 6.1 kB against 0.13 ms and 7.0 kB); zlib level 1 otherwise (10×
faster than level 6 on a noisy map). Either way a standard zlib stream, TIFF compression 8. Probabilities keep zlib
level 6."""


def _deflate_encoder(kind: str, level: int | None) -> Any:
    """The tile compressor of a map: zlib-ng at ``CLASS_MAP_ZLIB_NG_LEVEL`` for a class map at the default level,
    else zlib at ``level`` (default 1 for classes, 6 for probabilities)."""
    if kind == "classes" and level is None:
        try:
            from imagecodecs import zlibng_encode

            zlibng_encode(b"\0", level=CLASS_MAP_ZLIB_NG_LEVEL)
        except Exception:  # noqa: BLE001 - imagecodecs missing or built without zlib-ng
            pass
        else:
            return lambda block: bytes(zlibng_encode(block, level=CLASS_MAP_ZLIB_NG_LEVEL))
    chosen = level if level is not None else (1 if kind == "classes" else 6)
    return lambda block: zlib.compress(block, chosen)


REDUCE_CHUNK_PIXELS = 1 << 20
"""Rows to halve of more than this many pixels are split into column chunks halved by the compressing threads at
once (numpy releases the interpreter lock in its loops): a 384-row strip of an 8192-px-wide map takes 3 chunks."""


def _in_column_chunks(reduce: Any, rows: np.ndarray) -> np.ndarray:
    """``reduce`` of (2n, 2m, C) rows, computed on column chunks of an even width in parallel and joined (the same
    pixels: each output pixel depends on its own 2 × 2 block only)."""
    height, width = rows.shape[:2]
    if height * width <= REDUCE_CHUNK_PIXELS or width < 4:
        return reduce(rows)
    step = max(2, (REDUCE_CHUNK_PIXELS // max(height, 1)) // 2 * 2)
    out = np.empty((height // 2, width // 2) + rows.shape[2:], rows.dtype)

    def part(x: int) -> None:
        out[:, x // 2: (x + step) // 2] = reduce(rows[:, x: x + step])

    list(_compress_pool().map(part, range(0, width, step)))
    return out


def checked_strip(writer: Any, y0: int, strip: np.ndarray) -> np.ndarray:
    """``strip`` as (rows, width, channels), refused with a one-line error unless it is the uint8 strip of
    ``writer`` (its ``path``, ``width``, ``height``, ``channels``) that starts at its ``rows_written``."""
    strip = np.asarray(strip)
    if strip.ndim == 2:
        strip = strip[:, :, None]
    if strip.ndim != 3 or strip.shape[1:] != (writer.width, writer.channels) or strip.dtype != np.uint8:
        raise ValueError(f"{writer.path}: expected uint8 strips of shape (rows, {writer.width}, {writer.channels}), "
                         f"got {strip.dtype} {strip.shape}")
    if y0 != writer.rows_written:
        raise ValueError(f"{writer.path}: strip starts at row {y0}, expected row {writer.rows_written}")
    if y0 + strip.shape[0] > writer.height:
        raise ValueError(f"{writer.path}: strip rows {y0}..{y0 + strip.shape[0]} run past the map's {writer.height}")
    return strip


def ome_color(rgb: tuple[int, int, int]) -> int:
    """An RGB colour as OME-XML writes it: RGBA packed into a signed 32-bit integer."""
    r, g, b = (int(c) & 255 for c in rgb)
    value = (r << 24) | (g << 16) | (b << 8) | 255
    return value - (1 << 32) if value >= 1 << 31 else value


class ClosedOnExit:
    """``with writer:`` closes it (the file appears) when the block ends normally, aborts it on an exception."""

    def close(self) -> Any:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ClassMapWriter(ClosedOnExit):
    """Stream a class map (``kind="classes"``, one channel of class indices) or class probabilities
    (``kind="probabilities"``, one uint8 channel per class) into a tiled pyramidal OME-TIFF, strip by strip from
    the top; ``pixel_size_um`` is the map's own pixel size (full-resolution size × downsample), so QuPath places
    the map on the slide. With ``class_names`` the OME-XML carries each class's name and colour: a MapAnnotation
    ``class <index>`` → name, ``color <index>`` → ``#rrggbb`` for a class map; channel names and colours for
    probabilities. ``overlay`` (classes only) also writes an RGBA PNG of the map in the class colours, transparent
    where nothing was computed, and a JSON beside it with the full-resolution region it covers (``region``), for
    QuPath's viewer (``DLPixel.showOverlay``)."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        channels: int,
        *,
        pixel_size_um: float | None = None,
        channel_names: Sequence[str] | None = None,
        tile: int = 256,
        kind: MapKind = "classes",
        colors: Sequence[tuple[int, int, int]] | None = None,
        preview: str | Path | None = None,
        compression_level: int | None = None,
        class_names: Sequence[str] | None = None,
        overlay: str | Path | None = None,
        region: Sequence[float] | None = None,
        plane: tuple[int, int] = (0, 0),
    ) -> None:
        if kind not in ("classes", "probabilities"):
            raise ValueError(f"map kind must be 'classes' or 'probabilities', got {kind!r}")
        if kind == "classes" and channels != 1:
            raise ValueError(f"a class map has one channel, got {channels}")
        if width <= 0 or height <= 0 or channels <= 0:
            raise ValueError(f"invalid map size {width} x {height} x {channels}")
        if tile <= 0 or tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
        if channel_names is not None and len(channel_names) != channels:
            raise ValueError(f"{len(channel_names)} channel names for {channels} channels")
        self.path = Path(path)
        self.width, self.height, self.channels, self.tile = width, height, channels, tile
        self.kind: MapKind = kind
        self.pixel_size_um = pixel_size_um
        self.channel_names = list(channel_names) if channel_names is not None else None
        self.colors = list(colors) if colors is not None else None
        self.preview = Path(preview) if preview is not None else None
        self._encode = _deflate_encoder(kind, compression_level)
        self.class_names = list(class_names) if class_names is not None else None
        if overlay is not None and kind != "classes":
            raise ValueError("an overlay is made from a class map")
        self.overlay = Path(overlay) if overlay is not None else None
        self.region = [float(v) for v in region] if region is not None else [0.0, 0.0, float(width), float(height)]
        """(x, y, width, height) in full-resolution pixels that the map's pixels cover (map size × downsample)."""
        self.plane = (int(plane[0]), int(plane[1]))
        """(z, t) of the image plane the map was computed on (the overlay is shown there)."""
        self._overlay_step = max(1, math.ceil(max(width, height) / OVERLAY_MAX_SIZE))
        self._overlay_rows: list[np.ndarray] = []
        self.factors = pyramid_factors(height, width, tile)
        self._levels = [_Level(height // f, width // f, channels, tile) for f in self.factors]
        self._reduce = reduce_mode if kind == "classes" else reduce_mean
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.pid{os.getpid()}.", suffix=".tiles.tmp",
                                    dir=self.path.parent)
        self._spool_path = Path(name)
        self._spool: BinaryIO | None = os.fdopen(fd, "w+b")
        self._spool_size = 0
        self._in_flight: tuple[_Level, int, list[tuple[int, int]], list[Any], np.ndarray] | None = None
        self._done = False

    @property
    def rows_written(self) -> int:
        """Rows of level 0 received so far."""
        return self._levels[0].rows_in

    def add_strip(self, y0: int, strip: np.ndarray) -> None:
        """Add the next rows of the map; strips arrive in order, top to bottom, each starting where the last ended."""
        if self._spool is None:
            raise RuntimeError(f"{self.path}: the map writer is already closed")
        strip = checked_strip(self, y0, strip)
        if self.overlay is not None:
            k = self._overlay_step
            self._overlay_rows.append(strip[(-y0) % k:: k, ::k, 0].copy())
        self._push(0, strip)

    def _push(self, index: int, rows: np.ndarray) -> None:
        level = self._levels[index]
        rows = rows[: level.height - level.rows_in, : level.width]
        if rows.shape[0] == 0:
            return
        start = 0
        while start < rows.shape[0]:
            take = min(level.tile - level.filled, rows.shape[0] - start)
            level.buffer[level.filled : level.filled + take] = rows[start : start + take]
            level.filled += take
            level.rows_in += take
            start += take
            if level.filled == level.tile or level.rows_in == level.height:
                self._flush(level)
        if index + 1 < len(self._levels):
            if level.pending is not None:
                rows = np.concatenate([level.pending, rows])
            even = rows.shape[0] - rows.shape[0] % 2
            level.pending = rows[even:].copy() if even < rows.shape[0] else None
            if even:
                cols = self._levels[index + 1].width * 2
                self._push(index + 1, _in_column_chunks(self._reduce, rows[:even, :cols]))

    def _flush(self, level: _Level) -> None:
        """Hand the buffered row of tiles (zero-padded at the edges) to the compressing threads and let the caller
        go on: the row is written to the spool at the next flush (``_settle``), so compressing one row overlaps the
        next rows' copying and halving. One row is in flight at a time; its level fills a second buffer meanwhile."""
        assert self._spool is not None
        self._settle()
        ty = (level.rows_in - 1) // level.tile
        t = level.tile
        level.buffer[level.filled :] = 0
        rows = level.buffer
        level.buffer = level.spare if level.spare is not None else np.empty_like(rows)
        level.spare = None

        def compress(where: tuple[int, int]) -> bytes:
            c, tx = where
            block = np.zeros((t, t), np.uint8)
            part = rows[:, tx * t : (tx + 1) * t, c]
            block[:, : part.shape[1]] = part
            return self._encode(block)

        # The codecs release the GIL: the tiles of a row compress in parallel threads (the same bytes as one by
        # one), so on a GPU writing the map keeps up with the model; each thread holds one tile at a time.
        where = [(c, tx) for c in range(self.channels) for tx in range(level.n_tx)]
        pool = _compress_pool()
        self._in_flight = (level, ty, where, [pool.submit(compress, w) for w in where], rows)
        level.filled = 0

    def _settle(self) -> None:
        """Wait for the row in flight and append its compressed tiles to the spool."""
        if self._in_flight is None:
            return
        level, ty, where, futures, rows = self._in_flight
        self._in_flight = None
        assert self._spool is not None
        for (c, tx), future in zip(where, futures):
            data = future.result()
            level.offsets[c, ty, tx] = self._spool_size
            level.lengths[c, ty, tx] = len(data)
            self._spool.write(data)
            self._spool_size += len(data)
        level.spare = rows

    def _tiles(self, level: _Level) -> Iterator[bytes]:
        assert self._spool is not None
        for c in range(self.channels):
            for ty in range(level.n_ty):
                for tx in range(level.n_tx):
                    self._spool.seek(int(level.offsets[c, ty, tx]))
                    yield self._spool.read(int(level.lengths[c, ty, tx]))

    def _tile(self, level: _Level, c: int, ty: int, tx: int) -> np.ndarray:
        assert self._spool is not None
        self._spool.seek(int(level.offsets[c, ty, tx]))
        data = self._spool.read(int(level.lengths[c, ty, tx]))
        return np.frombuffer(zlib.decompress(data), np.uint8).reshape(level.tile, level.tile)

    def _preview_rgb(self, level: _Level) -> np.ndarray:
        """A whole (small) level in the class colours, decoded from the spool a tile at a time."""
        t = level.tile
        rgb = np.zeros((level.height, level.width, 3), np.uint8)
        for ty in range(level.n_ty):
            for tx in range(level.n_tx):
                block = np.stack([self._tile(level, c, ty, tx) for c in range(self.channels)], axis=2)
                h, w = min(t, level.height - ty * t), min(t, level.width - tx * t)
                rgb[ty * t : ty * t + h, tx * t : tx * t + w] = colorize(block[:h, :w], self.colors, kind=self.kind)
        step = max(1, math.ceil(max(rgb.shape[:2]) / PREVIEW_MAX_SIZE))
        return rgb[::step, ::step]

    def close(self) -> Path:
        """Write the OME-TIFF (and the preview, when one was asked for) and return its path; the file appears only
        when complete."""
        if self._done:
            return self.path
        if self._spool is None:
            raise RuntimeError(f"{self.path}: the map writer was aborted")
        try:
            if self.rows_written != self.height:
                raise ValueError(f"{self.path}: only {self.rows_written} of {self.height} rows were written")
            self._settle()
            self._spool.flush()
            self._write_tiff()
            if self.preview is not None:
                small = next((lv for lv in self._levels if max(lv.height, lv.width) <= PREVIEW_MAX_SIZE),
                             self._levels[-1])
                _write_png(self.preview, self._preview_rgb(small))
            if self.overlay is not None:
                self._write_overlay()
        except BaseException:
            self.abort()
            raise
        self._release()
        self._done = True
        return self.path

    def _write_overlay(self) -> None:
        """The overlay PNG (every k-th map pixel, RGBA) and its JSON: where it lies on the image, in full-resolution
        pixels, and the classes."""
        import json

        assert self.overlay is not None
        classes = np.concatenate(self._overlay_rows) if self._overlay_rows else np.zeros((0, 0), np.uint8)
        n = len(self.class_names) if self.class_names is not None else NOT_COMPUTED
        rgba = np.zeros((*classes.shape, 4), np.uint8)
        rgba[..., :3] = colorize(classes, self.colors)
        rgba[..., 3] = np.where(classes < n, 255, 0)
        with atomic_path(self.overlay) as tmp:
            Image.fromarray(rgba, "RGBA").save(tmp, format="PNG")
        k = self._overlay_step
        x, y, w, h = self.region
        sx, sy = w / self.width, h / self.height  # full-resolution pixels per map pixel
        info = {
            "png": self.overlay.name,
            "map": self.path.name,
            # Overlay pixel (i, j) is map pixel (i·k, j·k) and stands for k × k map pixels.
            "region": {"x": x, "y": y, "width": classes.shape[1] * k * sx, "height": classes.shape[0] * k * sy},
            "plane": list(self.plane),
            "map_pixel": [sx, sy],
            "step": k,
            "classes": [{"index": i, "name": name, "color": list(self.colors[i]) if self.colors else None}
                        for i, name in enumerate(self.class_names or [])],
        }
        json_path = self.overlay.with_suffix(".json")
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(json.dumps(info, indent=1))
        self._overlay_rows = []

    def _write_tiff(self) -> None:
        metadata: dict[str, Any] = {"axes": "CYX"}
        options: dict[str, Any] = {
            "tile": (self.tile, self.tile),
            "photometric": "minisblack",
            "compression": "zlib",
            "dtype": np.uint8,
            "maxworkers": 1,
        }
        if self.pixel_size_um is not None:
            size = float(self.pixel_size_um)
            metadata.update(PhysicalSizeX=size, PhysicalSizeXUnit="µm", PhysicalSizeY=size, PhysicalSizeYUnit="µm")
            options.update(resolution=(1e4 / size, 1e4 / size), resolutionunit="CENTIMETER")
        if self.channel_names is not None:
            metadata["Channel"] = {"Name": self.channel_names}
        if self.class_names is not None:
            if self.kind == "classes":
                table = {f"class {i}": name for i, name in enumerate(self.class_names)}
                if self.colors is not None:
                    table.update({f"color {i}": "#%02x%02x%02x" % tuple(int(v) for v in c)
                                  for i, c in enumerate(self.colors[: len(self.class_names)])})
                table[f"class {NOT_COMPUTED}"] = "(not computed)"
                metadata["MapAnnotation"] = table
                metadata["Description"] = "dlpixel class map: each pixel holds the index of its class"
            elif self.colors is not None and self.channels == len(self.colors):
                metadata["Channel"] = {"Name": self.channel_names or self.class_names,
                                       "Color": [ome_color(c) for c in self.colors]}
        bigtiff = self._spool_size > 2**31
        with atomic_path(self.path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tw:
            base = self._levels[0]
            tw.write(self._tiles(base), shape=(self.channels, base.height, base.width),
                     subifds=len(self._levels) - 1, metadata=metadata, **options)
            options.pop("resolution", None)
            options.pop("resolutionunit", None)
            for level in self._levels[1:]:
                tw.write(self._tiles(level), shape=(self.channels, level.height, level.width),
                         subfiletype=1, metadata=None, **options)

    def _release(self) -> None:
        if self._in_flight is not None:  # let its threads finish with the row before it is dropped
            for future in self._in_flight[3]:
                future.cancel() or future.exception()
            self._in_flight = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._spool_path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop everything written so far; the output path is left untouched."""
        self._release()


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours for ``n`` classes when the classifier has none; class i gets the same colour whatever n."""
    hues = (np.arange(n) * 0.618034 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), np.full(n, 230, np.uint8)], axis=1)[None]
    return [(int(r), int(g), int(b)) for r, g, b in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]]


def colorize(
    array: np.ndarray, colors: Sequence[tuple[int, int, int]] | None = None, *, kind: MapKind = "classes"
) -> np.ndarray:
    """RGB of a class map (H, W[, 1]) in the class colours (black where there is no class), or of probabilities
    (H, W, K) as the probability-weighted mix of the colours."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if kind == "classes":
        table = colors if colors is not None else default_colors(255)
        palette = np.zeros((256, 3), np.uint8)
        palette[: min(len(table), 256)] = np.asarray(table, np.uint8).reshape(-1, 3)[:256]
        return palette[array[:, :, 0]]
    k = array.shape[2]
    table = np.asarray(colors if colors is not None else default_colors(k), np.float32).reshape(k, 3)
    return np.clip(np.rint(array.astype(np.float32) @ table / 255.0), 0, 255).astype(np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb, "RGB").save(tmp, format="PNG")
    return path


def write_preview_png(
    path: str | Path,
    array: np.ndarray,
    colors: Sequence[tuple[int, int, int]] | None = None,
    *,
    kind: MapKind = "classes",
    max_size: int = PREVIEW_MAX_SIZE,
) -> Path:
    """A PNG preview of a (small) class map or probability map (see ``colorize``), shrunk by a whole factor to at
    most ``max_size`` on its longer side, so a map can be checked at a glance."""
    array = np.asarray(array)
    step = max(1, math.ceil(max(array.shape[:2]) / max_size))
    return _write_png(Path(path), colorize(array[::step, ::step], colors, kind=kind))
