"""Classifier folders in a project: ``<project>/classifiers/dl/<name>/``, saved atomically, listed newest first."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import validate_name
from ..data._io import honour_umask
from ..errors import ClassifierError
from .metadata import ClassifierMetadata

METADATA = "metadata.json"
WEIGHTS = "model.pt"
ONNX = "model.onnx"
HISTORY = "history.json"
REPORT = "report.html"


def classifiers_dir(project_root: Path) -> Path:
    return Path(project_root) / "classifiers" / "dl"


def classifier_dir(project_root: Path, name: str) -> Path:
    return classifiers_dir(project_root) / name


def check_free(project_root: Path, name: str, overwrite: bool = False) -> Path:
    """The folder a new classifier ``name`` would take; refuses a bad name, or an existing one without overwrite."""
    validate_name(name)
    final = classifier_dir(project_root, name)
    if final.exists() and not overwrite:
        raise ClassifierError(
            f"a classifier named '{name}' already exists in {final.parent}; choose another name or pass --overwrite"
        )
    return final


@contextmanager
def staging_folder(project_root: Path, name: str, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside the classifiers that becomes ``classifiers/dl/<name>`` only if the block succeeds.

    Any exception (a cancelled or failed run) removes it, so no half-written classifier is ever left. With
    ``overwrite`` the previous classifier is replaced only once the new one is complete.
    """
    final = check_free(project_root, name, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=final.parent))
    honour_umask(tmp, directory=True)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{name}.{uuid.uuid4().hex[:8]}.old")
            final.rename(old)
            try:
                tmp.rename(final)
            except BaseException:
                old.rename(final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
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
    folder = classifier_dir(project_root, name)
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
    for folder in root.iterdir():
        if folder.name.startswith(".") or not (folder / METADATA).is_file():
            continue
        try:
            out.append(ClassifierEntry(folder.name, folder, ClassifierMetadata.read(folder / METADATA)))
        except ClassifierError:
            continue
    return sorted(out, key=lambda e: e.created, reverse=True)


def delete_classifier(project_root: Path, name: str) -> Path:
    entry = load_classifier(project_root, name)
    shutil.rmtree(entry.path)
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
                if f.is_file():
                    zf.write(f, f"{name}/{f.name}")
        tmp.replace(zip_path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ClassifierError(f"cannot write {zip_path}: {err.strerror or err}") from None
    return zip_path


def import_classifier(project_root: Path, zip_path: Path, name: str | None = None, overwrite: bool = False) -> Path:
    """Unpack a classifier zip into the project (under its own name unless ``name`` is given)."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as err:
        raise ClassifierError(f"cannot read {zip_path} as a classifier export (a zip file): {err}") from None
    with zf:
        members = [m for m in zf.namelist() if not m.endswith("/")]
        tops = {m.split("/", 1)[0] for m in members}
        if len(tops) != 1 or not any(m.endswith("/" + METADATA) for m in members):
            raise ClassifierError(f"{zip_path} is not a dlpixel classifier export (no single folder with metadata)")
        original = tops.pop()
        target = name or original
        with staging_folder(project_root, target, overwrite) as tmp:
            for m in members:
                rel = m.split("/", 1)[1]
                if "/" in rel or rel.startswith("."):
                    raise ClassifierError(f"{zip_path}: unexpected entry {m}")
                (tmp / rel).write_bytes(zf.read(m))
            meta = ClassifierMetadata.read(tmp / METADATA)
            if target != meta.name:
                meta.name = target
                meta.write(tmp / METADATA)
    return classifier_dir(project_root, target)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def layered_settings(root: Path | None, from_model: str | None, config_file: str | Path | None,
                     overrides: Sequence[str]) -> list[dict[str, Any]]:
    """Setting layers, later ones winning: the training settings of the classifier ``from_model`` in the project at
    ``root``, then a JSON ``config_file``, then ``key=value`` ``overrides``."""
    from ..config import load_config_file, parse_overrides

    layers: list[dict[str, Any]] = []
    if from_model:
        layers.append(load_settings(root, from_model))
    if config_file:
        layers.append(load_config_file(config_file))
    layers.append(parse_overrides(list(overrides)))
    return layers
