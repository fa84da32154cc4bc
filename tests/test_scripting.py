"""Groovy for QuPath: generated scripts send exactly their settings, every Groovy file compiles, the helper runs.

The Groovy tests need Debian's ``groovy`` (``apt-get install -y groovy``); they are skipped with a reason without
it. All scripts run in one Groovy process and compile in one ``groovyc`` call, because each start costs a second.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from dlpixel.cli import main as cli_main
from dlpixel.config import BACKBONES, InferenceConfig, TrainingConfig
from dlpixel.errors import ConfigError
from dlpixel.qupath import scripting
from dlpixel.qupath.install import (
    HOME_MARKER,
    default_user_dir,
    groovy_source_dir,
    install_qupath_scripts,
    shipped_groovy_files,
)

PROJECT = "/data/My Project/project.qpproj"
COMMAND = ["-m", "dlpixel", "request", "-", "--events", "jsonl"]


def canonical(value: Any) -> str:
    """JSON text that tells 1 from 1.0, so a round trip must keep types as well as values."""
    return json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------------
# Configurations


def every_option_changed() -> TrainingConfig:
    return TrainingConfig(
        description="Tumour vs 'stroma' \\ \"quoted\"\n$notAVariable ${x} \u00b5m \U0001f52c",
        architecture="unet",
        method="features",
        pseudo_labels=True,
        backbone="efficientnet-lite0",
        pretrained=False,
        freeze=["stem", "block1"],
        tile_size=256,
        downsample=2.5,
        context_scale=2,
        tile_overlap=12.5,
        line_stroke_width=3.0,
        validation_split=0.15,
        epochs=7,
        batch_size=3,
        learning_rate=3e-05,
        weight_decay=1.25e-07,
        scheduler="cosine",
        loss="focal_dice",
        early_stop_metric="val_loss",
        early_stop_patience=4,
        precision="fp16",
        augment={"hflip": False, "vflip": False, "rot90": False, "color_jitter": True, "elastic": True},
        channels=[2, 0],
        classes=["Tumor", "Stroma", "Ignore*"],
        class_weights={"Tumor": 2.0, "Ignore*": 0.1},
        normalization={"strategy": "fixed_range", "per_channel": True, "image_level": False, "min": 0.0,
                       "max": 4095.0},
        seed=7,
        num_workers=1,
        device="cpu",
        compile=True,
        log_every=3,
        prior_correction=False,
    )


def multichannel() -> TrainingConfig:
    return TrainingConfig(
        channels=["DAPI", "CD3", "Pan-CK"],
        classes=["Tumor", "Stroma 'x'", "Immune cells"],
        class_weights={"Tumor": 2.5, "Stroma 'x'": 0.5, "Immune cells": 1.0},
        normalization={"strategy": "z_score", "per_channel": True},
        tile_size=128,
    )


def apply_changed() -> InferenceConfig:
    return InferenceConfig(
        output="objects", scope="image", tile_size=256, overlap=64, batch_size=2, device="cpu", backend="onnx",
        reader_threads=3, object_type="annotation", min_object_area=12.5, min_hole_area=3.25, simplify=0.5,
        refine="none", precision="fp16", cuda_graphs=False, row_readers="same_process", map_writer="same_process",
    )


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("class_weights",):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_every_option_changed_really_changes_every_option() -> None:
    defaults = leaves(TrainingConfig().model_dump(mode="json"))
    changed = leaves(every_option_changed().model_dump(mode="json"))
    single_choice = {"architecture"}
    same = [k for k in defaults if defaults[k] == changed[k] and k not in single_choice]
    assert same == []
    assert set(defaults) == set(changed)
    applied = leaves(apply_changed().model_dump(mode="json"))
    assert [k for k, v in leaves(InferenceConfig().model_dump(mode="json")).items() if applied[k] == v] == []


# ---------------------------------------------------------------------------------------------------------------
# Python side of the generator


def test_groovy_literals() -> None:
    assert scripting.groovy_string("it's $x \\ \n") == "'it\\'s $x \\\\ \\n'"
    assert scripting.groovy_string("\u00b5") == "'\\u00b5'"
    assert scripting.groovy_string("\U0001f52c") == "'\\ud83d\\udd2c'"
    assert scripting.groovy_literal(2**70) == f"{2**70}G"
    assert scripting.groovy_literal(1e-05) == "1e-05"
    assert scripting.groovy_literal({}) == "[:]"
    assert scripting.groovy_literal({"a b": [1, None, True]}) == "['a b': [1, null, true]]"
    assert scripting.groovy_key("class") == "'class'"
    with pytest.raises(ConfigError):
        scripting.groovy_literal(float("nan"))


def test_training_script_lists_every_setting_under_its_section() -> None:
    text = scripting.training_script(PROJECT, "Tumor_v1", ["a.tif"], TrainingConfig())
    titles = [title for title, _ in scripting.TRAINING_SECTIONS]
    positions = [text.index(f"// {title}") for title in titles]
    assert positions == sorted(positions)
    for name in TrainingConfig.model_fields:
        assert f"\n    {name}: " in text
    assert "Other settings" not in text
    assert "// " + " | ".join(BACKBONES) in text
    assert "DLPixel.train([project: project, name: name" in text


def test_a_new_setting_appears_without_code_changes() -> None:
    class Extended(TrainingConfig):
        brand_new_setting: int = 3

    text = scripting.training_script(None, "T", [], Extended())  # type: ignore[arg-type]
    assert "// Other settings\n    brand_new_setting: 3" in text
    assert "def project = null" in text


def test_apply_script_states_output_and_scope() -> None:
    text = scripting.apply_script(PROJECT, "Tumor_v1", [], InferenceConfig(output="objects", scope="selected"))
    assert "output: 'objects',  // measurements | objects | map | probabilities" in text
    assert "scope: 'selected',  // annotations | selected | image" in text
    assert "def images = []" in text
    assert "Run for project" in text


def test_invalid_names_are_refused() -> None:
    with pytest.raises(ConfigError):
        scripting.training_script(None, "bad name", [], TrainingConfig())


def test_cli_builds_the_config_from_file_flags_and_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"epochs": 9, "augment.elastic": True}))
    calls = []

    def load_settings(root: Path, name: str) -> dict[str, Any]:
        calls.append((root, name))
        return {"backbone": "resnet18", "epochs": 3}

    import dlpixel.classifiers.store

    monkeypatch.setattr(dlpixel.classifiers.store, "load_settings", load_settings)
    assert cli_main(["script", "train", "--project", str(tmp_path / "project.qpproj"), "--name", "R1",
                           "--from-model", "Old", "--config", str(cfg), "--set", "batch_size=2",
                           "--image", "a.tif", "--image", "b.tif", "--helper", "/x/DLPixel.groovy"]) == 0
    out = capsys.readouterr().out
    assert calls == [(tmp_path, "Old")]
    for line in ["backbone: 'resnet18'", "epochs: 9,", "batch_size: 2,", "elastic: true",
                 "def images = ['a.tif', 'b.tif']", "'/x/DLPixel.groovy'"]:
        assert line in out
    assert cli_main(["script", "apply", "--classifier", "R1", "--output", "map", "--scope", "image",
                           "--set", "overlap=16"]) == 0
    out = capsys.readouterr().out
    assert "output: 'map'" in out and "scope: 'image'" in out and "overlap: 16," in out
    with pytest.raises(ConfigError, match="epochs"):
        cli_main(["--debug", "script", "train", "--name", "R", "--set", "epochs=0"])


# ---------------------------------------------------------------------------------------------------------------
# Installer


def test_install_copies_scripts_and_records_python(tmp_path: Path) -> None:
    user = tmp_path / "QuPath it's"
    planned = install_qupath_scripts(user, "/envs/dl/bin/python", print_only=True)
    assert not planned.written and not (user / "dlpixel").exists()
    assert "Startup script" in planned.describe()
    result = install_qupath_scripts(user, "/envs/dl/bin/python")
    folder = user / "dlpixel"
    assert result.helper == folder / "DLPixel.groovy"
    assert result.helper.read_text() == (groovy_source_dir() / "DLPixel.groovy").read_text()
    menu = result.startup_script.read_text()
    assert HOME_MARKER not in menu and "QuPath it\\'s" in menu
    recorded = json.loads(result.settings_file.read_text())
    assert recorded["python"] == "/envs/dl/bin/python"
    assert recorded["defaults"]["train"] == TrainingConfig().model_dump(mode="json")
    assert recorded["defaults"]["apply"] == InferenceConfig().model_dump(mode="json")
    assert recorded["choices"]["train"]["normalization.strategy"][0] == "percentile_99"


def test_default_user_dir_prefers_the_newest_versioned_folder(tmp_path: Path) -> None:
    assert default_user_dir(tmp_path) == tmp_path / "QuPath"
    for name in ("v0.4", "v0.10", "v0.5", "notes"):
        (tmp_path / "QuPath" / name).mkdir(parents=True)
    assert default_user_dir(tmp_path) == tmp_path / "QuPath" / "v0.10"


# ---------------------------------------------------------------------------------------------------------------
# Under Groovy


def _groovy_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DLPIXEL_HELPER", None)
    if not env.get("JAVA_HOME") and not Path("/usr/lib/jvm/default-java/bin/java").exists():
        java = shutil.which("java")
        if java:
            env["JAVA_HOME"] = str(Path(os.path.realpath(java)).parent.parent)
    return env


def _require_groovy() -> dict[str, str]:
    if not (shutil.which("groovy") and shutil.which("groovyc")):
        pytest.skip("groovy/groovyc not found: install Debian's groovy (apt-get install -y groovy)")
    return _groovy_env()


def _executable(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


RECORDER = """
    import json, os, sys
    request = sys.stdin.read()
    with open(os.environ["DLPIXEL_TEST_LOG"], "a") as log:
        log.write(json.dumps({"argv": sys.argv[1:], "request": json.loads(request)}) + "\\n")
