"""``method: auto``: the rule on annotations whose labelled area is known exactly, and what a run records of it."""

from __future__ import annotations

import json

import pytest
import shapely
from conftest import synthetic_image, write_folder_project
from dlpixel.classifiers import store
from dlpixel.classifiers.metadata import ClassifierMetadata
from dlpixel.cli.main import main
from dlpixel.config import AUTO_UNET_PIXELS, TrainingConfig
from dlpixel.data.base import LabelShape
from dlpixel.projects import open_project
from dlpixel.training.features import MAX_TRAIN_PIXELS
from dlpixel.training.method import choose_method, labelled_pixels
from dlpixel.training.run import train_classifier
from pydantic import ValidationError
from shapely.geometry import mapping

CLASSES = ["Background", "Object"]


def area(name: str, x: float, y: float, w: float, h: float) -> LabelShape:
    return LabelShape(name, shapely.box(x, y, x + w, y + h), "area")


def line(name: str, x: float, y: float, length: float) -> LabelShape:
    return LabelShape(name, shapely.LineString([(x, y), (x + length, y)]), "line")


STROKES = [[line("Background", 10, 10, 100), line("Background", 10, 40, 60), line("Object", 200, 10, 80),
            LabelShape("Object", shapely.Point(300, 300), "point")]]
"""Three strokes and a point: 5 px wide at line_stroke_width 0, so 500 + 300 and 400 + a disc of 5 px."""


def test_strokes_are_counted_at_their_stroke_width_and_auto_picks_features():
    counts = labelled_pixels(STROKES, CLASSES, 1.0, 5)
    assert counts["Background"] == 800
    assert counts["Object"] == 400 + round(shapely.Point(0, 0).buffer(2.5, quad_segs=16).area)  # 420
    choice = choose_method(TrainingConfig(), STROKES, CLASSES)
    assert (choice.setting, choice.method) == ("auto", "features")
    assert choice.labelled_pixels == counts
    assert choice.record() == {"setting": "auto", "method": "features", "reason": choice.reason,
                               "labelled_pixels": counts, "threshold": AUTO_UNET_PIXELS}
    assert choice.reason.startswith("1,220 labelled pixels, at most 400,000")
    # Wider strokes label more; at downsample 2 a training pixel covers four full-resolution ones.
    assert labelled_pixels(STROKES[:1][:1], ["Background"], 1.0, 9) == {"Background": 9 * 160}
    assert labelled_pixels([[area("Object", 0, 0, 40, 40)]], CLASSES, 2.0, 5) == {"Background": 0, "Object": 400}


def test_overlapping_annotations_count_as_the_label_masks_draw_them():
    """The smaller area wins where areas overlap, a line wins over an area: each pixel counts once."""
    shapes = [[area("Background", 0, 0, 100, 100), area("Object", 10, 10, 20, 20), line("Object", 50, 50, 20)]]
    assert labelled_pixels(shapes, CLASSES, 1.0, 5) == {"Background": 10_000 - 400 - 100, "Object": 500}
    # An unknown class (not trained) labels nothing and takes nothing away.
    shapes[0].append(area("Other", 0, 0, 100, 100))
    assert labelled_pixels(shapes, CLASSES, 1.0, 5) == {"Background": 9_500, "Object": 500}


def test_dense_labels_above_the_threshold_pick_a_unet_and_at_it_features():
    assert AUTO_UNET_PIXELS == MAX_TRAIN_PIXELS == 400_000  # the most labelled pixels the features head is fitted on
    dense = [[area("Background", 0, 0, 800, 600), area("Object", 0, 0, 200, 500)]]
    assert labelled_pixels(dense, CLASSES, 1.0, 5) == {"Background": 380_000, "Object": 100_000}
    choice = choose_method(TrainingConfig(), dense, CLASSES)
    assert (choice.setting, choice.method) == ("auto", "unet")
    assert choice.reason.startswith("480,000 labelled pixels, more than the 400,000")
    # 500 × 800 px: exactly the threshold.
    exactly = [[area("Background", 0, 0, 500, 800)]]
    assert choose_method(TrainingConfig(), exactly, ["Background"]).method == "features"
    assert choose_method(TrainingConfig(), [[area("Background", 0, 0, 500, 801)]], ["Background"]).method == "unet"
    # The count is at the training resolution: at downsample 2 the same annotations label a quarter as many.
    assert choose_method(TrainingConfig(downsample=2), dense, CLASSES).method == "features"


def test_a_method_that_is_set_is_kept_and_a_unet_is_chosen_when_asked_for_by_other_means():
    dense = [[area("Background", 0, 0, 1000, 1000), area("Object", 0, 0, 100, 100)]]
    for method, shapes in (("unet", STROKES), ("features", dense)):
        choice = choose_method(TrainingConfig(method=method), shapes, CLASSES)
        assert (choice.setting, choice.method, choice.labelled_pixels) == (method, method, {})
        assert choice.record() == {"setting": method, "method": method, "reason": "set in the settings"}
    fine_tune = choose_method(TrainingConfig(), STROKES, CLASSES, init_weights_from="first")
    assert (fine_tune.method, fine_tune.reason) == ("unet", "fine-tuning the U-Net of classifier 'first'")
    assert choose_method(TrainingConfig(), STROKES, CLASSES, several_gpus=True).method == "unet"
    assert choose_method(TrainingConfig(method="features"), STROKES, CLASSES, several_gpus=True).method == "features"


