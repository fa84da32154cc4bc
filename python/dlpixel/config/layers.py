"""Settings from their sources: a JSON settings file, ``--set KEY=VALUE`` overrides, flags, merged in order (later
layers win) and validated into a settings model, with every fault said in one line that names the setting as
``--set`` spells it."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError

__all__ = ["build_config", "deep_merge", "format_validation_error", "load_config_file", "parse_overrides",
           "set_nested"]


def _keys_at(model: type[BaseModel] | None, path: Sequence[str]) -> list[str]:
    """The setting names one level below ``path`` in ``model`` (empty when unknown)."""
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        sub = field.annotation if field is not None else None
        model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def format_validation_error(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per setting at fault, naming it as ``--set`` spells it; an unknown one with the nearest known
    names (``model``), a union's alternatives once."""
    parts: dict[str, str] = {}
    for e in err.errors():
        # Union alternatives add their type to the location (``freeze.list[str]``): the setting is what precedes.
        loc = [str(p) for p in e["loc"] if not isinstance(p, int) or len(e["loc"]) == 1]
        loc = [p for p in loc if "[" not in p] or loc[:1]
        key = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _keys_at(model, loc[:-1]), n=2, cutoff=0.6)
            hint = f"did you mean {' or '.join('.'.join([*loc[:-1], c]) for c in close)}? " if close else ""
            msg = f"unknown setting; {hint}(`dlpixel train --help-settings` lists them)"
        if key not in parts:
            parts[key] = f"{prefix}{key}: {msg}" if key else f"{prefix}{msg}"
    return "; ".join(parts.values())


def _parse_value(text: str) -> Any:
    """A JSON value, else the text itself: a text with commas stays one text (``description=Tumor, stroma``); the
    settings that take lists (``channels``, ``classes``, ``freeze``) split it themselves."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_nested(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for key ``a.b``."""
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"setting '{key}': '{part}' is not a group of settings")
    node[last] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["epochs=10", "augment.elastic=true", "classes=Tumor,Stroma"]`` into a nested dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        key, text = pair.split("=", 1)
        set_nested(out, key.strip(), _parse_value(text.strip()))
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(model: type[BaseModel], *layers: dict[str, Any], source: str = "") -> Any:
    """Validate the merged layers (later ones win) into ``model``, raising a one-line ``ConfigError``."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"{source or 'settings'} must be a JSON object of settings, not {type(layer).__name__}")
        merged = deep_merge(merged, layer)
    try:
        return model.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix=f"{source}: " if source else "", model=model)) from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON settings file (a flat or nested object of setting keys)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"settings file not found: {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"settings file {p} is not valid JSON: {err}") from None
    except RecursionError:
        raise ConfigError(f"settings file {p} is nested too deeply to be settings") from None
    except OSError as err:
        raise ConfigError(f"cannot read the settings file {p}: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {p} must hold a JSON object of settings")
    nested: dict[str, Any] = {}
    for key, value in data.items():
        set_nested(nested, key, value)
    return nested