"""

OK_EXE = RECORDER + """
    print("plain line from dlpixel", flush=True)
    print(json.dumps({"event": "epoch", "epoch": 1, "message": "epoch 1/2 loss 0.5"}), flush=True)
    print(json.dumps({"event": "patches", "count": 12}), flush=True)
    print(json.dumps({"event": "result", "ok": True, "result": {"classifier": "done"}}))
"""

FAIL_EXE = RECORDER + """
    print(json.dumps({"event": "result", "ok": False, "error": "settings: tile_size: must be a multiple of 32"}))
    sys.exit(2)
"""

CRASH_EXE = RECORDER + """
    print("Traceback (most recent call last):", file=sys.stderr)
    print("RuntimeError: out of memory on tile 3", file=sys.stderr)
    sys.exit(3)
"""

DRIVER = r"""
import groovy.json.JsonOutput
import groovy.json.JsonSlurper

def plan = new JsonSlurper().parse(new File(args[0]))
Map results = [:]
plan.scripts.each { Map item ->
    if (item.python) System.setProperty('dlpixel.python', item.python) else System.clearProperty('dlpixel.python')
    try {
        def value = new GroovyShell(new Binding()).evaluate(new File(item.path))
        results[item.id] = [ok: true, value: value]
    } catch (Throwable t) {
        results[item.id] = [ok: false, error: t.message]
    }
}
System.clearProperty('dlpixel.python')

