"""The QuPath bridge against the Java stand-in of QuPath's API (tests/java), or a real QuPath when QUPATH_HOME is set."""

from __future__ import annotations

import json
import os
import sys
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
from qupath_standin import build_standin, write_pyramid_tiff  # noqa: E402

REAL_QUPATH = os.environ.get("QUPATH_HOME")
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
    """The QuPath to run: QUPATH_HOME when set, else the stand-in compiled with javac."""
    if REAL_QUPATH:
        return Path(REAL_QUPATH)
    return build_standin()


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
    real = bool(REAL_QUPATH)
    rgb = write_pyramid_tiff(images / "rgb.tif", RGB_LEVELS, 0.5, subifds=real)
    u16 = write_pyramid_tiff(images / "multi.tif", U16_LEVELS, None, subifds=real)
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


def test_annotations_round_trip_exactly(project_dir):
    project = _open(project_dir)
    got = project.image("rgb.tif").annotations()
    assert len(got) == len(SHAPES)
    for want, shape in zip(SHAPES, got):
        assert shape.class_name == want.class_name and shape.kind == want.kind and shape.color == want.color
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
                        measurements={"Area px": 64.0}) for x in (20, 40, 60)]
    written = image.write_results("unet", objects=cells, measurements={tumor_id: {"Tumor area px": 1234.0}})
    assert written == [image.data_file] and len(_backups(project_dir, image)) == 1

    again = _open(project_dir).image("rgb.tif")
    dets = again.detections()
    assert len(dets) == 3 and {d.name for d in dets} == {"dlpixel: unet"}
    assert all(d.class_name == "Tumor" and d.measurements == {"unet: Area px": 64.0} for d in dets)
    assert sorted(shapely.normalize(d.geometry).wkt for d in dets) == sorted(
        shapely.normalize(c.geometry).wkt for c in cells)
    ann = {a.id: a for a in again.annotations()}
    assert ann[tumor_id].measurements == {"unet: Tumor area px": 1234.0}
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

    def handle_request(request, context):
        seen.update(context)
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


@pytest.mark.skipif(bool(REAL_QUPATH), reason="a real QuPath has its GUI")
def test_launch_gui_without_gui_classes(qupath_dir, runtime):
    from dlpixel.qupath.bridge import launch_gui

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
