"""The in-process entry point: Groovy running in QuPath's JVM calls Python through one registered Java object.

Groovy side::

    def bridge = System.getProperties().get("dlpixel.bridge")
    def reply = bridge.apply(requestJson, [project: getProject(), imageData: getCurrentImageData(),
                                           selected: getSelectedObjects()])

The reply is JSON: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "one line"}``.

Two optional context entries make a long request visible and stoppable from Groovy: ``events``, a
``java.util.function.Consumer<String>`` that gets each progress event as a JSON line (the same lines as
``dlpixel request --events jsonl``), and ``cancel``, a ``java.util.concurrent.atomic.AtomicInteger`` (or
``AtomicBoolean``) that Groovy raises to stop the run (each step up is one cancel, like one Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import jpype

from ..errors import DlpixelError
from .jvm import QuPathError, runtime, start_jvm
from .project import QuPathImage, QuPathProject, path_objects_to_shapes

log = logging.getLogger(__name__)

BRIDGE_PROPERTY = "dlpixel.bridge"
"""The ``System.getProperties()`` key under which the bridge is registered."""

GUI_MAIN_CLASS = "qupath.QuPath"

Handler = Callable[[dict, dict], Any]


EVENTS_KEY = "events"
CANCEL_KEY = "cancel"
"""Context entries that are not data: the progress callback and the cancel flag (see the module's docstring)."""


def _default_handler(request: dict, context: dict) -> Any:
    from ..requests import handle_request

    listeners = context.pop(EVENTS_KEY, None) or []
    cancel = context.pop(CANCEL_KEY, None)
    return handle_request(request, context, listeners, cancel)


def _event_listener(consumer: Any) -> Callable[[dict], None]:
    """Each event as one JSON line to a Java ``Consumer<String>``; a failing consumer never stops the run."""

    def send(event: dict) -> None:
        try:
            consumer.accept(jpype.JString(json.dumps(event, default=_json_default)))
        except Exception:  # noqa: BLE001 - progress is a courtesy; the run goes on
            log.debug("the progress callback failed", exc_info=True)

    return send


def _level(flag: Any) -> int:
    """How many times the flag asks to cancel: an AtomicBoolean counts 0 or 1, an AtomicInteger its value."""
    return int(flag.get())


class _JavaCancel:
    """Watches a Java ``AtomicInteger``/``AtomicBoolean`` while a request runs and cancels the token once for each
    step up (the first asks the run to stop cleanly, like a first Ctrl-C)."""

    def __init__(self, flag: Any, token: Any, interval: float = 0.1):
        self._flag, self.token, self._interval = flag, token, interval
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._seen = 0
        self._thread = threading.Thread(target=self._watch, name="dlpixel-cancel", daemon=True)

    def poll(self) -> None:
        """Cancel the token for each step the flag rose since the last look (also called after every event, so a
        Cancel raised while an event is handled takes effect before the run goes on)."""
        with self._lock:
            try:
                level = _level(self._flag)
            except Exception:  # noqa: BLE001 - a flag that cannot be read is never raised
                return
            while self._seen < level:
                self._seen += 1
                self.token.cancel()

    def _watch(self) -> None:
        while not self._done.wait(self._interval):
            self.poll()

    def __enter__(self) -> _JavaCancel:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join(timeout=1)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Bridge:
    """Parses a JSON request, runs it through ``dlpixel.requests.handle_request`` and answers in JSON."""

    def __init__(self, handler: Handler | None = None):
        self._handler = handler

    def handle(self, request_json: str, context: dict | None = None) -> str:
        """Handle one request; every failure becomes ``{"ok": false, "error": ...}``, never an exception."""
        try:
            request = json.loads(request_json)
        except (TypeError, ValueError) as e:
            return json.dumps({"ok": False, "error": _one_line(f"the request is not JSON: {e}")})
        if not isinstance(request, dict):
            return json.dumps({"ok": False, "error": "the request must be a JSON object"})
        try:
            handler = self._handler or _default_handler
            result = handler(request, context or {})
            return json.dumps({"ok": True, "result": result}, default=_json_default)
        except DlpixelError as e:
            return json.dumps({"ok": False, "error": _one_line(str(e))})
        except Exception as e:  # noqa: BLE001 - the caller is Groovy: it gets a message, the log gets the trace
            log.exception("request %r failed", request.get("command", request.get("action")))
            return json.dumps({"ok": False, "error": _one_line(f"{type(e).__name__}: {e}")})


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def _python_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, jpype.JString) or isinstance(value, jpype.JClass("java.lang.String")):
        return str(value)
    if isinstance(value, jpype.JClass("java.lang.Boolean")):
        return bool(value.booleanValue())
    if isinstance(value, (jpype.JClass("java.lang.Integer"), jpype.JClass("java.lang.Long"))):
        return int(value.longValue())
    if isinstance(value, jpype.JClass("java.lang.Number")):
        return float(value.doubleValue())
    return value