// QuPath's objects, stood in by plain Groovy objects answering the same calls
def DLPixel = new GroovyClassLoader(getClass().classLoader).parseClass(new File(plan.helper))
List calls = []
def saved = [getHierarchy: { -> 'saved hierarchy' }]
def hierarchy = [setHierarchy: { h -> calls << "setHierarchy(${h})".toString() }]
def imageData = [getHierarchy: { -> hierarchy }]
def entry = [getImageName: { -> 'open image.tif' },
             saveImageData: { d -> calls << 'saveImageData' },
             readImageData: { -> calls << 'readImageData'; saved }]
def project = [getPath: { -> new File(plan.project).toPath() },
               getEntry: { d -> d.is(imageData) ? entry : null }]
def selected = [[getID: { -> UUID.fromString('00000000-0000-0000-0000-00000000000a') }]]
Map live = [project: project, imageData: imageData, selected: selected]
DLPixel.request([action: 'apply', project: null, classifier: 'C', images: [],
                 settings: [output: 'objects', scope: 'selected']], live)
results.live_apply = [ok: true, value: calls.clone()]
calls.clear()
DLPixel.request([action: 'apply', project: null, classifier: 'C', images: ['other.tif'],
                 settings: [output: 'objects', scope: 'annotations']], live)
results.other_image = [ok: true, value: calls.clone()]
calls.clear()
DLPixel.request([action: 'apply', project: null, classifier: 'C', images: [],
                 settings: [output: 'map', scope: 'image']], live)
results.map_output = [ok: true, value: calls.clone()]

