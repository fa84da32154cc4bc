"""Classifier folders in a project: ``<project>/classifiers/dl/<name>/``, saved atomically, listed newest first."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import validate_name
from ..data._io import honour_umask, inside, make_dirs_under
from ..errors import ClassifierError, DataError
from ..runtime.events import pause_point
from .metadata import ClassifierMetadata

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to an exclusively created file with the owner's PID
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

METADATA = "metadata.json"
WEIGHTS = "model.pt"
ONNX = "model.onnx"
HISTORY = "history.json"
REPORT = "report.html"


def classifiers_dir(project_root: Path) -> Path:
    return Path(project_root) / "classifiers" / "dl"


def classifier_dir(project_root: Path, name: str) -> Path:
    """``classifiers/dl/<name>`` for a valid name: every name from every entry point passes ``validate_name`` here."""
    return classifiers_dir(project_root) / validate_name(name)


def _checked(project_root: Path, folder: Path, write: bool = True) -> Path:
    """``folder`` if it is not a symbolic link and, for writing or deleting, lies inside the project (a project
    may read its classifiers through a linked ``classifiers`` folder); a one-line ``ClassifierError`` if not."""
    try:
        if write:
            inside(project_root, folder, "classifier folder")
        elif os.path.islink(folder):
            inside(folder.parent, folder, "classifier folder")
    except DataError as err:
        raise ClassifierError(str(err)) from None
    return folder


def check_free(project_root: Path, name: str, overwrite: bool = False) -> Path:
    """The folder a new classifier ``name`` would take; refuses a bad name, or an existing one without overwrite."""
    final = _checked(project_root, classifier_dir(project_root, name))
    if os.path.lexists(final) and not overwrite:
        raise ClassifierError(
            f"a classifier named '{name}' already exists in {final.parent}; choose another name or pass --overwrite"
        )
    return final


# --- one writer per classifier name ---------------------------------------------------------------------------

_HELD: dict[str, int] = {}
"""Locks this process holds (lock file -> depth), so that a run holding a name may stage it again."""


def _lock_path(project_root: Path, name: str) -> Path:
    return classifiers_dir(project_root) / f".{name}.lock"


def _try_lock(path: Path) -> int | None:
    """An open, locked descriptor of ``path``, or None while another live process holds it. An ``flock`` dies with
    its process, so a killed run never leaves a lock behind; the file names the holder for the message."""
    while True:
        if fcntl is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = _owner_pid(path)
                if pid is not None and not _alive(pid):
                    path.unlink(missing_ok=True)
                    continue
                return None
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released and removed it meanwhile: lock the file that is there now
                os.close(fd)
                continue
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return fd


def _owner_pid(path: Path) -> int | None:
    try:
        words = path.read_text().split()
        return int(words[1]) if len(words) > 1 and words[0] == "pid" else None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextmanager
def name_lock(project_root: Path, name: str) -> Iterator[None]:
    """Hold the classifier name ``name`` for this process (re-entrant); a second run that wants the same name at the
    same time gets a one-line ``ClassifierError``."""
    folder = classifiers_dir(project_root)
    path = _lock_path(project_root, validate_name(name))
    created = [d for d in (folder.parent, folder) if not d.exists()]
    make_dirs_under(Path(project_root), folder)
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        fd = _try_lock(path)
    except OSError as err:
        raise ClassifierError(f"cannot write in {folder} ({err.strerror or err}); make the project writable") from None
    if fd is None:
        try:
            owner = path.read_text().strip() or "another process"
        except OSError:
            owner = "another process"
        raise ClassifierError(f"the classifier name '{name}' is taken: another dlpixel run ({owner}) is writing it "
                              "now; wait for it to finish or choose another name")
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        try:
            path.unlink(missing_ok=True)
            for d in reversed(created):  # a run that saved nothing leaves no empty folders behind
                d.rmdir()
        except OSError:
            pass
        os.close(fd)


# --- temporaries of interrupted runs ---------------------------------------------------------------------------

_LOCK = re.compile(r"\A\.(?P<name>[A-Za-z0-9_-]+)\.lock\Z")
_TEMP = re.compile(r"\A\.(?P<name>[A-Za-z0-9_-]+)\.(?:\d+\.)?[^.]+\.(?P<kind>partial|old|trash)\Z")


def _temp_name(name: str, kind: str) -> str:
    """``.<name>.<pid>.<random>.<kind>``: hidden, and recognised by ``recover`` after a crash."""
    return f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}"


def recover(project_root: Path) -> list[str]:
    """Finish what interrupted runs left in ``classifiers/dl``: a classifier moved aside by ``--overwrite``
    (``.<name>.*.old``) whose new folder never arrived is put back; unfinished new folders (``.partial``) and
    leftovers of a swap or a delete are removed. Only names no live run holds are touched; each action is logged."""
    root = classifiers_dir(project_root)
    if not root.is_dir() or os.path.islink(root):
        return []
    by_name: dict[str, list[Path]] = {}
    try:
        for entry in root.iterdir():
            m = _TEMP.match(entry.name)
            if m:
                by_name.setdefault(m["name"], []).append(entry)
            elif (lock := _LOCK.match(entry.name)) is not None:
                by_name.setdefault(lock["name"], [])  # a killed run's lock file: removed once it can be taken
    except OSError:
        return []
    done: list[str] = []
    for name, temps in sorted(by_name.items()):
        path = _lock_path(project_root, name)
        if os.path.realpath(path) in _HELD:
            continue
        try:
            fd = _try_lock(path)
        except OSError:
            return done  # a read-only project: nothing can be cleaned, and nothing needs writing
        if fd is None:
            continue
        try:
            done += _recover_name(root, name, temps)
        finally:
            path.unlink(missing_ok=True)
            os.close(fd)
    return done


def _recover_name(root: Path, name: str, temps: list[Path]) -> list[str]:
    done = []
    final = root / name
    for tmp in sorted(temps, key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True):
        if tmp.name.endswith(".old") and not os.path.lexists(final) and not tmp.is_symlink():
            tmp.rename(final)
            msg = f"restored classifier '{name}' from {tmp.name}, left by an interrupted --overwrite"
        else:
            if tmp.is_symlink() or not tmp.is_dir():
                tmp.unlink(missing_ok=True)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            msg = f"removed {tmp.name}, left in {root} by an interrupted run"
        log.warning(msg)
        done.append(msg)
    return done


@contextmanager
def staging_folder(project_root: Path, name: str, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside the classifiers that becomes ``classifiers/dl/<name>`` only if the block succeeds.

    The name is locked for the whole block. Any exception (a cancelled or failed run) removes the folder, so no
    half-written classifier is ever left; a killed run's folder is removed by the next run (``recover``). With
    ``overwrite`` the previous classifier is replaced only once the new one is complete, and a crash between the
    two renames is undone by the next run; without it, a folder that appeared meanwhile is never replaced.
    """
    project_root = Path(project_root)
    with name_lock(project_root, name):
        recover(project_root)
        final = check_free(project_root, name, overwrite)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".partial", dir=final.parent))
            honour_umask(tmp, directory=True)
        except OSError as err:
            raise ClassifierError(f"cannot write in {final.parent} ({err.strerror or err}); make the project "
                                  "writable or free disk space") from None
        try:
            yield tmp
            pause_point("staged")
            if not project_root.is_dir():
                raise DataError(f"the project folder {project_root} no longer exists (moved or deleted during the "
                                "run); nothing was written")
            if os.path.lexists(final):
                check_free(project_root, name, overwrite)
                old = final.with_name(_temp_name(name, "old"))
                final.rename(old)
                pause_point("swap")
                try:
                    tmp.rename(final)
                except BaseException:
                    old.rename(final)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ClassifierError(f"cannot save classifier '{name}' in {final.parent} ({err.strerror or err}); free "
                                  "disk space or make the project writable; nothing was saved") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@dataclass
