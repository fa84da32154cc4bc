"""Two stages of a pipeline on two threads: what computes a result and what writes it.

``apply`` produces strips of a map (reads, the model, blending; on a GPU each strip waits on the device) and writes
them (compression, pyramid levels, objects). In one thread the writer's work leaves the model idle; with
``run_ahead`` the producer runs in a background thread a few items ahead of the caller, so the model computes the
next strips while the caller writes the last ones. Exceptions (a cancel included) reach the caller as if raised
in its own loop; when the caller stops early, the producer is closed before ``run_ahead`` returns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_POLL_S = 0.1
"""How often a waiting side looks whether the other has stopped (a Ctrl-C reaches a waiting caller within this)."""

_END = object()


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
