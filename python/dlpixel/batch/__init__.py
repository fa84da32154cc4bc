"""Apply a classifier to many images, resumably: one task per image, run by local worker processes or on Ray, with
a manifest, per-task state and locks, one writer back into QuPath, and a run report (docs/SCALING.md)."""

from __future__ import annotations

from .run import run_batch

__all__ = ["run_batch"]