class ClassifierEntry:
    """A classifier found in a project."""

    name: str
    path: Path
    metadata: ClassifierMetadata

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.metadata.created)


def load_classifier(project_root: Path, name: str) -> ClassifierEntry:
    folder = _checked(project_root, classifier_dir(project_root, name), write=False)
    recover(project_root)
    if not (folder / METADATA).exists():
        known = [e.name for e in list_classifiers(project_root)]
        hint = f"; classifiers here: {', '.join(known)}" if known else "; this project has no classifiers yet"
        raise ClassifierError(f"no classifier named '{name}' in {classifiers_dir(project_root)}{hint}")
    return ClassifierEntry(name, folder, ClassifierMetadata.read(folder / METADATA))


def list_classifiers(project_root: Path) -> list[ClassifierEntry]:
    """Every valid classifier of the project, newest first (unreadable folders are skipped)."""
    out = []
    root = classifiers_dir(project_root)
    if not root.is_dir():
        return []
    recover(project_root)
    for folder in root.iterdir():
        if folder.name.startswith(".") or folder.is_symlink() or not (folder / METADATA).is_file():
            continue
        try:
            out.append(ClassifierEntry(folder.name, folder, ClassifierMetadata.read(folder / METADATA)))
        except ClassifierError:
            continue
    return sorted(out, key=lambda e: e.created, reverse=True)


def delete_classifier(project_root: Path, name: str) -> Path:
    """Remove a classifier folder (never through a link, never outside the project): it is first renamed aside, so
    an interrupted delete leaves no half classifier (the next run removes the rest)."""
    load_classifier(project_root, name)
    with name_lock(project_root, name):
        entry = load_classifier(project_root, name)
        _checked(project_root, entry.path)
        trash = entry.path.with_name(_temp_name(name, "trash"))
        try:
            entry.path.rename(trash)
        except OSError as err:
            raise ClassifierError(f"cannot delete {entry.path} ({err.strerror or err}); make the project "
                                  "writable") from None
        shutil.rmtree(trash, ignore_errors=True)
    return entry.path


