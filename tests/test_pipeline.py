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
