"""Find QuPath, start the JVM in this process once, and record which QuPath release it runs."""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DlpixelError
from ..runtime.process import mark_fork_unsafe

log = logging.getLogger(__name__)

SUPPORTED = ((0, 5), (0, 8))
"""QuPath releases this bridge supports: 0.5 <= version < 0.8."""


class QuPathError(DlpixelError):
    """QuPath cannot be found, started, or is a release dlpixel does not support."""


class QuPathNotFound(QuPathError):
    """No QuPath installation or folder of QuPath jars was found."""


@dataclass(frozen=True)
class QuPathInstall:
    """Where QuPath's jars are and which JVM runs them (None = the default JVM)."""

    root: Path
    jars: tuple[Path, ...]
    jvm_path: Path | None = None
    library_dir: Path | None = None


@dataclass(frozen=True)
class QuPathCompat:
    """The differences between QuPath 0.5, 0.6 and 0.7 the bridge has to know about, one property each."""

    version: tuple[int, int, int]

    @property
    def add_objects(self) -> str:
        # 0.4 renamed PathObjectHierarchy.addPathObjects to addObjects; 0.6 removed the old name.
        return "addObjects"

    @property
    def put_measurement(self) -> str:
        # 0.4 added MeasurementList.put; 0.6 removed putMeasurement.
        return "put"

    @property
    def measurement_names(self) -> str:
        # 0.6 added MeasurementList.getNames and deprecated getMeasurementNames.
        return "getNames" if self.version >= (0, 6, 0) else "getMeasurementNames"

    @property
    def remove_measurements(self) -> str:
        # 0.6 added MeasurementList.removeAll and deprecated removeMeasurements.
        return "removeAll" if self.version >= (0, 6, 0) else "removeMeasurements"

    @property
    def bundled_java(self) -> int:
        # 0.5 bundles Java 17, 0.6 Java 21, 0.7 Java 25.
        if self.version >= (0, 7, 0):
            return 25
        return 21 if self.version >= (0, 6, 0) else 17


@dataclass
class QuPathRuntime:
    """The running JVM: the install it was started from, QuPath's version, and its compatibility object."""

    install: QuPathInstall
    version: str
    compat: QuPathCompat
    options: list[str] = field(default_factory=list)


_runtime: QuPathRuntime | None = None
_failure: QuPathError | None = None


def _layouts(d: Path) -> QuPathInstall | None:
    """An installed QuPath (per platform) at ``d``, with its bundled runtime."""
    candidates = [
        (d / "lib" / "app", d / "lib" / "runtime" / "lib" / "server" / "libjvm.so"),
        (d / "Contents" / "app", d / "Contents" / "runtime" / "Contents" / "Home" / "lib" / "libjli.dylib"),
        (d / "app", d / "runtime" / "bin" / "server" / "jvm.dll"),
    ]
    for app, jvm in candidates:
        jars = tuple(sorted(app.glob("*.jar"))) if app.is_dir() else ()
        if jars:
            return QuPathInstall(root=d, jars=jars, jvm_path=jvm if jvm.is_file() else None, library_dir=app)
    return None


def _installed(d: Path) -> QuPathInstall | None:
    """An installation at ``d`` or one level down (``QuPath/``, ``QuPath.app/``)."""
    for sub in (d, d / "QuPath", d / "QuPath.app"):
        found = _layouts(sub) if sub.is_dir() else None
        if found:
            return found
    return None


def _qupath_dirs(base: Path) -> list[Path]:
    """Folders named like ``QuPath*`` in ``base``, newest-looking first."""
    try:
        return sorted((p for p in base.iterdir() if p.is_dir() and p.name.lower().startswith("qupath")), reverse=True)
    except OSError:
        return []


def install_at(d: Path) -> QuPathInstall | None:
    """QuPath at ``d``: an installation (also one level down or in a ``QuPath*`` folder) or any folder of jars."""
    d = d.expanduser()
    if not d.is_dir():
        return None
    for candidate in (d, *_qupath_dirs(d)):
        found = _installed(candidate)
        if found:
            return found
    jars = tuple(sorted(p for p in d.rglob("*.jar") if p.is_file()))
    return QuPathInstall(root=d, jars=jars) if jars else None


def _usual_places() -> list[Path]:
    home = Path.home()
    bases = [Path("/opt"), Path("/usr/local"), home, home / "Applications", Path("/Applications"),
             Path("C:/Program Files"), home / "AppData" / "Local"]
    if os.environ.get("CONDA_PREFIX"):
        bases.append(Path(os.environ["CONDA_PREFIX"]))
    return bases


