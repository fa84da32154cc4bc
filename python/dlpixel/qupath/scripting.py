"""Groovy scripts for QuPath's script editor ("Copy as Script") from training and inference settings.

A generated script spells out every setting, resolved, so it trains or applies the same way after dlpixel's
defaults change. The settings map is built by walking the pydantic model, so a new setting appears in scripts
without touching this module; the grouping below only decides where it is shown.
"""

from __future__ import annotations

import enum
import math
import os
import re
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel

from .._version import __version__
from ..config import BACKBONES, InferenceConfig, TrainingConfig, validate_name
from ..errors import ConfigError

TRAINING_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Classifier info", ("description",)),
    ("Data: tiles sampled over the annotations", (
        "tile_size", "downsample", "context_scale", "tile_overlap", "line_stroke_width", "validation_split",
    )),
    ("Architecture", ("architecture", "method", "backbone", "pseudo_labels", "prior_correction")),
    ("Training parameters", ("epochs", "batch_size", "learning_rate", "weight_decay")),
    ("Training strategy", ("scheduler", "loss", "early_stop_metric", "early_stop_patience", "precision")),
    ("Transfer learning", ("pretrained", "freeze")),
    ("Data augmentation (training tiles only)", ("augment",)),
    ("Channels and classes", ("channels", "classes", "class_weights")),
    ("Normalization", ("normalization",)),
    ("Reproducibility and hardware", ("seed", "num_workers", "device", "compile", "log_every")),
)
"""Where each training setting is shown, following the training dialog's sections."""

INFERENCE_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Output and scope", ("output", "scope", "refine")),
    ("Objects (output 'objects')", ("object_type", "min_object_area", "min_hole_area", "simplify")),
    ("Tiling (null: the classifier's own value)", ("tile_size", "overlap")),
    ("Hardware", ("batch_size", "device", "backend", "precision", "cuda_graphs", "reader_threads")),
)
"""Where each inference setting is shown."""

_OTHER_SECTION = "Other settings"
_EXTRA_CHOICES: dict[str, Sequence[str]] = {"backbone": BACKBONES}
_INDENT = "    "
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GROOVY_KEYWORDS = frozenset(
    "abstract as assert boolean break byte case catch char class const continue def default do double else enum "
    "extends false final finally float for goto if implements import in instanceof int interface long native new "
    "null package private protected public return short static strictfp super switch synchronized this threadsafe "
    "throw throws trait transient true try var void volatile while yield record sealed permits".split()
)
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


# ---------------------------------------------------------------------------------------------------------------
# Groovy literals


INSTALL_FOLDER = "dlpixel"
HELPER_FILE = "DLPixel.groovy"
_VERSION_DIR = re.compile(r"^v(\d+)\.(\d+)$")


def default_user_dir(home: Path | None = None) -> Path:
    """QuPath's user folder: the newest ``~/QuPath/vX.Y`` that exists (QuPath 0.4+ names it so), else ``~/QuPath``."""
    base = (home or Path.home()) / "QuPath"
    versions = []
    if base.is_dir():
        for child in base.iterdir():
            match = _VERSION_DIR.match(child.name)
            if match and child.is_dir():
                versions.append(((int(match.group(1)), int(match.group(2))), child))
    return max(versions)[1] if versions else base


def groovy_string(text: str) -> str:
    """A single-quoted Groovy string literal (no interpolation) holding exactly ``text``, ASCII only."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 32 <= code < 127:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "'" + "".join(out) + "'"


def groovy_key(key: str) -> str:
    """A map key: bare when it is a plain identifier, quoted otherwise."""
    if _IDENTIFIER.match(key) and key not in _GROOVY_KEYWORDS:
        return key
    return groovy_string(key)


def groovy_literal(value: Any) -> str:
    """A Groovy literal that ``groovy.json.JsonOutput`` writes back as the same JSON value.

    Floats use Python's shortest round-trip form, which Groovy reads as an exact ``BigDecimal``; integers beyond
    a Java long get the ``G`` suffix. Raises ``ConfigError`` for values JSON cannot hold (NaN, infinity).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}G" if not _LONG_MIN <= value <= _LONG_MAX else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"the value {value} cannot be written into a script (settings must be finite numbers)")
        return repr(value)
    if isinstance(value, str):
        return groovy_string(value)
    if isinstance(value, enum.Enum):
        return groovy_literal(value.value)
    if isinstance(value, dict):
        if not value:
            return "[:]"
        return "[" + ", ".join(f"{groovy_key(str(k))}: {groovy_literal(v)}" for k, v in value.items()) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(groovy_literal(v) for v in value) + "]"
    raise ConfigError(f"cannot write a value of type {type(value).__name__} into a script: {value!r}")


