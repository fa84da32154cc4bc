"""Groovy inside QuPath's JVM: the menu's logic without JavaFX (requests, sections, progress, Cancel, what the project
holds) and the helper as QuPath's script editor runs it (GroovyShell with QP's project and image set), progress
and Cancel included, in-process through the bridge and by subprocess.

They run on the Groovy 4 that the QuPath under test carries (0.5.1, 0.6.0); QuPath 0.7 uses Groovy 5, which the
assembled 0.7.0 lacks, so there they are skipped.
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import shapely
from dlpixel.config import TrainingConfig
from dlpixel.data.base import LabelShape
from dlpixel.qupath.install import groovy_source_dir

sys.path.insert(0, str(Path(__file__).parent))
from conftest import strokes_from_truth, synthetic_image  # noqa: E402
from qupath_kit import require_qupath, version_of, write_pyramid_tiff  # noqa: E402


@pytest.fixture(scope="module")
def shell():
    """A function that evaluates Groovy in this process's QuPath JVM and returns what the script returns, as
    JSON-decoded Python."""
    from dlpixel.qupath import jvm

    home = require_qupath()
    jvm.start_jvm(home)
    import jpype

    try:
        GroovyShell = jpype.JClass("groovy.lang.GroovyShell")
    except Exception:  # noqa: BLE001 - JPype's error for a missing class
        pytest.skip(f"QuPath {version_of(home)} here has no Groovy (QuPath 0.7 uses Groovy 5; this one is assembled"
                    " without it)")
    Binding = jpype.JClass("groovy.lang.Binding")

    def run(script: str, **variables):
        binding = Binding()
        for key, value in variables.items():
            binding.setVariable(key, value)
        loader = jpype.JClass("java.lang.Thread").currentThread().getContextClassLoader()
        out = GroovyShell(loader, binding).evaluate(textwrap.dedent(script))
        return json.loads(str(out)) if out is not None else None

    return run


LOGIC = str(groovy_source_dir() / "menu" / "DLPixelMenuLogic.groovy")
HELPER = str(groovy_source_dir() / "DLPixel.groovy")
LOAD = f"""
    def Logic = new GroovyClassLoader(getClass().classLoader).parseClass(new File({json.dumps(LOGIC)}))
    def DLPixel = new GroovyClassLoader(getClass().classLoader).parseClass(new File({json.dumps(HELPER)}))
    def errorOf = {{ Closure c -> try {{ c.call(); return null }} catch (IllegalArgumentException e) {{ e.message }} }}
