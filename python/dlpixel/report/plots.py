"""Figures for the training report drawn without a plotting library: line charts as SVG, tiles as PNG/JPEG.

Everything returns text that goes straight into a self-contained HTML page (``data:`` URIs), so a report opens
anywhere, offline, with nothing beside it.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from PIL import Image

MAX_TILE_PX = 512
"""Tiles larger than this are shown downscaled, to keep the page a few megabytes."""


@dataclass
class Series:
    """One line of a chart: a value per epoch (None leaves a gap)."""

    label: str
    values: Sequence[float | None]
    color: str
    width: float = 2.0
    dash: str | None = None


def rgb_hex(color: Sequence[int]) -> str:
    r, g, b = (int(c) for c in color[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def readable_on_white(color: Sequence[int]) -> str:
    """The class colour, darkened when it is too light to see as a line on a white background."""
    r, g, b = (float(c) for c in color[:3])
    luminance = (0.299 * r + 0.587 * g + 0.114 * b) / 255
    if luminance > 0.75:
        scale = 0.75 / luminance
        r, g, b = r * scale, g * scale, b * scale
    return rgb_hex((round(r), round(g), round(b)))


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``lo``..``hi`` (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = first
    while v < hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


CHAR_WIDTH = 7.7
"""Widest character of a 12 px sans-serif tick label, in pixels (DejaVu Sans digits: 0.636 em)."""
Y_TITLE_X = 14
"""Baseline of the rotated y-axis title; its glyphs reach ``Y_TITLE_RIGHT`` (the 12 px font's descent)."""
Y_TITLE_RIGHT = Y_TITLE_X + 4
Y_TICK_GAP = 6
"""Pixels between a y tick label and the plot."""


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.1e}"


def line_chart(
    series: Sequence[Series],
    title: str,
    y_label: str,
    x_label: str = "epoch",
    markers: Sequence[tuple[float, str]] = (),
    y_range: tuple[float, float] | None = None,
    width: int = 760,
    height: int = 300,
) -> str:
    """An SVG line chart over epochs 1..N with a legend on the right and dashed vertical markers (e.g. best epoch).

    Each series' values are also kept as JSON in a ``data-values`` attribute, so the figure can be checked against
    the numbers it was drawn from.
    """
    right, top, bottom = 170, 30, 44
    n = max((len(s.values) for s in series), default=0)
    finite = [float(v) for s in series for v in s.values if v is not None and math.isfinite(v)]
    if y_range is not None:
        y_lo, y_hi = y_range
    elif finite:
        y_lo, y_hi = min(finite), max(finite)
        pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.1 or 0.5
        y_lo, y_hi = y_lo - pad, y_hi + pad
        if min(finite) >= 0 and y_lo < 0:
            y_lo = 0.0
    else:
        y_lo, y_hi = 0.0, 1.0
    yt = [t for t in nice_ticks(y_lo, y_hi) if y_lo - 1e-12 <= t <= y_hi + 1e-12] or [y_lo, y_hi]
    # The axis title stands left of the widest tick label, never on it ("5.0e-04" is wider than "0.5").
    left = max(62, math.ceil(Y_TITLE_RIGHT + Y_TICK_GAP + max(len(_fmt(t)) for t in yt) * CHAR_WIDTH + 2))
    pw, ph = width - left - right, height - top - bottom
    x_lo, x_hi = (0.5, 1.5) if n <= 1 else (1.0, float(n))
    xt = [t for t in nice_ticks(x_lo, x_hi, 8) if t >= 1 and t == int(t) and t <= max(n, 1)] or [1.0]

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * ph

    out = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'),
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{left - Y_TICK_GAP}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in xt:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="#555"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 17}" text-anchor="middle">{int(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text transform="translate({Y_TITLE_X},{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f"{escape(y_label)}</text>")
    for x, label in markers:
        px = sx(x)
        right_half = px > left + pw / 2
        tx, anchor = (px - 4, "end") if right_half else (px + 4, "start")
        out.append(f'<g class="marker" data-x="{x:g}"><line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" '
                   f'y2="{top + ph}" stroke="#333" stroke-dasharray="4 3"/>'
                   f'<text x="{tx:.1f}" y="{top + 12}" fill="#333" text-anchor="{anchor}">{escape(label)}</text>'
                   "</g>")
    for i, s in enumerate(series):
        values = [None if v is None or not math.isfinite(v) else float(v) for v in s.values]
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        parts = [f'<g class="series" data-label={quoteattr(s.label)} data-values={quoteattr(json.dumps(values))}>']
        run: list[str] = []
        for e, v in enumerate(values, 1):
            if v is None:
                if run:
                    parts.append(_polyline(run, s, dash))
                run = []
                continue
            run.append(f"{sx(e):.1f},{sy(v):.1f}")
            if n <= 40:
                parts.append(f'<circle cx="{sx(e):.1f}" cy="{sy(v):.1f}" r="2.5" fill="{s.color}"/>')
        if run:
            parts.append(_polyline(run, s, dash))
        parts.append("</g>")
        out.extend(parts)
        ly = top + 8 + 18 * i
        lx = left + pw + 14
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{s.color}" '
                   f'stroke-width="{s.width}"{dash}/>')
        out.append(f'<text x="{lx + 28}" y="{ly + 4}">{escape(s.label[:18])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _polyline(points: list[str], s: Series, dash: str) -> str:
    return (f'<polyline points="{" ".join(points)}" fill="none" stroke="{s.color}" '
            f'stroke-width="{s.width}" stroke-linejoin="round"{dash}/>')


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _encode(array: np.ndarray, fmt: str) -> str:
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_data_uri(array: np.ndarray) -> str:
    """A uint8 (H, W), (H, W, 3) or (H, W, 4) array as a PNG ``data:`` URI."""
    return _encode(array.astype(np.uint8), "PNG")


def jpeg_data_uri(array: np.ndarray) -> str:
    """A uint8 (H, W, 3) or (H, W) array as a JPEG ``data:`` URI (for photographic tiles, much smaller than PNG)."""
    return _encode(array.astype(np.uint8), "JPEG")


def _shrink_factor(shape: Sequence[int]) -> int:
    return max(1, math.ceil(max(shape[0], shape[1]) / MAX_TILE_PX))


def display_image(image: np.ndarray) -> np.ndarray:
    """A normalised model input (H, W, C float) as uint8 for the eye: the first three channels as RGB (or the first
    as grey when there are fewer), stretched jointly between their 0.5th and 99.5th percentiles."""
    if image.ndim == 2:
        image = image[..., None]
    shown = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    shown = np.nan_to_num(shown.astype(np.float32))
    lo, hi = np.percentile(shown, [0.5, 99.5])
    scaled = np.clip((shown - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    out = (scaled * 255 + 0.5).astype(np.uint8)
    if out.shape[-1] == 1:
        out = out[..., 0]
    k = _shrink_factor(out.shape)
    if k > 1:
        out = np.asarray(Image.fromarray(out).resize((out.shape[1] // k, out.shape[0] // k), Image.Resampling.LANCZOS))
    return out


def colour_mask(mask: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """A class-index mask (H, W) as RGBA in the class colours; unlabelled (255) and unknown indices transparent."""
    k = _shrink_factor(mask.shape)
    if k > 1:
        mask = mask[k // 2 :: k, k // 2 :: k]
    lut = np.zeros((256, 4), np.uint8)
    for i, c in enumerate(colors[:255]):
        lut[i, :3] = [int(v) for v in c[:3]]
        lut[i, 3] = 255
    return lut[mask]