def _choices(annotation: Any) -> list[str] | None:
    """The allowed values of an Enum or Literal field (also inside Optional), for a trailing comment."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        found: list[str] = []
        for arg in typing.get_args(annotation):
            found.extend(_choices(arg) or [])
        return found or None
    return None


def field_choices(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """The allowed values of each setting with a fixed set of them, keyed as ``--set`` spells the setting."""
    out: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        key = prefix + name
        nested = _nested_model(info.annotation)
        if nested is not None:
            out.update(field_choices(nested, key + "."))
            continue
        choices = _EXTRA_CHOICES.get(name) or _choices(info.annotation)
        if choices:
            out[key] = list(choices)
    return out


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _map_lines(
    model: type[BaseModel], values: dict[str, Any], sections: Sequence[tuple[str, Sequence[str]]], depth: int
) -> list[str]:
    """Lines of a Groovy map literal's entries: every field of ``model`` in ``values``, grouped by ``sections``."""
    fields = list(model.model_fields)
    placed = {name for _, names in sections for name in names}
    other = _OTHER_SECTION if sections else ""
    groups = [(title, [n for n in names if n in values]) for title, names in sections]
    groups.append((other, [n for n in fields if n not in placed and n in values]))
    groups.append((other, [k for k in values if k not in fields]))
    entries: list[tuple[str | None, str, Any]] = []
    for title, names in groups:
        for i, name in enumerate(names):
            entries.append((title if i == 0 and title else None, name, values[name]))
    pad = _INDENT * depth
    lines: list[str] = []
    for index, (title, name, value) in enumerate(entries):
        if title is not None:
            lines.append(f"{pad}// {title}")
        comma = "," if index < len(entries) - 1 else ""
        info = model.model_fields.get(name)
        nested = _nested_model(info.annotation) if info else None
        if nested is not None and isinstance(value, dict):
            lines.append(f"{pad}{groovy_key(name)}: [")
            lines.extend(_map_lines(nested, value, (), depth + 1))
            lines.append(f"{pad}]{comma}")
            continue
        line = f"{pad}{groovy_key(name)}: {groovy_literal(value)}{comma}"
        choices = _EXTRA_CHOICES.get(name) or (_choices(info.annotation) if info else None)
        if choices:
            line += f"  // {' | '.join(choices)}"
        lines.append(line)
    return lines