def load_settings(project_root: Path, name: str) -> dict[str, Any]:
    """The complete training settings of a classifier, as a dict ``TrainingConfig`` validates."""
    entry = load_classifier(project_root, name)
    if entry.metadata.training is None:
        raise ClassifierError(f"classifier '{name}' was imported, not trained here: it has no training settings")
    return entry.metadata.training.model_dump(mode="json")


def retrain_name(name: str, today: datetime | None = None) -> str:
    """Default name of a classifier trained from another's settings: ``Retrain_<Name>_<YYYYMMDD>``."""
    return f"Retrain_{name}_{(today or datetime.now()).strftime('%Y%m%d')}"


def export_classifier(project_root: Path, name: str, zip_path: Path) -> Path:
    """Pack a classifier folder into a zip file that ``import_classifier`` reads."""
    entry = load_classifier(project_root, name)
    zip_path = Path(zip_path)
    if not zip_path.parent.is_dir():
        raise ClassifierError(f"cannot export to {zip_path}: the folder {zip_path.parent} does not exist")
    tmp = zip_path.with_name(zip_path.name + ".partial")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(entry.path.iterdir()):
                if f.is_symlink():
                    log.warning("%s is a symbolic link; not exported", f)
                elif f.is_file():
                    zf.write(f, f"{name}/{f.name}")
        tmp.replace(zip_path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ClassifierError(f"cannot write {zip_path}: {err.strerror or err}; choose a writable folder with free "
                              "space") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return zip_path


MAX_MEMBER_BYTES = 4 << 30
"""Largest file ``models import`` unpacks from a zip (a model.pt of a large U-Net is a few hundred MB)."""
MAX_METADATA_BYTES = 16 << 20
"""Largest ``metadata.json``/``history.json`` ``models import`` accepts."""
MAX_RATIO = 200
"""Largest compression ratio of a zip member over 1 MB: model weights hardly compress, so more is a zip bomb."""


def _check_member(zip_path: Path, info: zipfile.ZipInfo) -> None:
    limit = MAX_METADATA_BYTES if info.filename.endswith(".json") else MAX_MEMBER_BYTES
    if info.file_size > limit or (info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
        raise ClassifierError(f"{zip_path}: {info.filename} unpacks to {info.file_size:,} bytes from "
                              f"{info.compress_size:,}; refusing it (not a dlpixel export, or damaged)")


def _unpack(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, zip_path: Path) -> None:
    """Copy one member in 1 MB chunks, stopping at its declared size (a member that lies about it is refused)."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise ClassifierError(f"{zip_path}: {info.filename} is larger than it declares; refusing it")
            dst.write(chunk)


def import_classifier(project_root: Path, zip_path: Path, name: str | None = None, overwrite: bool = False) -> Path:
    """Unpack a classifier zip into the project (under its own name unless ``name`` is given), member by member with
    size limits, through the staging folder (nothing half-imported is ever visible)."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise ClassifierError(f"cannot read {zip_path} as a classifier export (a zip file): {err}") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        members = [i.filename for i in infos]
        tops = {m.split("/", 1)[0] for m in members}
        if len(tops) != 1 or not any(m.endswith("/" + METADATA) for m in members):
            raise ClassifierError(f"{zip_path} is not a dlpixel classifier export (no single folder with metadata)")
        original = tops.pop()
        target = validate_name(name if name is not None else original)
        for info in infos:
            rel = info.filename.split("/", 1)[1]
            if "/" in rel or "\\" in rel or rel.startswith(".") or not rel:
                raise ClassifierError(f"{zip_path}: unexpected entry {info.filename}")
            _check_member(Path(zip_path), info)
        try:
            with staging_folder(project_root, target, overwrite) as tmp:
                for info in infos:
                    _unpack(zf, info, tmp / info.filename.split("/", 1)[1], Path(zip_path))
                meta = ClassifierMetadata.read(tmp / METADATA)
                if target != meta.name:
                    meta.name = target
                    meta.write(tmp / METADATA)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError,
                zlib.error) as err:
            raise ClassifierError(f"{zip_path} is damaged ({err}); export the classifier again") from None
    return classifier_dir(project_root, target)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def layered_settings(root: Path | None, from_model: str | None, config_file: str | Path | None,
                     overrides: Sequence[str]) -> list[dict[str, Any]]:
    """Setting layers, later ones winning: the training settings of the classifier ``from_model`` in the project at
    ``root``, then a JSON ``config_file``, then ``key=value`` ``overrides``."""
    from ..config.layers import load_config_file, parse_overrides

    layers: list[dict[str, Any]] = []
    if from_model:
        layers.append(load_settings(root, from_model))
    if config_file:
        layers.append(load_config_file(config_file))
    layers.append(parse_overrides(list(overrides)))
    return layers
