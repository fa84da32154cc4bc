"""Rows of tiles read and decoded by child processes, straight into the caller's (page-locked) buffers.

The device path of ``apply`` reads each row of tiles as one block (``reading.read_raw_block``). In threads of the
caller, the decoding's Python (tifffile's segment bookkeeping, numpy placing each decoded segment) holds the
interpreter lock that the thread launching the model needs; in children (``runtime.children``) it holds their own.
A child opens the image file itself (``FileImageSource`` crosses the pipe as its path and plane), reads the block
its caller asks for, and sends it back as raw bytes, which the caller's reading thread receives straight into the
buffer it uploads from: no copy in between. Blocks are equal to those read in this process (tests compare them).
Only file images can be read this way; QuPath's image servers live in this process's JVM.
"""

from __future__ import annotations

import os
import pickle
import queue
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..data.base import ImageSource
from ..data.preprocessing import Preprocessing
from ..runtime.children import START_TIMEOUT_S, Child, ChildError, ChildPool, error_info, incoming

_pool = ChildPool("dlpixel.inference.read_process", keep=8, setting="row_readers")


def readable_in_children(source: ImageSource) -> bool:
    """Whether a child can open ``source`` itself: an image file (not QuPath's servers, not an in-memory array)."""
    from ..data.images import FileImageSource

    return type(source) is FileImageSource


def prestart(n: int) -> None:
    """Start ``n`` children now without waiting for them (they import while the caller loads its model)."""
    _pool.prestart(n)


Allocate = Callable[[tuple[int, ...], np.dtype], tuple[Any, np.ndarray]]
"""(shape, dtype) → (the buffer to hand on, a writable C-contiguous numpy view of it)."""


class RowReaders:
    """``n`` children reading rows of tiles of one image; ``read`` may be called from several threads at once,
    each call using one child. ``close`` gives the children back for the next image."""

    def __init__(self, source: ImageSource, pre: Preprocessing, downsample: float, tile: int, n: int) -> None:
        self._free: queue.SimpleQueue[Child] = queue.SimpleQueue()
        self._all: list[Child] = []
        _pool.keep = max(_pool.keep, n)  # kept for the next image
        try:
            for _ in range(n):
                self._all.append(_pool.take())
        except BaseException:
            self.close()
            raise
        # The source crosses pickled apart, so that a file the child cannot open is its error, not its end.
        recipe = pickle.dumps(source)
        for child in self._all:  # every child opens the file at once
            child.send.send(("open", recipe, pre, downsample, tile))
        failure: BaseException | None = None
        for child in list(self._all):  # every answer is read, so no child is left with one pending
            try:
                child.answer(START_TIMEOUT_S)
                self._free.put(child)
            except BaseException as err:  # noqa: BLE001 - the first is raised below
                failure = failure or err
                if isinstance(err, ChildError):
                    self._all.remove(child)
                    child.stop()
        if failure is not None:
            self.close()
            raise failure

    def read(self, xs: Sequence[int], y: int, allocate: Allocate) -> tuple[Any, list[int]]:
        """``read_raw_block`` of the row at ``y`` with tiles at ``xs``: the buffer from ``allocate`` filled with the
        block, and the column where each tile starts in it."""
        while True:
            try:
                child = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._all:  # every child stopped (each failure was raised where it happened)
                    raise ChildError("every row reader process stopped; rerun, or set row_readers: "
                                     "same_process") from None
        state = "asking"
        try:
            shape, dtype, offsets = child.ask(("read", list(xs), y))
            state = "receiving"  # until the whole block has crossed, a failure leaves bytes in the pipe
            buffer, view = allocate(tuple(shape), np.dtype(dtype))
            child.read_into(view)
            state = "done"
            return buffer, offsets
        except Exception as err:
            if state == "asking" and not isinstance(err, ChildError):
                state = "done"  # the child's own error (a bad region, say): it sent no block and reads on
            raise
        finally:
            if state == "done":
                self._free.put(child)
            else:
                self._all.remove(child)
                child.stop()

    def close(self) -> None:
        children, self._all = self._all, []
        for child in children:
            _pool.give_back(child)


def serve(commands: Connection, answers: Connection) -> None:
    """The child's loop: open an image (``open``), read blocks of it (``read``), until the pipe closes."""
    from .reading import read_raw_block

    current: tuple[Any, ...] | None = None
    fd = answers.fileno()
    try:
        for message in incoming(commands):
            kind = message[0]
            try:
                if kind == "open":
                    if current is not None:
                        current[0].close()
                    current = None
                    _, recipe, pre, downsample, tile = message
                    current = (pickle.loads(recipe), pre, downsample, tile)
                    answers.send(("ok", None))
                    continue
                if kind != "read" or current is None:
                    raise RuntimeError(f"unexpected command {kind!r}")
                source, pre, downsample, tile = current
                block, offsets = read_raw_block(source, pre, downsample, message[1], message[2], tile)
                block = np.ascontiguousarray(block)
                if not block.dtype.isnative:  # the caller's buffer is in its machine's byte order
                    block = block.astype(block.dtype.newbyteorder("="))
            except Exception as err:  # noqa: BLE001 - reported to the caller
                answers.send(("error", error_info(err)))
                continue
            answers.send(("ok", (block.shape, block.dtype.str, list(offsets))))
            view = memoryview(block).cast("B")
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
    finally:
        if current is not None:
            current[0].close()
