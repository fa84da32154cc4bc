"""The QuPath bridge against a real QuPath (see tests/qupath_kit.py for which one)."""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import shapely
from dlpixel.data.base import ImageSource, LabelShape
from dlpixel.errors import ConfigError, DataError
from dlpixel.qupath import jvm
from shapely.geometry import LineString, MultiPoint, Polygon

sys.path.insert(0, str(Path(__file__).parent))
from qupath_kit import require_qupath, write_pyramid_tiff  # noqa: E402

RNG = np.random.default_rng(7)
RGB_LEVELS = [RNG.integers(0, 256, (200, 300, 3), dtype=np.uint8)]
RGB_LEVELS += [RNG.integers(0, 256, (100, 150, 3), dtype=np.uint8), RNG.integers(0, 256, (50, 75, 3), dtype=np.uint8)]
U16_LEVELS = [RNG.integers(0, 65536, (190, 258, 4), dtype=np.uint16), RNG.integers(0, 65536, (95, 129, 4),
                                                                                   dtype=np.uint16)]

SHAPES = [
    LabelShape("Tumor", Polygon([(10, 10), (120, 12), (100, 90), (15, 70)]), "area", color=(200, 0, 0)),
    LabelShape("Stroma", Polygon([(150, 20), (280, 20), (280, 180), (150, 180)],
                                 [[(200, 60), (240, 60), (240, 100), (200, 100)]]), "area", color=(0, 150, 0)),
    LabelShape("Tumor", LineString([(20, 150), (60, 170.5), (130, 140)]), "line", color=(200, 0, 0)),
    LabelShape(None, Polygon([(5, 180), (40, 180), (40, 195), (5, 195)]), "area"),
    LabelShape("Other", MultiPoint([(50, 50), (60.25, 70.75)]), "point", color=(0, 0, 255)),
]


@pytest.fixture(scope="session")
def qupath_dir() -> Path:
    """The QuPath to run: QUPATH_HOME when set, else the first QuPath .ci/run assembled."""
    return require_qupath()


@pytest.fixture(scope="session")
def runtime(qupath_dir):
    return jvm.start_jvm(qupath_dir)


@pytest.fixture()
def project_dir(tmp_path, runtime) -> Path:
    """A QuPath project with an 8-bit RGB image (3 levels, 0.5 µm) and a 16-bit 4-channel image (2 levels), the first
    with classified polygon, polyline and point annotations and an unclassified polygon."""
    from dlpixel.qupath.project import create_qupath_project

    images = tmp_path / "images"
    images.mkdir()
    rgb = write_pyramid_tiff(images / "rgb.tif", RGB_LEVELS, 0.5)
    u16 = write_pyramid_tiff(images / "multi.tif", U16_LEVELS, None)
    project = create_qupath_project(tmp_path / "project")
    project.add_image(rgb, "rgb.tif").add_annotations(SHAPES)
    project.add_image(u16, "multi.tif").add_annotations([SHAPES[0]])
    return tmp_path / "project"


def _open(path):
    from dlpixel.qupath.project import open_qupath_project

    return open_qupath_project(path)


# ---- finding and starting QuPath (no JVM needed)

def test_not_found_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("QUPATH_HOME", raising=False)
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.setattr(jvm, "_usual_places", lambda: [tmp_path / "opt", tmp_path / "home"])
    with pytest.raises(jvm.QuPathNotFound) as e:
        jvm.find_qupath()
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "opt" / "QuPath*") in msg and str(tmp_path / "home" / "QuPath*") in msg
    assert "--qupath" in msg and "QUPATH_HOME" in msg
    with pytest.raises(jvm.QuPathNotFound, match="--qupath"):
        jvm.find_qupath(tmp_path / "nothing-here")


@pytest.mark.parametrize("layout,jvm_rel", [
    ("lib/app", "lib/runtime/lib/server/libjvm.so"),
    ("Contents/app", "Contents/runtime/Contents/Home/lib/libjli.dylib"),
    ("app", "runtime/bin/server/jvm.dll"),
])
def test_finds_installations_per_platform(tmp_path, monkeypatch, layout, jvm_rel):
    root = tmp_path / "apps" / "QuPath-0.6.0"
    (root / layout).mkdir(parents=True)
    (root / layout / "qupath-core-0.6.0.jar").write_bytes(b"")
    (root / jvm_rel).parent.mkdir(parents=True, exist_ok=True)
    (root / jvm_rel).write_bytes(b"")
    monkeypatch.delenv("QUPATH_HOME", raising=False)
    monkeypatch.setattr(jvm, "_usual_places", lambda: [tmp_path / "apps"])
    found = jvm.find_qupath()
    assert found.root == root and found.jvm_path == root / jvm_rel and found.library_dir == root / layout
    monkeypatch.setenv("QUPATH_HOME", str(tmp_path / "apps"))
    assert jvm.find_qupath().root == root


