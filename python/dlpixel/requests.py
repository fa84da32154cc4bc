"""JSON requests: the one entry point that the CLI's ``request`` command, the Groovy helper and the in-process
bridge share. A request is a dict with an ``action`` (``train``, ``apply``, ``list_models``, ``load_settings``,
``show_model``, ``delete_model``, ``export_model``, ``script``); the reply is the action's result (a
JSON-serialisable dict) or a ``DlpixelError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .classifiers import store
from .config import InferenceConfig, TrainingConfig
from .config.layers import build_config
from .errors import ConfigError, DataError
from .runtime.events import CancelToken, Listener

Handler = Callable[[dict[str, Any], dict[str, Any], list[Listener], CancelToken], dict[str, Any]]


class _LiveProject:
    """The project QuPath has open, with the image open in QuPath's viewer in place of its saved entry: training reads
    its unsaved annotations and results go into its hierarchy, where QuPath shows them at once."""

    def __init__(self, project: Any, live_image: Any):
        self._project = project
        self._live = live_image
        self.root = project.root

    def images(self) -> list[Any]:
        return [self._live if self._live is not None and im.name == self._live.name else im
                for im in self._project.images()]

    def class_colors(self) -> dict[str, tuple[int, int, int]]:
        return self._project.class_colors()

    def close(self) -> None:
        """QuPath owns the project: nothing to close."""


def _project(request: dict[str, Any], context: dict[str, Any]) -> Any:
    """The project to work on: the one QuPath has open (in-process) when the request names it or names none,
    otherwise the project at the path in the request."""
    from .projects import open_project, project_root

    live = context.get("project_object")
    path = request.get("project")
    if live is not None and (not path or project_root(path).resolve() == Path(live.root).resolve()):
        return _LiveProject(live, context.get("imageData"))
    if not path:
        raise ConfigError("the request names no 'project'")
    return open_project(path, qupath_dir=request.get("qupath"))


def _project_root(request: dict[str, Any], context: dict[str, Any]) -> Path:
    from .projects import project_root

    path = request.get("project")
    if not path:
        raise ConfigError("the request names no 'project'")
    root = project_root(path)
    if not root.is_dir():
        raise DataError(f"project not found: {root}; pass a QuPath project (project.qpproj) or a folder project")
    return root


def _train(request: dict[str, Any], context: dict[str, Any], listeners: list[Listener], cancel: CancelToken) -> dict:
    from .training.run import train_classifier

    cfg = build_config(TrainingConfig, request.get("settings") or {}, source="settings")
    name = request.get("name")
    if not name:
        raise ConfigError("the train request names no classifier 'name'")
    project = _project(request, context)
    try:
        entry = train_classifier(project, name, cfg, request.get("images") or None,
                                 overwrite=bool(request.get("overwrite")), listeners=listeners, cancel=cancel)
    finally:
        project.close()
    results = entry.metadata.results
    return {
        "name": entry.name,
        "path": str(entry.path),
        "mean_iou": results.mean_iou if results else None,
        "per_class_iou": results.per_class_iou if results else None,
        "best_epoch": results.best_epoch if results else None,
    }


def _apply(request: dict[str, Any], context: dict[str, Any], listeners: list[Listener], cancel: CancelToken) -> dict:
    from .inference.run import apply_classifier

    cfg = build_config(InferenceConfig, request.get("settings") or {}, source="settings")
    classifier = request.get("classifier")
    if not classifier:
        raise ConfigError("the apply request names no 'classifier'")
    if cfg.scope == "selected":
        # The Groovy helper sends the selected objects' ids when it runs dlpixel as a separate process; in-process,
        # the bridge passes the selection itself.
        ids = request.get("selected") or [s.id for s in context.get("selected") or [] if getattr(s, "id", None)]
        if not ids:
            raise ConfigError("scope 'selected' needs selected annotations: select some in QuPath, or use "
                              "scope 'annotations'")
        context = {**context, "selected_ids": [str(i) for i in ids]}
    project = _project(request, context)
    try:
        written = apply_classifier(project, classifier, cfg, request.get("images") or None, listeners=listeners,
                                   cancel=cancel, context=context)
    finally:
        project.close()
    return {"classifier": classifier, "written": [str(p) for p in written]}


def _list_models(request: dict[str, Any], context: dict[str, Any], *_: Any) -> dict:
    root = _project_root(request, context)
    return {
        "models": [
            {
                "name": e.name,
                "created": e.metadata.created,
                "backbone": e.metadata.backbone,
                "classes": e.metadata.class_names,
                "mean_iou": e.metadata.results.mean_iou if e.metadata.results else None,
                "path": str(e.path),
            }
            for e in store.list_classifiers(root)
        ]
    }


def _load_settings(request: dict[str, Any], context: dict[str, Any], *_: Any) -> dict:
    name = request.get("classifier")
    if not name:
        raise ConfigError("the load_settings request names no 'classifier'")
    return {"settings": store.load_settings(_project_root(request, context), name), "name": store.retrain_name(name)}


def _named(request: dict[str, Any], action: str) -> str:
    name = request.get("classifier")
    if not name:
        raise ConfigError(f"the {action} request names no 'classifier'")
    return str(name)


def _show_model(request: dict[str, Any], context: dict[str, Any], *_: Any) -> dict:
    """A classifier's metadata and where its report is (Manage models > Show report)."""
    entry = store.load_classifier(_project_root(request, context), _named(request, "show_model"))
    report = entry.path / store.REPORT
    return {"name": entry.name, "path": str(entry.path), "report": str(report) if report.is_file() else None,
            "metadata": entry.metadata.model_dump(mode="json")}


