"""Two stages of a pipeline on two threads: what computes a result and what writes it.

``apply`` produces strips of a map (reads, the model, blending; on a GPU each strip waits on the device) and writes
them (compression, pyramid levels, objects). In one thread the writer's work leaves the model idle; with
``run_ahead`` the producer runs in a background thread a few items ahead of the caller, so the model computes the
next strips while the caller writes the last ones. Exceptions (a cancel included) reach the caller as if raised
in its own loop; when the caller stops early, the producer is closed before ``run_ahead`` returns.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_POLL_S = 0.1
"""How often a waiting side looks whether the other has stopped (a Ctrl-C reaches a waiting caller within this)."""

_END = object()

SWITCH_INTERVAL_S = 0.0005
"""The interpreter's thread switch interval while a device pipeline runs (Python's default is 0.005 s). Each
PyTorch call gives up the interpreter lock and takes it back; when a writer or reader thread runs Python code at
that moment, the launching thread waits up to one interval, and a batch makes dozens of such calls."""

_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def short_switch_interval(seconds: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    """Lower the interpreter's switch interval to at most ``seconds`` while the block runs (nested and concurrent
    uses share one change; the last to leave restores the interval)."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, seconds))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


def run_ahead(items: Iterable[T], depth: int = 2, name: str = "dlpixel-ahead") -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the caller."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put((True, item)):
                    break
            else:
                put((True, _END))
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
            put((False, err))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            try:
                ok, item = box.get(timeout=_POLL_S)
            except queue.Empty:
                if not worker.is_alive() and box.empty():
                    raise RuntimeError(f"{name}: the producer stopped without an end mark") from None
                continue
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        worker.join()


_background: ThreadPoolExecutor | None = None


def in_background(fn: Callable[..., T], *args: Any) -> Future[T]:
    """``fn(*args)`` computed in a background thread (one pool for the process); its result (or exception) in the
    future."""
    global _background
    if _background is None:
        _background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dlpixel-background")
    return _background.submit(fn, *args)


def resolved(value: T | Future[T]) -> T:
    """``value``, or the result of the future it is (waiting for it)."""
    return value.result() if isinstance(value, Future) else value
