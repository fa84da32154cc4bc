"""Child processes that work for the caller over two pipes, each with an interpreter lock of its own.

On a GPU the thread that launches the model makes many short PyTorch calls, each giving up the interpreter lock
and taking it back; every other thread of the process that runs Python (decoding rows, compressing the map) makes
it wait. Work moved into a child leaves the lock to it. A child is a plain ``python -m dlpixel.runtime.children
MODULE`` (not ``multiprocessing``: nothing of the caller's ``__main__`` is imported again, and a process that hosts
QuPath's JVM is never forked) that runs ``MODULE.serve(commands, answers)``: commands arrive pickled on one pipe,
answers go back on the other, and bulk data crosses as raw bytes after a message that says how many (read straight
into the caller's buffer, ``Child.read_into``). Children are started once and kept for the rest of the run
(``ChildPool``). They ignore Ctrl-C (the caller decides) and end, cleaning up, when their pipe closes or on
SIGTERM.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import DlpixelError

PIPE_BYTES = 1 << 20
"""Capacity asked for each pipe (Linux gives any process up to 1 MiB): 3 MB cross in three writes, not 48."""
START_TIMEOUT_S = 120.0
"""How long to wait for a new child's first answer (its imports: about a second)."""


class ChildError(DlpixelError):
    """A child stopped, or did not answer in time."""


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or a lower system limit: the default pipe works, in more writes


class Child:
    """One child process serving ``module`` and the two pipes to it."""

    def __init__(self, module: str, setting: str = "") -> None:
        self.module = module
        self.setting = setting
        """The setting that does without this kind of child (named in the error when one stops)."""
        if not Path(sys.executable or "?").name.lower().startswith("python"):
            # Embedded in another program: sys.executable is that program, which must not be started again.
            raise ChildError(f"no Python interpreter to start a {module} process with (sys.executable is "
                             f"{sys.executable!r})")
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        _grow_pipe(to_child_w)
        _grow_pipe(from_child_w)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                              if p])
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dlpixel.runtime.children", module, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, env=env, close_fds=True,
            )
        except BaseException:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.send = Connection(to_child_w, readable=False, writable=True)
        self.recv = Connection(from_child_r, readable=True, writable=False)
        self.ready = False
        """Whether its first answer ("ready", sent when its imports are done) has been read."""

    def stopped(self) -> ChildError:
        """The error that says this child is gone, and what to do."""
        code = self.proc.poll()
        why = f"exit code {code}" + ("; killed, perhaps for lack of memory" if code == -9 else "")
        fix = f"rerun, or set {self.setting}: same_process" if self.setting else "rerun"
        return ChildError(f"the {self.module} process stopped unexpectedly ({why}); {fix}")

    def ask(self, message: tuple, timeout: float | None = None) -> Any:
        """Send ``message`` and return the child's answer (raising the error it reports)."""
        try:
            self.send.send(message)
        except OSError:  # its end of the pipe is closed: it is gone
            self._wait_briefly()
            raise self.stopped() from None
        return self.answer(timeout)

    def answer(self, timeout: float | None = None) -> Any:
        """The child's next answer: its value, or its error raised here."""
        if timeout is not None and not self.recv.poll(timeout):
            raise ChildError(f"the {self.module} process did not answer within {timeout:.0f} s")
        try:
            kind, value = self.recv.recv()
        except (EOFError, OSError):
            self._wait_briefly()
            raise self.stopped() from None
        if kind == "error":
            raise rebuild(value)
        return value

    def read_into(self, buffer: Any) -> None:
        """Fill ``buffer`` (a C-contiguous array or other writable buffer) with the raw bytes the child sends after
        an answer, straight from the pipe."""
        fd = self.recv.fileno()
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            n = os.readv(fd, [view[done:]])
            if n == 0:
                self._wait_briefly()
                raise self.stopped()
            done += n

    def _wait_briefly(self) -> None:
        """Give a child whose pipe just closed a moment to exit, so its exit code can be told."""
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Close its pipes (it cleans up and exits), then wait for it; SIGTERM, then SIGKILL if it does not."""
        for conn in (self.send, self.recv):
            try:
                conn.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ChildPool:
    """Children of one module kept between uses (at most ``keep`` idle), stopped when the interpreter exits."""

    def __init__(self, module: str, keep: int = 1, setting: str = "") -> None:
        self.module = module
        self.setting = setting
        self.keep = keep
        self._idle: list[Child] = []
        self._lock = threading.Lock()
        atexit.register(self.stop_idle)

    def take(self) -> Child:
        """An idle child, or a new one, ready to serve (raises ``ChildError`` when none can start)."""
        with self._lock:
            child = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.alive():
                    child = candidate
                    break
                candidate.stop()
        if child is None:
            try:
                child = Child(self.module, self.setting)
            except (OSError, ValueError) as err:  # ValueError: no pass_fds (Windows)
                raise ChildError(f"cannot start a {self.module} process ({err})") from None
        if not child.ready:
            try:
                child.answer(START_TIMEOUT_S)
            except BaseException:
                child.stop()
                raise
            child.ready = True
        return child

    def give_back(self, child: Child) -> None:
        with self._lock:
            if child.alive() and len(self._idle) < self.keep:
                self._idle.append(child)
                return
        child.stop()

    def prestart(self, n: int = 1) -> None:
        """Start children now without waiting for them (they import while the caller loads its model), up to
        ``n`` idle ones; the next ``take`` calls get them."""
        with self._lock:
            self.keep = max(self.keep, n)
            while len(self._idle) < n:
                try:
                    self._idle.append(Child(self.module, self.setting))
                except (ChildError, OSError, ValueError):
                    return  # ``take`` reports it

    def stop_idle(self) -> None:
        with self._lock:
            children = list(self._idle)
            self._idle.clear()
        for child in children:
            child.stop()


def incoming(commands: Connection) -> Iterator[Any]:
    """The caller's messages, in a child, until the caller closes its end of the pipe."""
    while True:
        try:
            yield commands.recv()
        except (EOFError, OSError):
            return


def error_info(err: BaseException) -> tuple[str, int | None, str | None, str | None, str]:
    """An exception as plain values that cross a pipe (``rebuild`` makes it again)."""
    if isinstance(err, OSError):
        name = err.filename if isinstance(err.filename, str) else None
        return type(err).__name__, err.errno, err.strerror, name, str(err)
    return type(err).__name__, None, None, None, str(err)


def rebuild(info: tuple[str, int | None, str | None, str | None, str]) -> BaseException:
    """The child's exception in the caller: OSError with its errno, dlpixel's errors, ValueError and RuntimeError
    as they were, anything else as RuntimeError naming its type."""
    from .. import errors

    name, errno, strerror, filename, message = info
    if errno is not None:
        return OSError(errno, strerror or message, filename) if filename else OSError(errno, strerror or message)
    known = {"ValueError": ValueError, "RuntimeError": RuntimeError, "ChildError": ChildError}
    cls = known.get(name) or getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    return RuntimeError(f"{name}: {message}")


def main(argv: list[str]) -> None:
    import importlib
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides: Ctrl-C there stops the work here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwinds through serve, which cleans up
    module = importlib.import_module(argv[0])
    commands = Connection(int(argv[1]), readable=True, writable=False)
    answers = Connection(int(argv[2]), readable=False, writable=True)
    try:
        answers.send(("ok", "ready"))  # its imports are done
        module.serve(commands, answers)
    except (BrokenPipeError, EOFError):
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