def settings_map(config: BaseModel, sections: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    """The complete settings of ``config`` as a readable Groovy map literal, one setting a line."""
    values = config.model_dump(mode="json")
    if not values:
        return "[:]"
    return "[\n" + "\n".join(_map_lines(type(config), values, sections, 1)) + "\n]"


# ---------------------------------------------------------------------------------------------------------------
# Scripts


def installed_helper_record() -> Path:
    """The file in which ``dlpixel qupath install`` records where it put ``DLPixel.groovy`` (``--user-dir``
    included), so that generated scripts look there: ``$XDG_CONFIG_HOME/dlpixel/qupath-helper`` (default
    ``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dlpixel" / "qupath-helper"


def default_helper_path() -> Path:
    """Where generated scripts look for ``DLPixel.groovy``: where ``dlpixel qupath install`` last put it, else where
    it puts it by default."""
    try:
        recorded = installed_helper_record().read_text(encoding="utf-8").strip()
    except OSError:
        recorded = ""
    return Path(recorded) if recorded else default_user_dir() / INSTALL_FOLDER / HELPER_FILE


def _header(lines: list[str]) -> str:
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    body = [*lines, f"Written by dlpixel {__version__} on {stamp}.", "",
            "Every setting is spelled out, so the script does the same after dlpixel's defaults change.",
            "It needs DLPixel.groovy, which `dlpixel qupath install` copies into your QuPath user folder;",
            "set the system property dlpixel.helper or the environment variable DLPIXEL_HELPER to use another copy.",
            "See docs/SCRIPTING.md."]
    return "/*\n" + "\n".join(f" * {line}".rstrip() for line in body) + "\n */"


def _loader(helper: Path | str | None) -> str:
    path = str(Path(helper).expanduser().resolve()) if helper is not None else str(default_helper_path())
    return (
        "def dlpixelHelper = new File(System.getProperty('dlpixel.helper') ?: System.getenv('DLPIXEL_HELPER') ?:\n"
        f"        {groovy_string(path)})\n"
        "def DLPixel = new GroovyClassLoader(getClass().classLoader).parseClass(dlpixelHelper)"
    )


def _project_literal(project: str | Path | None) -> str:
    """QuPath's script editor runs in QuPath's own working folder, so the project is always written absolute."""
    return "null" if project is None else groovy_string(str(Path(project).expanduser().resolve()))


def _images_literal(images: Sequence[str]) -> str:
    return groovy_literal(list(images))


def training_script(
    project: str | Path | None,
    name: str,
    images: Sequence[str],
    config: TrainingConfig,
    overwrite: bool = False,
    helper: Path | str | None = None,
) -> str:
    """A QuPath script that trains classifier ``name`` with exactly ``config`` on ``images`` (empty: every image
    with classified annotations). ``project`` None makes the script use the project open in QuPath; ``helper``
    overrides where the script looks for DLPixel.groovy when neither the property nor the variable names one."""
    validate_name(name)
    where = f"{len(images)} image(s) chosen by name" if images else "every image with classified annotations"
    header = _header([f"Train the dlpixel pixel classifier {name!r} on {where}.",
                      "Run it in QuPath's script editor (Run); it saves the classifier into the project."])
    return "\n".join([
        header,
        "",
        f"def project = {_project_literal(project)}  // null: the project open in QuPath",
        f"def name = {groovy_string(name)}",
        f"def images = {_images_literal(images)}  // []: every image with classified annotations",
        f"def overwrite = {groovy_literal(overwrite)}  // true: replace a classifier of the same name",
        "",
        f"def settings = {settings_map(config, TRAINING_SECTIONS)}",
        "",
        _loader(helper),
        "DLPixel.train([project: project, name: name, images: images, settings: settings, overwrite: overwrite])",
        "",
    ])


def apply_script(
    project: str | Path | None,
    classifier: str,
    images: Sequence[str],
    config: InferenceConfig,
    helper: Path | str | None = None,
) -> str:
    """A QuPath script that applies ``classifier`` with exactly ``config``. Empty ``images`` means the image open in
    QuPath, so the script also works with "Run for project" (one image at a time); outside QuPath it means every
    image of the project."""
    validate_name(classifier)
    where = f"{len(images)} image(s) chosen by name" if images else "the image open in QuPath"
    header = _header([f"Apply the dlpixel pixel classifier {classifier!r} to {where}:",
                      f"output {config.output}, scope {config.scope}.",
                      "Use Run, or Run for project to process each image of the project in turn."])
    return "\n".join([
        header,
        "",
        f"def project = {_project_literal(project)}  // null: the project open in QuPath",
        f"def classifier = {groovy_string(classifier)}",
        f"def images = {_images_literal(images)}  // []: the image open in QuPath (each image with Run for project)",
        "",
        f"def settings = {settings_map(config, INFERENCE_SECTIONS)}",
        "",
        _loader(helper),
        "DLPixel.apply([project: project, classifier: classifier, images: images, settings: settings])",
        "",
    ])


__all__ = [
    "INFERENCE_SECTIONS",
    "TRAINING_SECTIONS",
    "apply_script",
    "default_helper_path",
    "field_choices",
    "groovy_literal",
    "groovy_string",
    "settings_map",
    "training_script",
]