"""


def test_menu_is_found_by_qupaths_key_and_sections_cover_every_setting(shell):
    defaults = TrainingConfig().model_dump(mode="json")
    got = shell(LOAD + """
        def json = new groovy.json.JsonSlurper().parseText(defaults)
        def sections = Logic.sections(json, Logic.TRAIN_SECTIONS)
        groovy.json.JsonOutput.toJson([menu: Logic.MENU_PATH,
            sections: sections.collect { [title: it.title, keys: it.values.keySet() as List, open: it.expanded] }])
    """, defaults=json.dumps(defaults))
    assert got["menu"] == "Menu.Extensions>DL Pixel Classifier"
    titles = [s["title"] for s in got["sections"]]
    assert titles[:4] == ["Basic", "Training strategy", "Transfer learning", "Augmentation"]
    assert [s["open"] for s in got["sections"]] == [True] + [False] * (len(titles) - 1)
    shown = [k for s in got["sections"] for k in s["keys"]]
    assert sorted(shown) == sorted(set(defaults) - {"channels", "classes", "class_weights"})


def test_requests_from_the_dialogs(shell):
    got = shell(LOAD + """
        def classes = [[name: 'Tumor', selected: true, weight: '2.5'], [name: 'Stroma', selected: true, weight: ''],
                       [name: 'Other', selected: false, weight: '9']]
        def channels = [[name: 'Red', selected: true], [name: 'Green', selected: true], [name: 'Blue', selected: true]]
        def state = [project: '/p/project.qpproj', name: 'T_1', overwrite: true, images: ['a.tif'],
                     settings: [epochs: 3, augment: [hflip: false]], classes: classes, channels: channels]
        def train = Logic.trainRequest(state)
        def reordered = Logic.trainRequest(state + [channels: [[name: 'Blue', selected: true],
                                                               [name: 'Red', selected: true],
                                                               [name: 'Green', selected: false]]])
        def apply = Logic.applyRequest([project: '/p', classifier: 'T_1', images: [], output: 'objects',
                                        scope: 'selected', settings: [tile_size: null, overlap: 16, device: '']])
        def loaded = Logic.stateFromModel([name: 'Retrain_T_1', settings: [epochs: 9, classes: ['Stroma', 'Necrosis'],
                                           class_weights: [Necrosis: 3], channels: ['Blue', 'Red']]],
                                          classes, channels)
        groovy.json.JsonOutput.toJson([
            train: train, reordered: reordered.settings.channels, apply: apply, loaded: loaded,
            errors: [
                errorOf { Logic.trainRequest(state + [name: 'bad name']) },
                errorOf { Logic.trainRequest(state + [classes: classes.collect {
                    it + [selected: it.name == 'Tumor'] }]) },
                errorOf { Logic.trainRequest(state + [classes: [classes[0] + [weight: '-1'], classes[1]]]) },
                errorOf { Logic.trainRequest(state + [channels: channels.collect { it + [selected: false] }]) },
                errorOf { Logic.applyRequest([classifier: 'T_1', output: 'pixels']) },
                errorOf { Logic.applyRequest([classifier: null]) },
            ]])
    """)
    assert got["train"] == {"action": "train", "project": "/p/project.qpproj", "name": "T_1", "images": ["a.tif"],
                            "settings": {"epochs": 3, "augment": {"hflip": False}, "classes": ["Tumor", "Stroma"],
                                         "class_weights": {"Tumor": 2.5}},
                            "overwrite": True}
    assert got["reordered"] == ["Blue", "Red"]
    assert got["apply"] == {"action": "apply", "project": "/p", "classifier": "T_1", "images": [],
                            "settings": {"overlap": 16, "output": "objects", "scope": "selected"}}
    loaded = got["loaded"]
    assert loaded["settings"] == {"epochs": 9} and loaded["name"] == "Retrain_T_1"
    assert [(c["name"], c["selected"], c["weight"]) for c in loaded["classes"]] == [
        ("Tumor", False, "1"), ("Stroma", True, "1"), ("Other", False, "1"), ("Necrosis", True, "3")]
    assert loaded["classes"][-1]["missing"] is True
    assert [(c["name"], c["selected"]) for c in loaded["channels"]] == [("Blue", True), ("Red", True),
                                                                        ("Green", False)]
    assert [e is not None for e in got["errors"]] == [True] * 6
    assert "two classes" in got["errors"][1] and "'-1'" in got["errors"][2] and "pixels" not in got["errors"][5]


def test_progress_follows_the_event_stream_and_cancel_has_two_steps(shell):
    lines = [
        {"event": "stage", "stage": "reading", "message": "reading images and annotations"},
        {"event": "extract", "done": 3, "total": 12},
        {"event": "batch", "epoch": 1, "batch": 2, "batches": 4, "loss": 0.9},
        {"event": "epoch", "epoch": 1, "epochs": 4, "patience": 2, "best_metric": 0.41, "metric_name": "mean_iou",
         "train_loss": 0.8, "val_loss": 0.7, "mean_iou": 0.41, "best_epoch": 1, "epochs_without_improvement": 0},
        {"event": "epoch", "epoch": 2, "epochs": 4, "patience": 2, "best_metric": 0.41, "metric_name": "mean_iou",
         "train_loss": 0.6, "val_loss": 0.75, "mean_iou": 0.39, "best_epoch": 1, "epochs_without_improvement": 1},
        {"event": "log", "level": "warning", "message": "class 'Other' has few pixels"},
    ]
    got = shell(LOAD + """
        def p = Logic.progress('Training T')
        def seen = []
        new groovy.json.JsonSlurper().parseText(lines).each { line ->
            p.update(groovy.json.JsonOutput.toJson(line))
            seen << [status: p.status, fraction: p.fraction]
        }
        p.update('12:00:01 [main] INFO qupath - not an event')
        def flag = Logic.newCancel()
        def first = Logic.cancelPressed(flag, p)
        p.update([event: 'batch', epoch: 3, batch: 1, batches: 4, loss: 0.5])
        def stoppingStatus = p.status
        def second = Logic.cancelPressed(flag, p)
        def third = Logic.cancelPressed(flag, p)
        p.update([event: 'done', name: 'T', mean_iou: 0.41, best_epoch: 1])
        groovy.json.JsonOutput.toJson([seen: seen, points: p.points, early: p.earlyStop, log: p.log,
            first: first, second: second, third: third, flag: flag.get(), stopping: stoppingStatus,
            final: [status: p.status, fraction: p.fraction, finished: p.finished]])
    """, lines=json.dumps(lines))
    seen = got["seen"]
    assert seen[0] == {"status": "reading images and annotations", "fraction": -1}
    assert seen[1]["fraction"] == 0.25 and "3/12" in seen[1]["status"]
    assert seen[2]["status"] == "Epoch 1: batch 2/4, loss 0.9000"
    assert seen[3]["fraction"] == 0.25 and seen[3]["status"].startswith("Epoch 1/4: train loss 0.8000")
    assert seen[4]["fraction"] == 0.5 and "mean IoU 0.3900" in seen[4]["status"]
    assert seen[5]["status"] == "warning: class 'Other' has few pixels"
    assert [pt["epoch"] for pt in got["points"]] == [1, 2] and got["points"][1]["val_loss"] == 0.75
    assert got["early"] == "Early stopping: no improvement of mean_iou for 1/2 epochs (best: epoch 1, mean_iou 0.4100)"
    assert got["log"] == ["warning: class 'Other' has few pixels"]
    assert got["first"]["button"] == "Stop now" and "best epoch so far is kept" in got["first"]["status"]
    assert got["stopping"].startswith("Stopping after this epoch... Epoch 3/4")
    assert got["second"]["disable"] is True and got["third"] == got["second"] and got["flag"] == 2
    assert got["final"] == {"status": "Saved T: mean IoU 0.4100 at epoch 1", "fraction": 1, "finished": True}


@pytest.fixture()
def project(tmp_path, shell):
    """A QuPath project: an annotated RGB image (Nucleus, Fibre, Background strokes) and an image with no
    annotations."""
    from dlpixel.qupath.project import create_qupath_project

    img, truth = synthetic_image(128, seed=3)
    images = tmp_path / "images"
    images.mkdir()
    qp = create_qupath_project(tmp_path / "project")
    shapes = [LabelShape(f["properties"]["classification"]["name"], shapely.geometry.shape(f["geometry"]),
                         "area" if f["geometry"]["type"] == "Polygon" else "line")
              for f in strokes_from_truth(truth, per_class=6, seed=5)]
    qp.add_image(write_pyramid_tiff(images / "a.tif", [img], 0.5), "a.tif").add_annotations(
        shapes + [LabelShape(None, shapely.box(1, 1, 20, 20), "area")])
    qp.add_image(write_pyramid_tiff(images / "b.tif", [np.zeros((64, 64, 3), np.uint8)], 0.5), "b.tif")
    return tmp_path / "project"


def test_what_the_project_holds_for_the_dialogs(shell, project):
    from dlpixel.qupath.project import open_qupath_project

    jproject = open_qupath_project(project).java
    got = shell(LOAD + """
        groovy.json.JsonOutput.toJson([annotated: Logic.annotatedImages(project),
            classes: Logic.classesIn(project, ['a.tif']).collect { [it.name, it.count] },
            none: Logic.classesIn(project, ['b.tif']), channels: Logic.channelsOf(project, ['a.tif'])])
    """, project=jproject)
    assert got["annotated"] == ["a.tif"]
    assert got["classes"] == [["Background", 6], ["Fibre", 6], ["Nucleus", 6]]
    assert got["none"] == [] and got["channels"] == ["Red", "Green", "Blue"]


def test_helper_in_the_script_editor_reports_progress_and_stops_on_cancel(shell, project):
    """As QuPath runs a script: QP's project and image set on the thread, the bridge registered in the JVM. A train
    request sends epoch events back; raising the cancel flag at the first epoch stops the run there."""
    import jpype
    from dlpixel.qupath.bridge import BRIDGE_PROPERTY, register_bridge
    from dlpixel.qupath.project import open_qupath_project

    qp_project = open_qupath_project(project)
    image_data = qp_project.image("a.tif").read_image_data()
    register_bridge()
    settings = {"method": "unet", "tile_size": 64, "epochs": 4, "batch_size": 4, "backbone": "resnet18",
                "pretrained": False, "freeze": "none", "num_workers": 0, "mixed_precision": False,
                "early_stop_patience": 0, "device": "cpu", "line_stroke_width": 3}
    try:
        got = shell(LOAD + """
            qupath.lib.scripting.QP.setBatchProjectAndImage(project, imageData)
            try {
                def events = []
                def cancel = DLPixel.newCancel()
                def models = DLPixel.listModels()
                String error = null
                def result = null
                try {
                    result = DLPixel.request([action: 'train', name: 'InQuPath', images: ['a.tif'],
                                              settings: new groovy.json.JsonSlurper().parseText(settings)], null,
                                             { Map e ->
                                                 events << e.event
                                                 if (e.event == 'epoch') cancel.incrementAndGet() },
                                             cancel)
                } catch (RuntimeException e) {
                    error = e.message
                }
                groovy.json.JsonOutput.toJson([models: models, events: events, result: result, error: error])
            } finally {
                qupath.lib.scripting.QP.resetBatchProjectAndImage()
            }
        """, project=qp_project.java, imageData=image_data, settings=json.dumps(settings))
    finally:
        jpype.JClass("java.lang.System").getProperties().remove(jpype.JString(BRIDGE_PROPERTY))
    assert got["models"] == {"models": []}
    # Cancel at epoch 1 of 4: the run ends after that epoch and saves it (the best so far), as a first Ctrl-C does.
    assert "stage" in got["events"] and got["events"].count("epoch") == 1, got
    assert got["error"] is None and got["result"]["name"] == "InQuPath" and got["result"]["best_epoch"] == 1, got
    assert (project / "classifiers" / "dl" / "InQuPath" / "metadata.json").is_file()


def test_helper_cancels_a_subprocess_through_the_cancel_file(shell, tmp_path):
    """Without the bridge the helper runs `python -m dlpixel request`; its first Cancel writes the file named in
    DLPIXEL_CANCEL_FILE, which the process watches."""
    exe = tmp_path / "fake-python"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""
        import json, os, sys, time
        sys.stdin.read()
        print(json.dumps({"event": "epoch", "epoch": 1, "epochs": 9}), flush=True)
        path = os.environ["DLPIXEL_CANCEL_FILE"]
        for _ in range(200):
            if os.path.exists(path):
                print(json.dumps({"event": "result", "ok": True, "result": {"stopped": open(path).read()}}))
                sys.exit(0)
            time.sleep(0.05)
        print(json.dumps({"event": "result", "ok": False, "error": "never cancelled"}))
    """))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    got = shell(LOAD + """
        System.setProperty('dlpixel.python', python)
        try {
            def cancel = DLPixel.newCancel()
            def reply = DLPixel.runProcess('{}', { Map e -> cancel.incrementAndGet() }, cancel)
            groovy.json.JsonOutput.toJson(reply)
        } finally {
            System.clearProperty('dlpixel.python')
        }
    """, python=str(exe))
    assert got == {"event": "result", "ok": True, "result": {"stopped": "stop"}}


def test_menu_compiles_on_qupaths_groovy(shell):
    """The menu is a startup script for QuPath's own Groovy: it must compile there (JavaFX is looked up at run time)."""
    menu = str(groovy_source_dir() / "menu" / "DLPixelMenu.groovy")
    got = shell(f"""
        def loader = new GroovyClassLoader(getClass().classLoader)
        groovy.json.JsonOutput.toJson([{json.dumps(menu)}, {json.dumps(LOGIC)}, {json.dumps(HELPER)}].collect {{
            loader.parseClass(new File(it)).name }})
    """)
    assert got == ["DLPixelMenu", "DLPixelMenuLogic", "DLPixel"]