def find_qupath(qupath_dir: str | Path | None = None) -> QuPathInstall:
    """Locate QuPath: ``--qupath DIR``, then ``QUPATH_HOME``, then ``QuPath*`` folders in the usual install places."""
    looked: list[str] = []
    explicit = [("--qupath", qupath_dir), ("QUPATH_HOME", os.environ.get("QUPATH_HOME") or None)]
    for label, value in explicit:
        if value is None:
            looked.append(f"{label} (not set)")
            continue
        found = install_at(Path(value))
        if found:
            return found
        if label == "--qupath":
            raise QuPathNotFound(f"no QuPath jars under --qupath {value}: pass the folder QuPath is installed in")
        looked.append(f"{label}={value} (no jars)")
    for base in _usual_places():
        pattern = str(base / "QuPath*")
        looked.append(pattern)
        for d in _qupath_dirs(base) if base.is_dir() else []:
            found = _installed(d)
            if found:
                return found
    raise QuPathNotFound(
        "QuPath not found; looked in " + ", ".join(looked) + ". Pass --qupath DIR or set QUPATH_HOME to where QuPath"
        " is installed"
    )


def parse_version(text: str) -> tuple[int, int, int]:
    """``"0.6.0-rc2"`` -> (0, 6, 0)."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise QuPathError(f"cannot read QuPath's version from {text!r}")
    return int(m[1]), int(m[2]), int(m[3] or 0)


def check_version(text: str) -> QuPathCompat:
    """Refuse QuPath releases outside 0.5–0.7; return the compatibility object for the others."""
    version = parse_version(text)
    low, high = SUPPORTED
    if not (low <= version[:2] < high):
        raise QuPathError(
            f"QuPath {text} is not supported: dlpixel works with QuPath 0.5, 0.6 and 0.7; install one of those and"
            " pass --qupath DIR"
        )
    return QuPathCompat(version)


def java_feature_version(jvm_path: str | Path | None) -> int | None:
    """The feature version (17, 21, 25, ...) of the Java runtime that holds ``jvm_path``, from the ``release`` file at
    its top (every JDK and jlink runtime has one); None when there is none."""
    if not jvm_path:
        return None
    here = Path(jvm_path).resolve().parent
    for _ in range(5):
        release = here / "release"
        if release.is_file():
            try:
                text = release.read_text(encoding="utf-8", errors="replace")
            except OSError:
                return None
            m = re.search(r'^JAVA_VERSION="(?:1\.)?(\d+)', text, re.MULTILINE)
            return int(m[1]) if m else None
        here = here.parent
    return None


def jvm_options(install: QuPathInstall, *, headless: bool = True, java: int | None = None) -> list[str]:
    """Start options: headless AWT, a memory limit (``DLPIXEL_JVM_MEMORY`` such as ``8g``, else half the RAM),
    QuPath's native libraries, and on Java 22+ (``java``) native access for JPype, as QuPath's own launcher grants
    it (Java 25 warns at every start without it; Java 21 and older may refuse the option)."""
    opts = []
    if headless:
        opts.append("-Djava.awt.headless=true")
    memory = os.environ.get("DLPIXEL_JVM_MEMORY", "").strip()
    if memory:
        if not re.fullmatch(r"\d+[kKmMgG]?", memory):
            raise ConfigError(f"DLPIXEL_JVM_MEMORY={memory!r} is not a Java heap size such as 4096m or 8g")
        opts.append(f"-Xmx{memory}")
    else:
        opts.append("-XX:MaxRAMPercentage=50")
    if install.library_dir is not None:
        opts.append(f"-Djava.library.path={install.library_dir}")
    if java is not None and java >= 22:
        opts.append("--enable-native-access=ALL-UNNAMED")
    return opts


def _jar_version(install: QuPathInstall) -> str | None:
    """QuPath's version from the name of its core jar (``qupath-core-0.6.0.jar``), for messages before it runs."""
    for jar in install.jars:
        m = re.fullmatch(r"qupath-core-(\d+\.\d+\.\d+[\w.-]*)\.jar", jar.name)
        if m:
            return m[1]
    return None


