"""What this process hosts that a forked child must not inherit.

A process that runs QuPath's Java VM (``qupath.jvm`` starts it, and refuses one started otherwise) cannot be
forked safely: a garbage collection in the child waits for a VM thread that the fork did not copy. ``qupath.jvm``
declares that here when it starts the VM, so the layers below it (DataLoader workers in ``training``) can spawn
their children instead, without calling into Java themselves.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_hazards: list[str] = []


def mark_fork_unsafe(reason: str) -> None:
    """Declare that forking this process is no longer safe (``reason`` names what it now hosts)."""
    with _lock:
        if reason not in _hazards:
            _hazards.append(reason)


def fork_unsafe() -> bool:
    """Whether something declared by ``mark_fork_unsafe`` runs in this process."""
    with _lock:
        return bool(_hazards)
