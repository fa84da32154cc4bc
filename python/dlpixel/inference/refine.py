"""Watershed refinement of blended probability strips: boundaries move to the image's strongest edge.

Pixels whose probability of one class exceeds ``MARKER_CONFIDENCE`` seed that class; every other computed pixel
takes the class whose flood (``skimage.segmentation.watershed``) reaches it first over the gradient magnitude of
the classifier's normalised input (Gaussian of ``GRADIENT_SIGMA`` px, Sobel, summed over channels). The refined
probabilities are ``0.5 · p + 0.5 · one-hot(watershed class)``, so their argmax is the watershed's class and
confident pixels keep their call.

Streaming: strips from ``Predictor.strips`` are buffered into bands of ``BAND_ROWS`` rows, each refined with
``MARGIN_ROWS`` rows of context above and below (probabilities and image), and handed on in order; memory is a
band of the map's width. The result equals refining the whole map at once wherever no uncertain region (a
connected area of pixels below the confidence) reaches further than the margin beyond a band; such regions are a
few pixels wide along class boundaries. The gradient of each band is computed from image rows read with
``GRADIENT_CONTEXT`` extra rows, so it equals the whole image's gradient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..data.base import ImageSource
from ..data.geometry import read_pixels
from ..data.preprocessing import ChannelStats, Preprocessing, normalize
from ..runtime.pipeline import resolved
from .predictor import Strip

MARKER_CONFIDENCE = 0.95
"""Probability above which a pixel seeds its class."""
GRADIENT_SIGMA = 1.5
"""Gaussian smoothing (pixels at the classifier's resolution) before the gradient magnitude that is flooded."""
BAND_ROWS = 256
MARGIN_ROWS = 32
GRADIENT_CONTEXT = 9
"""Rows beyond a band read for its gradient: the Gaussian's reach (OpenCV: 4 sigma) plus the Sobel's."""


def gradient_magnitude(image: np.ndarray, sigma: float = GRADIENT_SIGMA) -> np.ndarray:
    """(H, W, C) float32 -> (H, W) float32: the sum over channels of |Sobel(Gaussian_sigma(channel))|."""
    import cv2

    out = np.zeros(image.shape[:2], np.float32)
    for c in range(image.shape[2]):
        g = cv2.GaussianBlur(np.ascontiguousarray(image[..., c], np.float32), (0, 0), sigma,
                             borderType=cv2.BORDER_REFLECT)
        out += np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, borderType=cv2.BORDER_REFLECT),
                        cv2.Sobel(g, cv2.CV_32F, 0, 1, borderType=cv2.BORDER_REFLECT))
    return out


def watershed_classes(probs: np.ndarray, computed: np.ndarray, gradient: np.ndarray,
                      confidence: float = MARKER_CONFIDENCE) -> np.ndarray:
    """(K, H, W) probabilities, (H, W) computed mask and gradient -> (H, W) int class per pixel (argmax where no
    marker reaches; meaningless where not computed)."""
    from skimage.segmentation import watershed

    best = probs.argmax(0)
    markers = np.zeros(best.shape, np.int32)
    sure = (probs.max(0) > confidence) & computed
    markers[sure] = best[sure] + 1
    if not sure.any():
        return best
    labels = watershed(gradient, markers, mask=computed)
    return np.where(labels > 0, labels - 1, best)


def refine_probabilities(probs: np.ndarray, computed: np.ndarray, gradient: np.ndarray,
                         confidence: float = MARKER_CONFIDENCE) -> np.ndarray:
    """``0.5 · probs + 0.5 · one-hot(watershed_classes)`` (K, H, W) float32; 0 where not computed."""
    classes = watershed_classes(probs, computed, gradient, confidence)
    out = 0.5 * probs.astype(np.float32)
    for k in range(len(out)):
        out[k][classes == k] += 0.5
    out[:, ~computed] = 0
    return out


class _ImageRows:
    """Normalised image rows at the classifier's resolution and their gradient, read as needed."""

    def __init__(self, source: ImageSource, pre: Preprocessing, stats: ChannelStats, downsample: float,
                 height: int, x0: int, width: int, sigma: float):
        self.source, self.pre, self.stats, self.ds = source, pre, stats, downsample
        self.height, self.x0, self.width, self.sigma = height, x0, width, sigma
        self.n = len(stats.offset)

    def gradient(self, y0: int, y1: int) -> np.ndarray:
        """Gradient magnitude of map rows [y0, y1), equal to that of the whole map (reflected at its edges)."""
        r0, r1 = max(0, y0 - GRADIENT_CONTEXT), min(self.height, y1 + GRADIENT_CONTEXT)
        raw = read_pixels(self.source, 0.0, 0.0, self.ds, self.x0, r0, self.width, r1 - r0,
                          self.pre.channels[: self.n])
        image = normalize(np.asarray(raw)[..., : self.n], self.pre, self.stats)
        return gradient_magnitude(image, self.sigma)[y0 - r0: y1 - r0]


def watershed_strips(strips: Iterable[Any], source: ImageSource, pre: Preprocessing,
                     stats: ChannelStats | Future[ChannelStats],
                     downsample: float, height: int, band: int = BAND_ROWS, margin: int = MARGIN_ROWS,
                     confidence: float = MARKER_CONFIDENCE, sigma: float = GRADIENT_SIGMA) -> Iterator[Strip]:
    """Refined strips of probabilities from ``Predictor.strips`` (consecutive rows of the same columns; ``height``:
    the map's height), in order. ``pre``/``stats``: the classifier's preprocessing with this image's channels (the
    statistics may be a future, waited for at the first strip)."""
    image: _ImageRows | None = None
    buf_y = 0                      # map row of the buffer's first row
    probs: np.ndarray | None = None  # (K, rows, width)
    computed: np.ndarray | None = None
    emitted = 0                    # map rows before this are handed on

    def refine(end: int, last: bool) -> Strip:
        """Refine buffer rows up to map row ``end`` (+ margin unless ``last``), hand on [emitted, end)."""
        nonlocal buf_y, probs, computed, emitted
        assert probs is not None and computed is not None and image is not None
        stop = buf_y + probs.shape[1] if last else min(buf_y + probs.shape[1], end + margin)
        p, c = probs[:, : stop - buf_y], computed[: stop - buf_y]
        out = refine_probabilities(p, c, image.gradient(buf_y, stop), confidence)
        lo, hi = emitted - buf_y, end - buf_y
        strip = Strip(emitted, np.ascontiguousarray(out[:, lo:hi]), c[lo:hi].copy())
        emitted = end
        keep = max(0, end - margin - buf_y)    # rows above the next band's margin are no longer needed
        probs, computed = probs[:, keep:], computed[keep:]
        buf_y += keep
        return strip

    for s in strips:
        planes, done = np.asarray(s.planes, np.float32), np.asarray(s.computed, bool)
        if probs is None:
            buf_y = emitted = s.y
            probs, computed = planes.copy(), done.copy()
            image = _ImageRows(source, pre, resolved(stats), downsample, height, 0, planes.shape[2], sigma)
        else:
            probs = np.concatenate([probs, planes], 1)
            computed = np.concatenate([computed, done], 0)
        while buf_y + probs.shape[1] >= emitted + band + margin:
            yield refine(emitted + band, last=False)
    if probs is not None and buf_y + probs.shape[1] > emitted:
        yield refine(buf_y + probs.shape[1], last=True)