def context_to_python(jmap: Any) -> dict:
    """The Java context map as a dict: strings and numbers as Python values, ``project`` as a QuPathProject (also
    under ``project_object``, where dlpixel.requests looks for a live project), ``imageData`` as a live
    QuPathImage, ``selected`` (path objects) as LabelShapes; other values stay Java objects."""
    if jmap is None:
        return {}
    if isinstance(jmap, dict):
        return dict(jmap)
    out: dict[str, Any] = {str(k): _python_value(jmap.get(k)) for k in jmap.keySet()
                           if str(k) not in (EVENTS_KEY, CANCEL_KEY)}
    Project = jpype.JClass("qupath.lib.projects.Project")
    ImageData = jpype.JClass("qupath.lib.images.ImageData")
    Collection = jpype.JClass("java.util.Collection")
    project = out.get("project")
    if isinstance(project, Project):
        out["project"] = out["project_object"] = project = QuPathProject.from_java(project)
    image_data = out.get("imageData")
    if isinstance(image_data, ImageData):
        out["imageData"] = QuPathImage.from_image_data(
            image_data, project if isinstance(project, QuPathProject) else None)
    selected = out.get("selected")
    if isinstance(selected, Collection):
        out["selected"] = path_objects_to_shapes(selected)
    return out


@jpype.JImplements("java.util.function.BiFunction", deferred=True)
class _BridgeFunction:
    def __init__(self, bridge: Bridge):
        self._bridge = bridge

    @jpype.JOverride
    def apply(self, request: Any, context: Any) -> Any:
        from ..runtime.events import CancelToken

        try:
            ctx = context_to_python(context)
            events = context.get(EVENTS_KEY) if context is not None else None
            flag = context.get(CANCEL_KEY) if context is not None else None
        except Exception as e:  # noqa: BLE001 - a reply, not a Java exception, is what Groovy expects
            return jpype.JString(json.dumps({"ok": False, "error": _one_line(f"bad context: {e}")}))
        send = _event_listener(events) if events is not None else None
        if flag is None:
            if send is not None:
                ctx[EVENTS_KEY] = [send]
            return jpype.JString(self._bridge.handle(str(request), ctx))
        token = ctx[CANCEL_KEY] = CancelToken()
        with _JavaCancel(flag, token) as watcher:

            def send_then_poll(event: dict) -> None:
                if send is not None:
                    send(event)
                watcher.poll()

            ctx[EVENTS_KEY] = [send_then_poll]
            return jpype.JString(self._bridge.handle(str(request), ctx))


def register_bridge(bridge: Bridge | None = None) -> Any:
    """Register ``bridge`` (a new one by default) as a ``java.util.function.BiFunction<String, Map, String>`` under
    the system property key ``dlpixel.bridge``; returns the Java proxy."""
    runtime()
    proxy = _BridgeFunction(bridge or Bridge())
    jpype.JClass("java.lang.System").getProperties().put(jpype.JString(BRIDGE_PROPERTY), proxy)
    return proxy


def registered_bridge() -> Any:
    """What is registered under ``dlpixel.bridge`` (None when nothing is)."""
    return jpype.JClass("java.lang.System").getProperties().get(jpype.JString(BRIDGE_PROPERTY))


def launch_gui(qupath_dir: str | Path | None = None, args: list[str] | None = None) -> None:
    """Start QuPath's GUI in this process with the bridge registered, so scripts reach Python directly. Returns when
    QuPath's main method does."""
    rt = start_jvm(qupath_dir, headless=False)
    try:
        main_class = jpype.JClass(GUI_MAIN_CLASS)
    except Exception as e:
        raise QuPathError(
            f"QuPath's GUI ({GUI_MAIN_CLASS}) is not among the jars in {rt.install.root}: point --qupath at a full"
            " QuPath installation"
        ) from e
    if "-Djava.awt.headless=true" in rt.options:
        raise QuPathError("this process started Java headless, so it cannot show QuPath's GUI; run"
                          " `dlpixel qupath launch` in a fresh process")
    register_bridge()
    argv = jpype.JArray(jpype.JString)([jpype.JString(a) for a in (args or [])])
    if sys.platform == "darwin":
        jpype.setupGuiEnvironment(lambda: main_class.main(argv))
    else:
        main_class.main(argv)