// In-process: the registered BiFunction gets the request and QuPath's objects, and no process runs
List bridged = []
System.getProperties().put('dlpixel.bridge', { String json, Map context ->
    bridged << [request: new JsonSlurper().parseText(json), keys: context.keySet().sort()]
    JsonOutput.toJson([ok: true, result: [models: [[name: 'M1']]]])
}.asType(java.util.function.BiFunction))
results.bridge_list = [ok: true, value: DLPixel.listModels(project)]
try {
    System.getProperties().put('dlpixel.bridge', { String json, Map context ->
        JsonOutput.toJson([ok: false, error: 'no classifier named X'])
    }.asType(java.util.function.BiFunction))
    DLPixel.loadSettings('X', plan.project)
    results.bridge_error = [ok: true]
} catch (Throwable t) {
    results.bridge_error = [ok: false, error: t.message]
}
System.getProperties().remove('dlpixel.bridge')
results.bridged = [ok: true, value: bridged]
new File(args[1]).write(JsonOutput.toJson(results), 'UTF-8')
"""

TRAIN_CASES = {
    "train_defaults": (TrainingConfig, [], False),
    "train_every_option": (every_option_changed, ["a.tif", "b c.ome.tif"], True),
    "train_multichannel": (multichannel, ["panel 1.ome.tif"], False),
}
APPLY_CASES = {
    "apply_defaults": (InferenceConfig, []),
    "apply_changed": (apply_changed, ["a.tif", "b c.ome.tif"]),
}


@pytest.fixture(scope="module")
def groovy_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Generate every script, run them all (and the helper's other paths) in one Groovy process."""
    env = _require_groovy()
    work = tmp_path_factory.mktemp("groovy")
    helper = groovy_source_dir() / "DLPixel.groovy"
    ok_exe = _executable(work / "dlpixel-ok", OK_EXE)
    fail_exe = _executable(work / "dlpixel-fail", FAIL_EXE)
    crash_exe = _executable(work / "dlpixel-crash", CRASH_EXE)
    scripts: dict[str, Path] = {}
    expected: dict[str, dict[str, Any]] = {}
    for case, (make, images, overwrite) in TRAIN_CASES.items():
        config = make()
        scripts[case] = work / f"{case}.groovy"
        scripts[case].write_text(scripting.training_script(PROJECT, "Tumor_v1", images, config, overwrite=overwrite,
                                                           helper=work / "missing.groovy"), encoding="utf-8")
        expected[case] = {"action": "train", "project": PROJECT, "name": "Tumor_v1", "images": images,
                          "settings": config.model_dump(mode="json"), "overwrite": overwrite}
    for case, (make, images) in APPLY_CASES.items():
        config = make()
        scripts[case] = work / f"{case}.groovy"
        scripts[case].write_text(scripting.apply_script(PROJECT, "Tumor_v1", images, config,
                                                        helper=work / "missing.groovy"), encoding="utf-8")
        expected[case] = {"action": "apply", "project": PROJECT, "classifier": "Tumor_v1", "images": images,
                          "settings": config.model_dump(mode="json")}
    order = [*TRAIN_CASES, *APPLY_CASES]
    plan_items = [{"id": case, "path": str(scripts[case]), "python": None} for case in order]
    plan_items.append({"id": "fails", "path": str(scripts["train_defaults"]), "python": str(fail_exe)})
    plan_items.append({"id": "crashes", "path": str(scripts["apply_changed"]), "python": str(crash_exe)})
    plan = work / "plan.json"
    plan.write_text(json.dumps({"scripts": plan_items, "helper": str(helper), "project": PROJECT}))
    driver = work / "driver.groovy"
    driver.write_text(DRIVER)
    log = work / "requests.jsonl"
    out = work / "results.json"
    env.update({"DLPIXEL_PYTHON": str(ok_exe), "DLPIXEL_TEST_LOG": str(log), "DLPIXEL_HELPER": str(helper)})
    proc = subprocess.run(["groovy", str(driver), str(plan), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    return {"results": json.loads(out.read_text()), "sent": sent, "order": [i["id"] for i in plan_items],
            "expected": expected, "stdout": proc.stdout, "scripts": scripts}


@pytest.mark.parametrize("case", [*TRAIN_CASES, *APPLY_CASES])
def test_generated_script_sends_exactly_its_settings(groovy_run: dict[str, Any], case: str) -> None:
    result = groovy_run["results"][case]
    assert result == {"ok": True, "value": {"classifier": "done"}}
    sent = groovy_run["sent"][groovy_run["order"].index(case)]
    assert sent["argv"] == COMMAND
    assert canonical(sent["request"]) == canonical(groovy_run["expected"][case])


def test_progress_events_reach_the_log(groovy_run: dict[str, Any]) -> None:
    out = groovy_run["stdout"]
    assert "epoch 1/2 loss 0.5" in out
    assert "patches count=12" in out
    assert "plain line from dlpixel" in out


def test_a_failing_tool_fails_the_script_with_its_message(groovy_run: dict[str, Any]) -> None:
    results, order, sent = groovy_run["results"], groovy_run["order"], groovy_run["sent"]
    assert results["fails"] == {"ok": False, "error": "dlpixel: settings: tile_size: must be a multiple of 32"}
    assert canonical(sent[order.index("fails")]["request"]) == canonical(groovy_run["expected"]["train_defaults"])
    crash = results["crashes"]
    assert crash["ok"] is False
    assert "exited with code 3" in crash["error"] and "RuntimeError: out of memory on tile 3" in crash["error"]


def test_the_open_image_is_saved_before_and_reloaded_after(groovy_run: dict[str, Any]) -> None:
    results, order, sent = groovy_run["results"], groovy_run["order"], groovy_run["sent"]
    assert results["live_apply"]["value"] == ["saveImageData", "readImageData", "setHierarchy(saved hierarchy)"]
    live_request = sent[len(order)]["request"]
    assert live_request["project"] == PROJECT
    assert live_request["images"] == ["open image.tif"]
    assert live_request["selected"] == ["00000000-0000-0000-0000-00000000000a"]
    assert results["other_image"]["value"] == []
    assert sent[len(order) + 1]["request"]["images"] == ["other.tif"]
    assert results["map_output"]["value"] == ["saveImageData"]


def test_the_in_process_bridge_is_used_when_registered(groovy_run: dict[str, Any]) -> None:
    results = groovy_run["results"]
    assert len(groovy_run["sent"]) == len(groovy_run["order"]) + 3
    assert results["bridge_list"]["value"] == {"models": [{"name": "M1"}]}
    bridged = results["bridged"]["value"]
    assert bridged[0]["request"] == {"action": "list_models", "project": PROJECT}
    assert bridged[0]["keys"] == ["imageData", "project", "selected"]
    assert results["bridge_error"] == {"ok": False, "error": "dlpixel: no classifier named X"}


def test_every_groovy_file_and_generated_script_compiles(groovy_run: dict[str, Any], tmp_path: Path) -> None:
    env = _require_groovy()
    installed = install_qupath_scripts(tmp_path / "user dir", "/usr/bin/python3")
    generated = sorted(groovy_run["scripts"].values())
    shipped = shipped_groovy_files()
    assert {p.name for p in shipped} >= {"DLPixel.groovy", "DLPixelMenu.groovy"}
    # groovyc names a script's class after its file: the installed menu gets a name of its own
    installed_menu = tmp_path / "installed_menu.groovy"
    shutil.copyfile(installed.startup_script, installed_menu)
    sources = [str(p) for p in (*shipped, installed_menu, *generated)]
    proc = subprocess.run(["groovyc", "-d", str(tmp_path / "classes"), *sources], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_helper_against_the_real_request_command(tmp_path: Path) -> None:
    """The helper and ``python -m dlpixel request`` agree on the protocol, success and failure alike."""
    env = _require_groovy()
    env["DLPIXEL_PYTHON"] = sys.executable
    project = tmp_path / "folder project"
    project.mkdir()
    script = tmp_path / "real.groovy"
    script.write_text(textwrap.dedent(f"""
        def DLPixel = new GroovyClassLoader(getClass().classLoader).parseClass(new File({scripting.groovy_string(
            str(groovy_source_dir() / 'DLPixel.groovy'))}))
        def project = {scripting.groovy_string(str(project))}
        println 'MODELS ' + groovy.json.JsonOutput.toJson(DLPixel.listModels(project))
        try {{
            DLPixel.loadSettings('Nope', project)
        }} catch (RuntimeException e) {{
            println 'ERROR ' + e.message
        }}
    """))
    proc = subprocess.run(["groovy", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert 'MODELS {"models":[]}' in lines
    error = next(line for line in lines if line.startswith("ERROR "))
    assert error.startswith("ERROR dlpixel: ") and "Nope" in error
