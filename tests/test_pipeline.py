"""``run_ahead``: a producer in a background thread, exceptions and early stops carried across."""

from __future__ import annotations

import threading
import time

import pytest
from dlpixel.errors import Cancelled
from dlpixel.runtime.pipeline import run_ahead


def test_items_arrive_in_order_and_are_produced_in_another_thread() -> None:
    threads: list[str] = []

    def produce():
        for i in range(50):
            threads.append(threading.current_thread().name)
            yield i

    assert list(run_ahead(produce(), depth=3, name="ahead-test")) == list(range(50))
    assert set(threads) == {"ahead-test"}


def test_the_producer_runs_at_most_depth_items_ahead() -> None:
    made: list[int] = []

    def produce():
        for i in range(20):
            made.append(i)
            yield i

    it = run_ahead(produce(), depth=2)
    assert next(it) == 0
    time.sleep(0.3)
    # item 0 taken, items 1-2 wait in the queue, item 3 is made and waits to be put
    assert len(made) <= 4
    it.close()


def test_an_exception_in_the_producer_reaches_the_caller_after_the_items_before_it() -> None:
    def produce():
        yield 1
        yield 2
        raise Cancelled("stopped by the user")

    got = []
    with pytest.raises(Cancelled, match="stopped by the user"):
        for item in run_ahead(produce()):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_closes_the_producer_and_its_thread() -> None:
    closed = threading.Event()

    def produce():
        try:
            for i in range(1000):
                yield i
        finally:
            closed.set()

    before = threading.active_count()
    it = run_ahead(produce(), depth=2)
    for item in it:
        if item == 3:
            break
    it.close()
    assert closed.is_set()
    assert threading.active_count() == before


def test_a_short_switch_interval_holds_while_any_user_runs_and_is_then_restored() -> None:
    import sys

    from dlpixel.runtime.pipeline import short_switch_interval

    before = sys.getswitchinterval()
    with short_switch_interval(0.0002):
        assert sys.getswitchinterval() == pytest.approx(0.0002)
        with short_switch_interval(0.0002):
            pass
        assert sys.getswitchinterval() == pytest.approx(0.0002)  # the inner user leaving restores nothing
    assert sys.getswitchinterval() == before


def test_device_path_strips_computed_beside_the_writer_equal_those_computed_in_its_thread() -> None:
    """``ahead_of_writer`` on the device path (PyTorch on CPU tensors here): strips come from a background thread
    with the short switch interval, the same strips as in the caller's thread, and closing it early stops the
    producer and restores the interval."""
    import sys

    import numpy as np
    import torch
    from conftest import CLASSES, synthetic_image
    from dlpixel.classifiers.metadata import ClassifierMetadata, ClassInfo
    from dlpixel.config import NormalizationConfig
    from dlpixel.data.images import _ArrayLevel
    from dlpixel.data.preprocessing import Preprocessing, stats_for
    from dlpixel.inference.backends import TorchBackend
    from dlpixel.inference.predictor import Predictor

    class Source:
        name = "synthetic"
        downsamples = (1.0,)

        def __init__(self, img: np.ndarray) -> None:
            self.level = _ArrayLevel(img)
            self.height, self.width = img.shape[:2]
            self.n_channels = img.shape[2]
            self.dtype = img.dtype

        def read_region(self, downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray:
            out = np.zeros((h, w, self.n_channels), self.dtype)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
            out[y0 - y: y1 - y, x0 - x: x1 - x] = self.level.read(y0, y1, x0, x1)
            return out

    img, _ = synthetic_image()
    src = Source(img)
    names = ["Red", "Green", "Blue"]
    meta = ClassifierMetadata(
        name="k", input_channels=names, tile_size=64, downsample=1.0,
        classes=[ClassInfo(index=i, name=n, color=(200, 10 * i, 0)) for i, n in enumerate(CLASSES)],
        preprocessing=Preprocessing(channels=[0, 1, 2], channel_names=names, normalization=NormalizationConfig()))
    torch.manual_seed(0)
    backend = TorchBackend(torch.nn.Conv2d(3, len(CLASSES), 3, padding=1), "cpu", "fp32")
    stats = stats_for(src, meta.preprocessing)
    before = sys.getswitchinterval()
    runs = {}
    for beside in (False, True):
        p = Predictor(backend, meta, 64, 16, batch_size=5, on_device=True)
        p.writer_thread = beside
        ahead = p.ahead_of_writer(p.strips(src, stats))
        runs[beside] = [(s.y, s.classes().copy()) for s in ahead]
        assert sys.getswitchinterval() == before
    assert [y for y, _ in runs[True]] == [y for y, _ in runs[False]] and len(runs[True]) > 2
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(runs[True], runs[False], strict=True))
    p = Predictor(backend, meta, 64, 16, batch_size=5, on_device=True)
    ahead = p.ahead_of_writer(p.strips(src, stats))
    next(ahead)
    assert sys.getswitchinterval() < before
    ahead.close()
    assert sys.getswitchinterval() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("dlpixel-apply")]


def test_work_in_background_hands_on_its_result_or_its_error() -> None:
    from dlpixel.errors import DataError
    from dlpixel.runtime.pipeline import in_background, resolved

    started = threading.Event()

    def slow(x: int) -> int:
        started.set()
        return x * 2

    future = in_background(slow, 21)
    assert started.wait(10) and resolved(future) == 42 and resolved(7) == 7

    def bad() -> None:
        raise DataError("image 'x' has no pixels")

    with pytest.raises(DataError, match="no pixels"):
        resolved(in_background(bad))
