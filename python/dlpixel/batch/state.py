"""A task's small files in the run folder: its state (``tasks/<id>.json``) and its lock (``tasks/<id>.lock``).

The state file is written atomically, last, after the task's outputs are in place: a task is done exactly when its
state says ``done`` with the task's current key. The lock file is created exclusively (``O_CREAT | O_EXCL``) by the
process that runs the task and holds its PID, host, the process's start time and the time the lock was taken; the
holder touches it every ``HEARTBEAT_S`` seconds. A lock is stale, and may be taken over, when

- it was taken on this host and its process is gone, or a different process now has its PID (start times differ);
- it was taken on another host and has not been touched for ``stale_after_s()`` seconds (``DLPIXEL_BATCH_STALE_S``,
  default 600).

Taking over a stale lock happens under a short second lock (``<id>.lock.recover``), so that of two runs that find
the same stale lock only one removes it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..data._io import write_text_atomic

HEARTBEAT_S = 30.0
RECOVER_STALE_S = 60.0


def stale_after_s() -> float:
    return float(os.environ.get("DLPIXEL_BATCH_STALE_S", "600"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` as the kernel records it (clock ticks since boot; Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or unreadable (a state file is never half-written, but
    a lock file may be read while it is being created)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


class TaskLock:
    """The lock of one task; ``acquire()`` is False when a live process holds it."""

    def __init__(self, path: Path, run_id: str = "") -> None:
        self.path = path
        self.run_id = run_id
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": process_start(os.getpid()),
                      "started": now_iso(), "run": run_id}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.owner))
        return True

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            holder = read_json(self.path)
            if not is_stale(self.path, holder) or not self._take_over(holder):
                return False
        self.held = True
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return True

    def _take_over(self, seen: dict[str, Any] | None) -> bool:
        guard = self.path.with_name(self.path.name + ".recover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a recoverer that died inside its few lines leaves the guard behind
                if time.time() - guard.stat().st_mtime > RECOVER_STALE_S:
                    guard.unlink(missing_ok=True)
            except OSError:
                pass
            return False
        os.close(fd)
        try:
            if read_json(self.path) != seen:  # someone else recovered it in between
                return False
            self.path.unlink(missing_ok=True)
            return self._create()
        finally:
            guard.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self.held and read_json(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        self.held = False


def is_stale(path: Path, holder: dict[str, Any] | None) -> bool:
    """Whether the lock at ``path`` (whose content is ``holder``) may be taken over."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if holder is None:  # being written right now, or written by a process killed while writing it
        return age > RECOVER_STALE_S
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", -1))
        if not pid_alive(pid):
            return True
        started = holder.get("process_start")
        return started is not None and process_start(pid) not in (None, started)
    return age > stale_after_s()


def lock_holder(path: Path) -> str:
    """Who holds a lock, for messages: ``pid 123 on host since time``."""
    h = read_json(path) or {}
    return f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('started', '?')}"
