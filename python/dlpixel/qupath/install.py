"""``dlpixel qupath install``: put the Groovy helper and the menu script into the user's QuPath folder.

After it, QuPath's script editor can run the scripts that ``dlpixel script`` writes, and setting the menu script as
QuPath's startup script adds *Extensions > DL Pixel Classifier*. The Python executable is recorded beside the
scripts (``dlpixel.json``), so QuPath finds dlpixel without the user's environment being active.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import InferenceConfig, TrainingConfig
from ..errors import DataError
from .scripting import HELPER_FILE, INSTALL_FOLDER, default_user_dir, field_choices, installed_helper_record

MENU_FILE = "DLPixelMenu.groovy"
SETTINGS_FILE = "dlpixel.json"
HOME_MARKER = "@DLPIXEL_HOME@"
"""Stands in the shipped menu script for the folder it is installed into; the installer writes the real path."""


def groovy_source_dir() -> Path:
    """The Groovy files that ship with dlpixel: package data when installed, the repository's ``groovy/`` else."""
    packaged = resources.files("dlpixel") / "groovy"
    if packaged.is_dir() and (packaged / HELPER_FILE).is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[3] / "groovy"
    if (repo / HELPER_FILE).is_file():
        return repo
    raise DataError(f"dlpixel's Groovy files are missing (looked in {packaged} and {repo}); reinstall dlpixel")


def shipped_groovy_files() -> list[Path]:
    """Every Groovy file dlpixel ships, as absolute paths."""
    return sorted(groovy_source_dir().rglob("*.groovy"))


@dataclass
class InstallResult:
    """What ``install_qupath_scripts`` wrote (or, with ``print_only``, would write)."""

    folder: Path
    helper: Path
    startup_script: Path
    settings_file: Path
    python: str
    written: bool
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        """The lines ``dlpixel qupath install`` prints: where things are and how to turn the menu on."""
        verb = "Installed" if self.written else "Would install"
        lines = [f"{verb} dlpixel's QuPath scripts in {self.folder}:"]
        lines += [f"  {path}" for path in self.files]
        lines += [
            f"Python executable recorded in {self.settings_file.name}: {self.python}",
            "",
            "To add Extensions > DL Pixel Classifier to QuPath:",
            "  QuPath 0.5 or later: Edit > Preferences > General > Startup script, set it to",
            f"    {self.startup_script}",
            "  and restart QuPath.",
            f"  QuPath 0.4: copy {self.startup_script.name} to startup.groovy in your QuPath user folder and tick",
            "    'Run startup script' in Edit > Preferences > General.",
            "Scripts from `dlpixel script` find the helper at",
            f"    {self.helper}",
            "Run this command again after upgrading dlpixel, so the menu's defaults follow it.",
        ]
        if not self.written:
            lines.insert(1, "(nothing written: --print-only)")
        return "\n".join(lines)


def _settings(python: str, helper: Path) -> dict[str, Any]:

    return {
        "python": python,
        "helper": str(helper),
        "dlpixel_version": __version__,
        "defaults": {
            "train": TrainingConfig().model_dump(mode="json"),
            "apply": InferenceConfig().model_dump(mode="json"),
        },
        "choices": {"train": field_choices(TrainingConfig), "apply": field_choices(InferenceConfig)},
    }


def install_qupath_scripts(qupath_user_dir: Path | None, python: str, print_only: bool = False) -> InstallResult:
    """Copy the helper and the menu script into ``<QuPath user folder>/dlpixel`` and record ``python`` there.

    ``qupath_user_dir`` None means QuPath's default user folder. The menu script gets the folder's path written in,
    so it finds the helper wherever the folder is. With ``print_only`` nothing is written.
    """
    source = groovy_source_dir()
    folder = (qupath_user_dir.expanduser().resolve() if qupath_user_dir else default_user_dir()) / INSTALL_FOLDER
    helper = folder / HELPER_FILE
    menu_sources = sorted((source / "menu").glob("*.groovy"))
    if not any(p.name == MENU_FILE for p in menu_sources):
        raise DataError(f"the menu script {source / 'menu' / MENU_FILE} is missing; reinstall dlpixel")
    result = InstallResult(
        folder=folder,
        helper=helper,
        startup_script=folder / MENU_FILE,
        settings_file=folder / SETTINGS_FILE,
        python=python,
        written=not print_only,
        files=[helper, *[folder / p.name for p in menu_sources], folder / SETTINGS_FILE],
    )
    if print_only:
        return result
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / HELPER_FILE, helper)
        for menu in menu_sources:
            text = menu.read_text(encoding="utf-8")
            home = str(folder).replace("\\", "\\\\").replace("'", "\\'")
            (folder / menu.name).write_text(text.replace(HOME_MARKER, home), encoding="utf-8")
        (folder / SETTINGS_FILE).write_text(json.dumps(_settings(python, helper), indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot write dlpixel's QuPath scripts into {folder}: {err}; try --user-dir") from None
    record = installed_helper_record()
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(str(helper.resolve()) + "\n", encoding="utf-8")
    except OSError as err:
        raise DataError(f"installed in {folder}, but cannot record it in {record} ({err.strerror or err}); give "
                        f"`dlpixel script` --helper {helper}") from None
    return result