def test_auto_is_the_default_everywhere_settings_are_read(tmp_path, capsys):
    assert TrainingConfig().method == "auto"
    assert TrainingConfig.model_validate({"method": "unet"}).method == "unet"
    assert main(["train", "--help-settings"]) == 0
    assert '  method = "auto"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert f"at most {AUTO_UNET_PIXELS:,} pixels" in " ".join(capsys.readouterr().out.split())
    assert f"{AUTO_UNET_PIXELS:,} pixels" in TrainingConfig.model_fields["method"].description
    with pytest.raises(ValidationError, match="method"):
        TrainingConfig(method="forest")


def _stroke_project(tmp_path):
    img, truth = synthetic_image(128)
    feats = [{"type": "Feature", "id": f"{c}-{i}",
              "geometry": mapping(shapely.LineString([(8 + 30 * i, 10 + 50 * c), (24 + 30 * i, 10 + 50 * c)])),
              "properties": {"objectType": "annotation", "classification": {"name": name}}}
             for c, name in enumerate(["Background", "Nucleus"]) for i in range(4)]
    return write_folder_project(tmp_path / "p", {"s.tif": (img, feats)})


def test_a_run_on_strokes_trains_features_and_records_why(tmp_path, capsys):
    folder = _stroke_project(tmp_path)
    events = []
    entry = train_classifier(open_project(folder), "auto", TrainingConfig(seed=1), listeners=[events.append])
    meta = entry.metadata
    choice = meta.method_choice
    assert meta.architecture == "features" and meta.training.method == "features"
    # 8 strokes 16 px long and 5 px wide: 4 × 80 px per class.
    assert choice["setting"] == "auto" and choice["method"] == "features"
    assert choice["labelled_pixels"] == {"Background": 320, "Nucleus": 320}
    said = [e for e in events if e["event"] == "log" and e.get("method")]
    assert len(said) == 1 and said[0]["method"] == "features" and said[0]["method_setting"] == "auto"
    assert said[0]["message"] == f"method features (auto): {choice['reason']}"
    # The metadata gives back what was trained: the method, and why.
    reread = ClassifierMetadata.read(entry.path / store.METADATA)
    assert reread.method_choice == choice and reread.training == meta.training
    # Every other setting as given (the features classifier's tiles shrink to fit the 128 px image).
    assert meta.training == TrainingConfig(seed=1, method="features", tile_size=128)
    assert json.loads((entry.path / store.METADATA).read_text())["training"]["method"] == "features"
    assert main(["models", "show", "auto", "--project", str(folder)]) == 0
    shown = capsys.readouterr().out
    assert f"  method       features (auto: {choice['reason']})" in shown
    assert "method =" not in shown  # chosen by auto, so not listed as a changed setting
    assert "<td>features (auto: " in (entry.path / store.REPORT).read_text()
    # --from-model trains the same method again, now as a setting.
    assert main(["train", "--project", str(folder), "--from-model", "auto", "--name", "again", "--quiet"]) == 0
    again = store.load_classifier(folder, "again").metadata
    assert again.architecture == "features" and again.training == reread.training
    assert again.method_choice == {"setting": "features", "method": "features", "reason": "set in the settings"}
    assert main(["models", "show", "again", "--project", str(folder)]) == 0
    assert "  method       features (set)" in capsys.readouterr().out


def test_a_run_above_the_threshold_trains_a_unet(tmp_path, monkeypatch):
    """The same strokes with the threshold lowered below their 640 labelled pixels: auto trains a U-Net, the rest
    of the run as an explicit ``method: unet`` would."""
    import dlpixel.training.method as method

    monkeypatch.setattr(method, "AUTO_UNET_PIXELS", 600)
    folder = _stroke_project(tmp_path)
    cfg = TrainingConfig(epochs=1, tile_size=64, backbone="resnet18", pretrained=False, batch_size=2, device="cpu")
    meta = train_classifier(open_project(folder), "dense", cfg).metadata
    assert meta.architecture == "unet" and meta.training.method == "unet" and meta.results.epochs_run == 1
    assert meta.method_choice["method"] == "unet" and meta.method_choice["threshold"] == 600
    assert meta.method_choice["reason"].startswith("640 labelled pixels, more than the 600")


def test_a_unet_chosen_by_auto_checks_its_pretrained_weights_before_reading_tiles(tmp_path, monkeypatch, capsys):
    import dlpixel.training.method as method

    monkeypatch.setattr(method, "AUTO_UNET_PIXELS", 600)
    monkeypatch.setenv("DLPIXEL_WEIGHTS_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    folder = _stroke_project(tmp_path)
    assert main(["train", "--project", str(folder), "--name", "x", "--set", "backbone=resnet50_kather100k",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "resnet50_kather100k" in err and str(tmp_path / "empty-cache") in err
    assert not store.classifiers_dir(folder).exists() or not any(store.classifiers_dir(folder).iterdir())
    # With few labels the features classifier needs no weights: the same settings train.
    monkeypatch.setattr(method, "AUTO_UNET_PIXELS", 400_000)
    assert main(["train", "--project", str(folder), "--name", "x", "--set", "backbone=resnet50_kather100k",
                 "--quiet"]) == 0


def test_a_train_request_without_settings_trains_with_auto(tmp_path):
    from dlpixel.requests import handle_request

    folder = _stroke_project(tmp_path)
    result = handle_request({"action": "train", "project": str(folder), "name": "r"}, {}, [], None)
    assert store.load_classifier(folder, result["name"]).metadata.method_choice["setting"] == "auto"