def test_folder_of_jars_uses_default_jvm(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jar").write_bytes(b"")
    found = jvm.find_qupath(tmp_path)
    assert found.jars == (tmp_path / "a" / "b" / "x.jar",) and found.jvm_path is None


def test_versions_and_compat():
    for bad in ("0.4.3", "0.8.0", "1.0.0"):
        with pytest.raises(jvm.QuPathError, match="not supported"):
            jvm.check_version(bad)
    assert jvm.check_version("0.5.1").measurement_names == "getMeasurementNames"
    c6 = jvm.check_version("0.6.0-rc3")
    assert (c6.measurement_names, c6.remove_measurements, c6.add_objects, c6.bundled_java) == (
        "getNames", "removeAll", "addObjects", 21)
    assert jvm.check_version("0.7.2-SNAPSHOT").version == (0, 7, 2)
    assert [jvm.check_version(v).bundled_java for v in ("0.5.1", "0.6.0", "0.7.0")] == [17, 21, 25]


def test_jvm_options(monkeypatch, tmp_path):
    install = jvm.QuPathInstall(root=tmp_path, jars=(), library_dir=tmp_path / "app")
    monkeypatch.delenv("DLPIXEL_JVM_MEMORY", raising=False)
    opts = jvm.jvm_options(install)
    assert "-Djava.awt.headless=true" in opts and "-XX:MaxRAMPercentage=50" in opts
    assert f"-Djava.library.path={tmp_path / 'app'}" in opts
    monkeypatch.setenv("DLPIXEL_JVM_MEMORY", "6g")
    assert "-Xmx6g" in jvm.jvm_options(install)
    monkeypatch.setenv("DLPIXEL_JVM_MEMORY", "lots")
    with pytest.raises(ConfigError, match="DLPIXEL_JVM_MEMORY"):
        jvm.jvm_options(install)
    monkeypatch.delenv("DLPIXEL_JVM_MEMORY")
    native = "--enable-native-access=ALL-UNNAMED"
    assert native in jvm.jvm_options(install, java=25) and native in jvm.jvm_options(install, java=22)
    assert native not in jvm.jvm_options(install, java=21) and native not in jvm.jvm_options(install)


def test_java_version_from_the_runtime_release_file(tmp_path):
    for home, text, want in (("jdk25", 'IMPLEMENTOR="x"\nJAVA_VERSION="25.0.2"\n', 25),
                             ("jdk17", 'JAVA_VERSION="17.0.15"\n', 17), ("jdk8", 'JAVA_VERSION="1.8.0_412"\n', 8)):
        server = tmp_path / home / "lib" / "server"
        server.mkdir(parents=True)
        (server / "libjvm.so").write_bytes(b"")
        (tmp_path / home / "release").write_text(text)
        assert jvm.java_feature_version(server / "libjvm.so") == want
    assert jvm.java_feature_version(None) is None
    (tmp_path / "bare").mkdir()
    assert jvm.java_feature_version(tmp_path / "bare" / "libjvm.so") is None


def test_qupath_on_too_old_a_java_says_which_java_it_needs(tmp_path):
    """The jars of a QuPath that needs Java 21 or 25, started on Java 17 (the runtime of QuPath 0.5): one line that
    names both Javas, not "holds jars but not QuPath's"."""
    import subprocess

    from qupath_kit import kits, version_of

    homes = {version_of(k)[:3]: k for k in kits()}
    newer = homes.get("0.6") or homes.get("0.7")
    java17 = jvm.install_at(homes["0.5"]).jvm_path if "0.5" in homes else None
    if newer is None or java17 is None:
        pytest.skip("needs QuPath 0.5 (for its Java 17) and QuPath 0.6 or 0.7 among the QuPaths under test")
    jars = tmp_path / "jars"
    jars.mkdir()
    for jar in (newer / "lib" / "app").glob("*.jar"):
        (jars / jar.name).symlink_to(jar)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "project.qpproj").write_text('{"version": "0.6.0", "images": []}')
    env = {**os.environ, "JAVA_HOME": str(java17.resolve().parents[2])}
    env.pop("QUPATH_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "dlpixel", "images", "--project", str(tmp_path / "p"), "--qupath",
                           str(jars)], env=env, capture_output=True, text=True, timeout=120)
    wanted = {"0.6": 21, "0.7": 25}[version_of(newer)[:3]]
    assert proc.returncode == 2 and proc.stdout == ""
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: QuPath {version_of(newer)} needs Java {wanted}; found 17"), proc.stderr


