"""Atomic file writes, so that a crash or a reader never sees a half-written result file."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path | str, directory: bool = False) -> None:
    """Give a file or folder from ``mkstemp``/``mkdtemp`` (created 0600/0700) the mode an ordinary ``open`` or
    ``mkdir`` would have given it, so colleagues on a shared project can read what dlpixel writes."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    honour_umask(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return path


def inside(root: Path, path: Path, what: str = "path") -> Path:
    """``path`` with symbolic links resolved, refusing one that ends outside ``root`` or is itself a link: whatever
    dlpixel writes or deletes stays inside the project."""
    from ..errors import DataError

    root_real = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if os.path.islink(path):
        raise DataError(f"{path} is a symbolic link (to {real}); dlpixel does not write or delete through links: "
                        f"replace it with a real {what}")
    if real != root_real and root_real not in real.parents:
        raise DataError(f"{path} resolves to {real}, outside the project {root_real}; refusing to touch it")
    return real


def make_dirs_under(root: Path, folder: Path) -> Path:
    """Create ``folder`` (and the folders between) inside ``root``, never ``root`` itself: a project folder removed
    during a run stops it with a one-line error instead of being recreated."""
    from ..errors import DataError

    if not Path(root).is_dir():
        raise DataError(f"the project folder {root} no longer exists (moved or deleted during the run); nothing "
                        "was written")
    inside(root, folder, "folder")
    try:
        rel = Path(folder).relative_to(root)
    except ValueError:
        raise DataError(f"{folder} is not inside the project {root}; refusing to create it") from None
    current = Path(root)
    for part in rel.parts:
        current = current / part
        if os.path.islink(current):
            inside(root, current, "folder")
        try:
            current.mkdir()
        except FileExistsError:
            if not current.is_dir():
                raise DataError(f"cannot create {folder}: {current} is a file where a folder is needed; move the "
                            "file away") from None
        except OSError as err:
            raise DataError(f"cannot create {folder} ({err.strerror or err}); make the project writable") from None
    return Path(folder)


PROCESS_STARTED = time.time()


def remove_stale_temporaries(folder: Path, grace_s: float = 5.0) -> list[Path]:
    """Remove the hidden temporaries (``.<name>.pid<N>.*.tmp``: unfinished result files and map spools) that a
    killed run left in ``folder``: those whose process is gone (and, without a PID in the name, those last written
    before this process started)."""
    import re

    removed = []
    try:
        entries = list(Path(folder).glob(".*.tmp"))
    except OSError:
        return removed
    for p in entries:
        owner = re.search(r"\.pid(\d+)\.", p.name)
        try:
            if not p.is_file() or p.is_symlink():
                continue
            if owner is not None:
                if not _dead(int(owner[1])):
                    continue
            elif p.stat().st_mtime >= PROCESS_STARTED - grace_s:
                continue
            p.unlink()
            removed.append(p)
        except OSError:
            continue
    return removed


def _dead(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