def _class_version_error(e: BaseException, install: QuPathInstall, jvm: str) -> QuPathError | None:
    """``UnsupportedClassVersionError`` as one line: which Java QuPath needs and which one ran it."""
    text = str(e)
    m = re.search(r"class file version (\d+)", text)
    if not m:
        return None
    needed = int(m[1]) - 44
    found = None
    try:
        import jpype

        spec = str(jpype.JClass("java.lang.System").getProperty("java.specification.version"))
        found = int(spec.split(".")[-1] if spec.startswith("1.") else spec)
    except Exception:  # noqa: BLE001 - the figure is only for the message
        up_to = re.search(r"up to (\d+)", text)
        found = int(up_to[1]) - 44 if up_to else None
    qupath = _jar_version(install) or f"in {install.root}"
    return QuPathError(
        f"QuPath {qupath} needs Java {needed}; found {found if found is not None else 'an older one'} ({jvm}): point"
        f" --qupath at the QuPath installation (it bundles its Java) or set JAVA_HOME to Java {needed} or later"
    )


def _java_logging_to_stderr(*, quiet: bool) -> None:
    """QuPath's logback configuration logs to standard output, where ``--events jsonl`` and command results go: send
    its console output to standard error instead, and in a headless process keep only warnings and errors."""
    import jpype

    try:
        factory = jpype.JClass("org.slf4j.LoggerFactory").getILoggerFactory()
        LoggerContext = jpype.JClass("ch.qos.logback.classic.LoggerContext")
    except Exception:  # noqa: BLE001 - no slf4j or no logback: nothing of QuPath's logs to standard output
        return
    if not isinstance(factory, LoggerContext):
        return
    root = factory.getLogger(jpype.JClass("org.slf4j.Logger").ROOT_LOGGER_NAME)
    ConsoleAppender = jpype.JClass("ch.qos.logback.core.ConsoleAppender")
    appenders = root.iteratorForAppenders()
    while appenders.hasNext():
        appender = appenders.next()
        if isinstance(appender, ConsoleAppender) and str(appender.getTarget()) != "System.err":
            appender.stop()
            appender.setTarget(jpype.JString("System.err"))
            appender.start()
    if quiet:
        root.setLevel(jpype.JClass("ch.qos.logback.classic.Level").WARN)


def start_jvm(qupath_dir: str | Path | None = None, *, headless: bool = True) -> QuPathRuntime:
    """Start the JVM with QuPath on the classpath (once per process) and check QuPath's version."""
    global _runtime, _failure
    if _failure is not None:
        raise _failure
    if _runtime is not None:
        if qupath_dir is not None:
            wanted = install_at(Path(qupath_dir))
            if wanted is not None and wanted.root.resolve() != _runtime.install.root.resolve():
                raise QuPathError(
                    f"this process already runs QuPath from {_runtime.install.root}; a process holds one JVM, so"
                    f" {qupath_dir} cannot be loaded too"
                )
        return _runtime
    import jpype

    install = find_qupath(qupath_dir)
    if jpype.isJVMStarted():
        raise QuPathError("a JVM was started in this process without dlpixel; start QuPath through dlpixel.qupath.jvm")
    if install.jvm_path is not None:
        jvm = str(install.jvm_path)
        if sys.platform == "win32":
            os.environ["PATH"] = str(install.jvm_path.parent.parent) + os.pathsep + os.environ.get("PATH", "")
    else:
        try:
            jvm = jpype.getDefaultJVMPath()
        except jpype.JVMNotFoundException as e:
            raise QuPathError(f"no Java runtime found for the jars in {install.root}: install Java 17+ or set"
                              " JAVA_HOME") from e
    opts = jvm_options(install, headless=headless, java=java_feature_version(jvm))
    jpype.startJVM(jvm, *opts, classpath=[str(p) for p in install.jars], convertStrings=False)
    mark_fork_unsafe("QuPath's Java VM")  # forked children could hang in its garbage collector
    _java_logging_to_stderr(quiet=headless)
    try:
        version = str(jpype.JClass("qupath.lib.common.GeneralTools").getVersion())
        compat = check_version(version)
    except QuPathError as e:
        _failure = e
        raise
    except Exception as e:
        _failure = _class_version_error(e, install, jvm) or QuPathError(
            f"{install.root} holds jars but not QuPath's (qupath.lib.common.GeneralTools missing)")
        raise _failure from e
    _runtime = QuPathRuntime(install=install, version=version, compat=compat, options=opts)
    log.info("QuPath %s from %s", version, install.root)
    return _runtime


def runtime() -> QuPathRuntime:
    """The running QuPath, starting it from ``QUPATH_HOME`` or the usual places if needed."""
    return _runtime if _runtime is not None else start_jvm()


def java_error(e: BaseException) -> str:
    """A Java exception's message on one line (its class name when it has none)."""
    import jpype

    msg = None
    if isinstance(e, jpype.JException):
        msg = e.getMessage()
        msg = str(msg) if msg is not None else str(e.getClass().getSimpleName())
    text = msg or str(e) or type(e).__name__
    return " ".join(text.split())