def test_a_dlpixel_process_on_qupath_prints_only_its_output(project_dir, qupath_dir):
    """A separate dlpixel process on this QuPath: standard output holds the command's output alone (QuPath's log goes
    to standard error), and Java 22+ does not warn about JPype's native access."""
    import subprocess

    env = {**os.environ, "QUPATH_HOME": str(qupath_dir)}
    proc = subprocess.run([sys.executable, "-m", "dlpixel", "images", "--project", str(project_dir)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["rgb.tif", "multi.tif"]
    assert "restricted method" not in proc.stderr and "enable-native-access" not in proc.stderr, proc.stderr


def test_java_logging_goes_to_stderr_and_warnings_only(runtime, capfd):
    """QuPath's logback prints to standard output unless told otherwise; dlpixel's processes keep standard output for
    results and --events lines."""
    import jpype

    logger = jpype.JClass("org.slf4j.LoggerFactory").getLogger("qupath.lib.io.PathIO")
    capfd.readouterr()
    logger.info("probe-info-line")
    logger.warn("probe-warn-line")
    jpype.JClass("java.lang.System").out.flush()
    jpype.JClass("java.lang.System").err.flush()
    out, err = capfd.readouterr()
    assert "probe" not in out
    assert "probe-warn-line" in err and "probe-info-line" not in err


# ---- reading

def test_runtime(runtime):
    assert runtime.compat.version[:2] in ((0, 5), (0, 6), (0, 7))
    assert jvm.start_jvm() is runtime


def test_project_and_metadata(project_dir):
    project = _open(project_dir / "project.qpproj")
    assert all(callable(getattr(project, m, None)) for m in ("images", "class_colors", "close"))
    assert project.root == project_dir.resolve()
    assert [im.name for im in project.images()] == ["rgb.tif", "multi.tif"]
    assert _open(project_dir).image_names() == ["rgb.tif", "multi.tif"]
    rgb, multi = (im.open() for im in project.images())
    assert isinstance(rgb, ImageSource)
    assert all(callable(getattr(project.images()[0], m, None)) for m in ("open", "annotations", "write_results"))
    assert (rgb.width, rgb.height, rgb.dtype, rgb.n_channels) == (300, 200, np.uint8, 3)
    assert rgb.channel_names == ["Red", "Green", "Blue"]
    assert rgb.pixel_size_um == pytest.approx(0.5)
    assert rgb.downsamples == (1.0, 2.0, 4.0)
    assert (multi.width, multi.height, multi.dtype, multi.n_channels) == (258, 190, np.uint16, 4)
    assert multi.pixel_size_um is None and multi.downsamples == (1.0, 2.0)


@pytest.mark.parametrize("which,levels", [("rgb.tif", RGB_LEVELS), ("multi.tif", U16_LEVELS)])
def test_pixels_equal_source(project_dir, which, levels):
    source = _open(project_dir).image(which).open()
    for level, d in zip(levels, source.downsamples):
        d = int(d)
        whole = source.read_region(d, 0, 0, source.width, source.height)
        assert whole.dtype == level.dtype
        np.testing.assert_array_equal(whole, level)
        tile = source.read_region(d, 8 * d, 4 * d, 40 * d, 24 * d)
        np.testing.assert_array_equal(tile, level[4:28, 8:48])
    edge = source.read_region(2, source.width - 20, -10, 40, 30)
    assert edge.shape == (15, 20, source.n_channels)
    np.testing.assert_array_equal(edge[5:, :10], levels[1][:10, -10:])
    assert not edge[:5].any() and not edge[:, 10:].any()
    assert not source.read_region(1, -100, -100, 50, 50).any()


def _qupath_color(name):
    """The colour QuPath holds for a class name (its standard classes come with their own)."""
    import jpype

    c = int(jpype.JClass("qupath.lib.objects.classes.PathClass").fromString(name).getColor())
    return (c >> 16) & 255, (c >> 8) & 255, c & 255


def test_annotations_round_trip_exactly(project_dir):
    project = _open(project_dir)
    got = project.image("rgb.tif").annotations()
    assert len(got) == len(SHAPES)
    # QuPath pre-creates Stroma (150, 200, 150): the (0, 150, 0) written with it does not replace QuPath's colour.
    assert _qupath_color("Stroma") == (150, 200, 150)
    for want, shape in zip(SHAPES, got):
        assert shape.class_name == want.class_name and shape.kind == want.kind
        assert shape.color == (_qupath_color(want.class_name) if want.class_name else None)
        assert shapely.equals_exact(shapely.normalize(shape.geometry), shapely.normalize(want.geometry), 0)
    assert len({s.id for s in got}) == len(got)
    assert project.class_colors() == {} or set(project.class_colors()) <= {"Tumor", "Stroma", "Other"}
    assert len(project.image("multi.tif").annotations()) == 1


# ---- writing

def _backups(project_dir, image):
    return sorted((project_dir / "data").glob("*/data.qpdata.*.bak")) if image is None else sorted(
        image.data_file.parent.glob("data.qpdata.*.bak"))


def test_write_results_replaces_on_rerun(project_dir):
    image = _open(project_dir).image("rgb.tif")
    tumor_id = image.annotations()[0].id
    cells = [LabelShape("Tumor", Polygon([(x, 20), (x + 8, 20), (x + 8, 28), (x, 28)]), "area", color=(200, 0, 0),
                        measurements={"Area px": 64.0, "Fraction": 0.1}) for x in (20, 40, 60)]
    written = image.write_results("unet", objects=cells,
                                  measurements={tumor_id: {"Tumor area px": 1234.0, "Fraction": 0.1}})
    assert written == [image.data_file] and len(_backups(project_dir, image)) == 1

    again = _open(project_dir).image("rgb.tif")
    dets = again.detections()
    assert len(dets) == 3 and {d.name for d in dets} == {"dlpixel: unet"}
    # QuPath keeps detection measurements as float32 (0.1 is stored as 0.10000000149011612); they are read back as
    # the shortest decimal of that float32. Annotations keep doubles.
    stored = again.read_image_data().getHierarchy().getDetectionObjects().iterator().next()
    assert float(stored.getMeasurementList().get("unet: Fraction")) == float(np.float32(0.1))
    assert all(d.class_name == "Tumor" and d.measurements == {"unet: Area px": 64.0, "unet: Fraction": 0.1}
               for d in dets)
    assert sorted(shapely.normalize(d.geometry).wkt for d in dets) == sorted(
        shapely.normalize(c.geometry).wkt for c in cells)
    ann = {a.id: a for a in again.annotations()}
    assert ann[tumor_id].measurements == {"unet: Tumor area px": 1234.0, "unet: Fraction": 0.1}
    assert len(ann) == len(SHAPES)

    again.write_results("other", objects=cells[:1], object_type="annotation")
    again.write_results("unet", objects=cells[:2], measurements={tumor_id: {"Tumor area px": 99.0}})
    third = _open(project_dir).image("rgb.tif")
    assert len(third.detections()) == 2
    anns = third.annotations()
    assert len(anns) == len(SHAPES) + 1 and sum(a.name == "dlpixel: other" for a in anns) == 1
    assert {a.id: a for a in anns}[tumor_id].measurements == {"unet: Tumor area px": 99.0}
    assert len(_backups(project_dir, third)) == 3


def test_failed_write_leaves_project_as_it_was(project_dir):
    image = _open(project_dir).image("rgb.tif")
    before = image.data_file.read_bytes()
    with pytest.raises(DataError, match="no annotation with id"):
        image.write_results("unet", objects=SHAPES[:1], measurements={"not-an-id": {"x": 1.0}})
    assert image.data_file.read_bytes() == before and not _backups(project_dir, image)

    real_entry = image.entry

    class FailingEntry:
        def __getattr__(self, name):
            return getattr(real_entry, name)

        def saveImageData(self, data):
            image.data_file.write_bytes(b"half-written")
            raise OSError("disk full")

    image._entry = FailingEntry()
    with pytest.raises(OSError, match="disk full"):
        image.write_results("unet", objects=SHAPES[:1])
    assert image.data_file.read_bytes() == before
    with pytest.raises(ConfigError):
        image.write_results("unet", objects=SHAPES[:1], object_type="cell")
    with pytest.raises(ConfigError):
        image.write_results("", objects=SHAPES[:1])


def test_live_image_data_changes_in_place(project_dir):
    from dlpixel.qupath.project import QuPathImage

    project = _open(project_dir)
    stored = project.image("rgb.tif")
    before = stored.data_file.read_bytes()
    live = QuPathImage.from_image_data(stored.read_image_data(), project)
    assert live.live and live.name == "rgb.tif"
    assert live.write_results("unet", objects=SHAPES[:2]) == []
    assert len(live.detections()) == 2
    assert stored.data_file.read_bytes() == before


# ---- bad input

def test_bad_projects(tmp_path, project_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a QuPath project"):
        _open(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a QuPath project"):
        _open(tmp_path / "notes.txt")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "project.qpproj").write_text("{not json")
    with pytest.raises(DataError, match="not a QuPath project file"):
        _open(tmp_path / "broken")
    qpproj = project_dir / "project.qpproj"
    meta = json.loads(qpproj.read_text())
    meta["version"] = "0.9.0"
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "project.qpproj").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="QuPath 0.9.0"):
        _open(tmp_path / "future")
    with pytest.raises(DataError, match=r"no image named 'nope\.tif'.*'rgb\.tif', 'multi\.tif'"):
        _open(project_dir).image("nope.tif")


def test_moved_image_is_named(project_dir, tmp_path):
    image_file = tmp_path / "images" / "multi.tif"
    image_file.rename(tmp_path / "images" / "elsewhere.tif")
    image = _open(project_dir).image("multi.tif")
    for action in (image.open, lambda: image.write_results("unet", objects=SHAPES[:1])):
        with pytest.raises(DataError) as e:
            action()
        assert "'multi.tif'" in str(e.value) and str(image_file) in str(e.value) and "\n" not in str(e.value)
    assert _open(project_dir).image("rgb.tif").open().width == 300


# ---- the in-process entry point

def test_bridge_handle_replies_in_json():
    from dlpixel.qupath.bridge import Bridge

    def handler(request, context):
        if request.get("command") == "fail":
            raise ConfigError("setting 'epochs' must be positive\nsecond line")
        if request.get("command") == "crash":
            raise RuntimeError("boom")
        return {"echo": request, "context": sorted(context)}

    bridge = Bridge(handler)
    assert json.loads(bridge.handle('{"command": "list_models"}', {"a": 1})) == {
        "ok": True, "result": {"echo": {"command": "list_models"}, "context": ["a"]}}
    assert json.loads(bridge.handle('{"command": "fail"}', {})) == {
        "ok": False, "error": "setting 'epochs' must be positive second line"}
    assert json.loads(bridge.handle('{"command": "crash"}', {})) == {"ok": False, "error": "RuntimeError: boom"}
    reply = json.loads(bridge.handle("{oops", {}))
    assert reply["ok"] is False and "not JSON" in reply["error"]


def test_registered_bridge_called_from_java(project_dir, monkeypatch):
    import jpype
    from dlpixel.qupath.bridge import register_bridge, registered_bridge
    from dlpixel.qupath.project import QuPathImage, QuPathProject

    seen = {}
    flag = jpype.JClass("java.util.concurrent.atomic.AtomicInteger")(0)
    lines = []

    @jpype.JImplements("java.util.function.Consumer")
    class Lines:
        @jpype.JOverride
        def accept(self, line):
            lines.append(json.loads(str(line)))

    def handle_request(request, context, listeners=(), cancel=None):
        seen.update(context)
        if request["command"] == "train":
            for listener in listeners:
                listener({"event": "epoch", "epoch": 1, "train_loss": 0.5})
            seen["cancelled_at_start"] = cancel.cancelled
            flag.incrementAndGet()  # what the menu's Cancel button does
            for _ in range(50):
                if cancel.cancelled:
                    break
                time.sleep(0.05)
            seen["cancelled_after_flag"] = cancel.cancelled
            return {"epochs": 1}
        assert not listeners and cancel is None
        image = context["imageData"]
        return {"command": request["command"], "image": image.name, "n_annotations": len(image.annotations()),
                "selected": [s.class_name for s in context["selected"]], "project": str(context["project"].root)}

    monkeypatch.setitem(sys.modules, "dlpixel.requests", types.SimpleNamespace(handle_request=handle_request))
    register_bridge()
    fn = registered_bridge()
    BiFunction = jpype.JClass("java.util.function.BiFunction")
    assert BiFunction.class_.isInstance(fn)
    Object = jpype.JClass("java.lang.Object").class_
    apply = BiFunction.class_.getMethod("apply", Object, Object)

    project = _open(project_dir)
    image_data = project.image("rgb.tif").read_image_data()
    selected = jpype.JClass("java.util.ArrayList")(list(image_data.getHierarchy().getAnnotationObjects())[:2])
    context = jpype.JClass("java.util.HashMap")()
    context.put("project", project.java)
    context.put("imageData", image_data)
    context.put("selected", selected)
    context.put("threshold", jpype.JClass("java.lang.Double")(0.5))
    context.put("label", jpype.JString("x"))
    reply = json.loads(str(apply.invoke(fn, jpype.JString('{"command": "apply"}'), context)))
    assert reply == {"ok": True, "result": {"command": "apply", "image": "rgb.tif", "n_annotations": len(SHAPES),
                                            "selected": ["Tumor", "Stroma"], "project": str(project_dir.resolve())}}
    assert isinstance(seen["project"], QuPathProject) and isinstance(seen["imageData"], QuPathImage)
    assert seen["project_object"] is seen["project"]
    assert seen["threshold"] == 0.5 and seen["label"] == "x"

    # Progress events and Cancel, as the Groovy helper passes them: a Consumer<String> and an AtomicInteger.
    context.put("events", Lines())
    context.put("cancel", flag)
    reply = json.loads(str(apply.invoke(fn, jpype.JString('{"command": "train"}'), context)))
    assert reply == {"ok": True, "result": {"epochs": 1}}
    assert lines == [{"event": "epoch", "epoch": 1, "train_loss": 0.5}]
    assert seen["cancelled_at_start"] is False and seen["cancelled_after_flag"] is True
    assert "events" not in seen and "cancel" not in seen


def test_launch_gui_without_gui_classes(qupath_dir, runtime):
    import jpype
    from dlpixel.qupath.bridge import launch_gui

    try:
        jpype.JClass("qupath.QuPath")
        has_gui = True
    except Exception:  # noqa: BLE001 - JPype's error for a class that is not there
        has_gui = False
    if has_gui:
        pytest.skip("this QuPath has its GUI")

    with pytest.raises(jvm.QuPathError, match=r"qupath\.QuPath.*--qupath"):
        launch_gui(qupath_dir)


def test_cli_images(project_dir, capsys, qupath_dir):
    from dlpixel.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["qupath", "launch"]).func.__name__ == "_launch"
    assert parser.parse_args(["qupath", "install", "--print-only"]).func.__name__ == "_install"
    assert parser.parse_args(["bench", "bridge", "--project", "p"]).func.__name__ == "_bench"
    args = parser.parse_args(["images", "--project", str(project_dir), "--qupath", str(qupath_dir)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["rgb.tif", "multi.tif"]
    args = parser.parse_args(["bench", "bridge", "--project", str(project_dir), "--seconds", "0.2", "--json",
                              "--tile-size", "64"])
    assert args.func(args) == 0
    figures = json.loads(capsys.readouterr().out)
    assert [f["image"] for f in figures] == ["rgb.tif", "multi.tif"] and all(f["ratio"] > 0 for f in figures)


def test_images_command_lists_names_and_fails_in_one_line(project_dir, tmp_path, capsys, qupath_dir):
    from dlpixel.cli.main import main

    assert main(["images", "--project", str(project_dir / "project.qpproj"), "--qupath", str(qupath_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == ["rgb.tif", "multi.tif"]
    (tmp_path / "plain").mkdir()
    for bad, says in ((tmp_path / "plain", "not a QuPath project"), (tmp_path / "nothing.txt", "not a QuPath project")):
        assert main(["images", "--project", str(bad), "--qupath", str(qupath_dir)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: ") and says in captured.err
        assert captured.err.count("\n") == 1
