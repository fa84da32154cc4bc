"""Every bad input to ``dlpixel train`` gives a clear one-line error and writes nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import torch
from conftest import strokes_from_truth, synthetic_image, write_folder_project
from dlpixel.classifiers import store
from dlpixel.cli.main import main
from dlpixel.config import TrainingConfig
from dlpixel.errors import TrainingError
from dlpixel.projects import open_project
from dlpixel.training.run import train_classifier

QUICK = ["--set", "method=unet",
         "--set", "epochs=1", "--set", "tile_size=64", "--set", "backbone=resnet18", "--set", "pretrained=false"]


@pytest.fixture
def project(tmp_path):
    img, truth = synthetic_image(128)
    return write_folder_project(tmp_path / "p", {"a.tif": (img, strokes_from_truth(truth, per_class=4))})


def run(capsys, *args):
    code = main(["train", *args, "--quiet"])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_fails(capsys, folder, pattern, *args):
    code, err = run(capsys, *args)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], lines[0]
    assert not store.classifiers_dir(folder).exists() or not any(store.classifiers_dir(folder).iterdir())


def with_features(folder, feats):
    (folder / "a.tif.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def test_missing_project_and_unreadable_image(capsys, tmp_path, project):
    assert_fails(capsys, tmp_path, "project not found", "--project", str(tmp_path / "nowhere"), "--name", "x")
    (project / "a.tif").write_bytes(b"not a tiff")
    assert_fails(capsys, project, "a.tif", "--project", str(project), "--name", "x", *QUICK)


def test_image_not_in_project(capsys, project):
    assert_fails(capsys, project, "'b.tif'", "--project", str(project), "--name", "x", "--image", "b.tif", *QUICK)


def test_invalid_geojson(capsys, project):
    (project / "a.tif.geojson").write_text("{ not json")
    assert_fails(capsys, project, "a.tif.geojson", "--project", str(project), "--name", "x", *QUICK)


def test_no_classified_annotations_and_a_single_class(capsys, project):
    feats = json.loads((project / "a.tif.geojson").read_text())["features"]
    with_features(project, [{**f, "properties": {"objectType": "annotation"}} for f in feats])
    assert_fails(capsys, project, "no image", "--project", str(project), "--name", "x", *QUICK)
    with_features(project, [f for f in feats if f["properties"]["classification"]["name"] == "Nucleus"])
    assert_fails(capsys, project, "at least two", "--project", str(project), "--name", "x", *QUICK)


def test_class_or_channel_the_data_lacks(capsys, project):
    assert_fails(capsys, project, "'Tumor'", "--project", str(project), "--name", "x", *QUICK,
                 "--set", "classes=Nucleus,Tumor")
    assert_fails(capsys, project, "'DAPI'", "--project", str(project), "--name", "x", *QUICK,
                 "--set", "channels=DAPI")


def test_tile_size_rules(capsys, project):
    assert_fails(capsys, project, "multiple of 32", "--project", str(project), "--name", "x", "--set",
                 "tile_size=100")
    assert_fails(capsys, project, "larger than every image", "--project", str(project), "--name", "x", *QUICK,
                 "--set", "tile_size=256")


def test_unknown_backbone_setting_key_and_bad_name(capsys, project):
    assert_fails(capsys, project, "unknown backbone 'resnet999'", "--project", str(project), "--name", "x",
                 "--set", "backbone=resnet999")
    assert_fails(capsys, project, "epoch: unknown setting", "--project", str(project), "--name", "x",
                 "--set", "epoch=3")
    assert_fails(capsys, project, "may use only letters", "--project", str(project), "--name", "bad name!",
                 *QUICK)


def test_missing_pretrained_weights_offline(capsys, project, tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIXEL_WEIGHTS_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    code, err = run(capsys, "--project", str(project), "--name", "x", "--set", "method=unet", "--set", "epochs=1",
                    "--set", "tile_size=64", "--set", "backbone=resnet50_kather100k")
    assert code == 2 and err.count("\n") == 0 and "resnet50_kather100k" in err and str(tmp_path / "empty-cache") in err
    assert not store.classifiers_dir(project).exists()
    code, err = run(capsys, "--project", str(project), "--name", "x", "--set", "method=unet", "--set", "epochs=1",
                    "--set", "tile_size=64", "--set", "backbone=resnet18")
    assert code == 2 and err.count("\n") == 0 and "resnet18" in err and "offline" in err.lower()


def test_loss_becoming_nan(project, monkeypatch):
    from dlpixel.training import losses

    real = losses.build_loss

    def exploding(name, weights, ignore_index=255):
        loss = real(name, weights, ignore_index)
        return lambda logits, target: loss(logits, target) * torch.tensor(math.nan)

    monkeypatch.setattr(losses, "build_loss", exploding)
    cfg = TrainingConfig(method="unet", epochs=1, tile_size=64, backbone="resnet18", pretrained=False)
    with pytest.raises(TrainingError, match="became nan at epoch 1.*learning_rate"):
        train_classifier(open_project(project), "nan", cfg)
    assert not store.classifiers_dir(project).exists() or not any(store.classifiers_dir(project).iterdir())


def test_image_with_other_channels_is_refused(capsys, tmp_path):
    img, truth = synthetic_image(128)
    feats = strokes_from_truth(truth, per_class=4)
    folder = write_folder_project(tmp_path / "p", {"a.tif": (img, feats)})
    tifffile.imwrite(folder / "b.tif", np.stack([img[..., 0]] * 2, axis=0))
    (folder / "b.tif.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    assert_fails(capsys, folder, "'b.tif' has channels", "--project", str(folder), "--name", "x", *QUICK)