def _delete_model(request: dict[str, Any], context: dict[str, Any], *_: Any) -> dict:
    return {"deleted": str(store.delete_classifier(_project_root(request, context), _named(request, "delete_model")))}


def _export_model(request: dict[str, Any], context: dict[str, Any], *_: Any) -> dict:
    target = request.get("path")
    if not target:
        raise ConfigError("the export_model request names no zip file 'path'")
    name = _named(request, "export_model")
    return {"exported": str(store.export_classifier(_project_root(request, context), name, Path(target)))}


def _script(request: dict[str, Any], context: dict[str, Any], *_: Any) -> dict:
    from .qupath import scripting

    kind = request.get("kind", "train")
    project = request.get("project", "")
    if kind == "train":
        cfg = build_config(TrainingConfig, request.get("settings") or {}, source="settings")
        text = scripting.training_script(project, request.get("name", ""), request.get("images") or [], cfg,
                                         overwrite=bool(request.get("overwrite")))
    elif kind == "apply":
        cfg_i = build_config(InferenceConfig, request.get("settings") or {}, source="settings")
        text = scripting.apply_script(project, request.get("classifier", ""), request.get("images") or [], cfg_i)
    else:
        raise ConfigError(f"script kind must be 'train' or 'apply', not '{kind}'")
    return {"script": text}


HANDLERS: dict[str, Handler] = {
    "train": _train,
    "apply": _apply,
    "list_models": _list_models,
    "load_settings": _load_settings,
    "show_model": _show_model,
    "delete_model": _delete_model,
    "export_model": _export_model,
    "script": _script,
}


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "action": (str,), "project": (str,), "qupath": (str,), "name": (str,), "classifier": (str,), "kind": (str,),
    "path": (str,), "settings": (dict,), "images": (list,), "selected": (list,), "overwrite": (bool,),
}
"""The JSON type of every request field dlpixel reads; anything else is refused with a one-line error."""

_JSON_NAMES = {str: "a string", dict: "an object", list: "a list", bool: "true or false", int: "a number",
               float: "a number", type(None): "null"}


def check_fields(request: dict[str, Any]) -> None:
    """Refuse a request field of the wrong JSON type, and a classifier name that ``validate_name`` refuses, before
    anything is opened."""
    from .config import validate_name

    for key, kinds in FIELD_TYPES.items():
        value = request.get(key)
        if value is None:
            continue
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise ConfigError(f"request field '{key}' must be {_JSON_NAMES[kinds[0]]}, not "
                              f"{_JSON_NAMES.get(type(value), type(value).__name__)}")
    for key in ("images", "selected"):
        items = request.get(key) or []
        if not all(isinstance(i, str) or (key == "selected" and isinstance(i, int) and not isinstance(i, bool))
                   for i in items):
            raise ConfigError(f"request field '{key}' must be a list of strings")
    for key in ("name", "classifier"):
        if request.get(key):
            validate_name(request[key])


def handle_request(
    request: dict[str, Any],
    context: dict[str, Any] | None = None,
    listeners: Iterable[Listener] = (),
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Run one request and return its result; raises ``DlpixelError`` with a one-line message on bad input."""
    if not isinstance(request, dict):
        raise ConfigError("a request must be a JSON object with an 'action'")
    check_fields(request)
    action = request.get("action")
    handler = HANDLERS.get(action)  # type: ignore[arg-type]
    if handler is None:
        raise ConfigError(f"unknown action '{action}'; one of: {', '.join(HANDLERS)}")
    return handler(request, context or {}, list(listeners), cancel or CancelToken())
