"""The map writer in a process of its own: ``ClassMapWriter`` behind a pipe.

On a GPU the thread that launches the model shares the interpreter lock with every other thread of the process:
each PyTorch call gives the lock up and takes it back, and while the map writer's Python (strip copies, the 2 × 2
mode of each pyramid level, handing tiles to its compressing threads) holds it, the launching thread waits and
the device idles. ``MapWriterProcess`` takes the same calls as ``ClassMapWriter`` and runs it in a child
process: each strip crosses one pipe as raw bytes (a 384 × 8192 class strip is 3 MB, one copy), and the child
compresses and builds the pyramid with its own interpreter lock and threads. The file it writes is byte for byte
the file ``ClassMapWriter`` writes in this process (tests compare them).

The child (``runtime.children``) is started once and kept for the next maps of the run. It ignores Ctrl-C: the
caller aborts it, and the child removes its temporary files as ``ClassMapWriter.abort`` does. When the caller
dies, the child reads the end of its pipe, aborts and exits. Errors in the child reach the caller at its next
call, with their type (``OSError`` keeps its errno and message, so "disk full" reads the same as in this process).
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.children import START_TIMEOUT_S, Child, ChildError, ChildPool, error_info, incoming
from .outputs_map import ClassMapWriter, ClosedOnExit, checked_strip

_pool = ChildPool("dlpixel.inference.map_process", keep=1, setting="map_writer")


def prestart() -> None:
    """Start a child now, without waiting for it: it imports its libraries while the caller loads its model, and
    the next writer takes it."""
    _pool.prestart(1)


class MapWriterProcess(ClosedOnExit):
    """``ClassMapWriter`` (same arguments, same calls, same file) run by a child process."""

    def __init__(self, path: str | Path, width: int, height: int, channels: int, **options: Any) -> None:
        self.path = Path(path)
        self.width, self.height, self.channels = width, height, channels
        self._rows = 0
        self._done = False
        self._child: Child | None = _pool.take()
        try:
            self._child.ask(("open", (str(self.path), width, height, channels), options))
        except BaseException:
            self._release_child()
            raise

    @property
    def rows_written(self) -> int:
        """Rows of level 0 sent so far."""
        return self._rows

    def add_strip(self, y0: int, strip: np.ndarray) -> None:
        """As ``ClassMapWriter.add_strip``; the strip is copied into the pipe and written by the child meanwhile."""
        child = self._check_open()
        strip = checked_strip(self, y0, strip)
        if child.recv.poll():  # the child failed on an earlier strip
            self._fail(child)
        try:
            child.send.send(("strip", y0, strip.shape))
            child.send.send_bytes(memoryview(np.ascontiguousarray(strip).reshape(-1)))
        except BaseException:
            # Half a message may be in the pipe: the child cannot go on. Closing the pipe makes it abort (its
            # spool removed) and exit.
            self._child = None
            self._stop(child)
            raise
        self._rows += strip.shape[0]

    def _check_open(self) -> Child:
        if self._child is None:
            raise RuntimeError(f"{self.path}: the map writer is already closed")
        return self._child

    def _fail(self, child: Child) -> None:
        """Raise the error the child reported for an earlier strip, leaving nothing behind."""
        try:
            child.answer(START_TIMEOUT_S)
            error: BaseException = ChildError("the map writer process answered out of turn")
        except BaseException as err:  # noqa: BLE001 - the child's own error is the one to raise
            error = err
        self.abort()
        raise error

    def close(self) -> Path:
        """Write the OME-TIFF (and the preview or overlay) and return its path, as ``ClassMapWriter.close``."""
        if self._done:
            return self.path
        child = self._check_open()
        try:
            path = Path(child.ask(("close",)))
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._release_child()
        return path

    def abort(self) -> None:
        """Drop everything written so far; the output path is left untouched."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.send.send(("abort",))
            while True:  # an error the child sent for an earlier strip may come first
                kind, _ = child.recv.recv() if child.recv.poll(START_TIMEOUT_S) else ("timeout", None)
                if kind != "error":
                    break
        except (OSError, EOFError):  # a child that is gone or cannot answer is stopped (it aborts when its pipe
            self._stop(child)        # closes)
            return
        except BaseException:
            self._stop(child)
            raise
        if kind == "ok":
            _pool.give_back(child)
        else:
            self._stop(child)

    def _stop(self, child: Child) -> None:
        """Stop a child that cannot go on; what a killed one could not remove (its spool, a half-written file:
        hidden temporaries named with its process id) is removed here."""
        child.stop()
        for leftover in self.path.parent.glob(f".*.pid{child.proc.pid}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def _release_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            _pool.give_back(child)


def open_map_writer(separate_process: bool, path: str | Path, width: int, height: int, channels: int,
                    **options: Any) -> Any:
    """A ``MapWriterProcess`` when ``separate_process`` (``ClassMapWriter`` in this process where the child
    cannot start, with a warning), else a ``ClassMapWriter``."""
    if separate_process:
        try:
            return MapWriterProcess(path, width, height, channels, **options)
        except ChildError as err:
            import warnings

            warnings.warn(f"{err}; writing the map in this process instead", RuntimeWarning, stacklevel=2)
    return ClassMapWriter(path, width, height, channels, **options)


def serve(commands: Connection, answers: Connection) -> None:
    """The child's loop: one writer at a time, until the caller closes the pipe (or SIGTERM); an unfinished map is
    then aborted, its temporary files removed."""
    writer: ClassMapWriter | None = None
    failed = False
    try:
        for message in incoming(commands):
            kind = message[0]
            if kind == "strip":
                data = commands.recv_bytes()
                if failed or writer is None:
                    continue  # the caller reads the error sent for the first failure and aborts
                try:
                    y0, shape = message[1], message[2]
                    writer.add_strip(y0, np.frombuffer(data, np.uint8).reshape(shape))
                except Exception as err:  # noqa: BLE001 - reported to the caller, once
                    failed = True
                    answers.send(("error", error_info(err)))
                continue
            try:
                if kind == "open":
                    (path, width, height, channels), options = message[1], message[2]
                    if writer is not None:
                        writer.abort()
                    writer, failed = None, False
                    writer = ClassMapWriter(path, width, height, channels, **options)
                    answers.send(("ok", None))
                elif kind == "close":
                    if failed:
                        continue  # its error, sent once when it happened, is the answer the caller reads
                    if writer is None:
                        raise ChildError("the map writer was never opened")
                    closing, writer = writer, None
                    answers.send(("ok", str(closing.close())))  # close() aborts by itself when it fails
                elif kind == "abort":
                    if writer is not None:
                        writer.abort()
                    writer, failed = None, False
                    answers.send(("ok", None))
                else:
                    raise ChildError(f"unknown command {kind!r}")
            except Exception as err:  # noqa: BLE001 - reported to the caller
                answers.send(("error", error_info(err)))
    finally:
        if writer is not None:
            writer.abort()
