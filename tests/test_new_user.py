"""What a new user meets first: the command line's messages, defaults and small conveniences, each through
``dlpixel.cli.main`` or a subprocess."""

from __future__ import annotations

import numpy as np
from conftest import CLASSES
from dlpixel.cli.main import main
from dlpixel.classifiers import store


FAST = ["--set", "backbone=efficientnet-lite0", "--set", "tile_size=64", "--set", "batch_size=4", "--quiet"]


def test_a_class_left_without_training_pixels_by_the_split_stops_training_with_its_name(synthetic_project,
                                                                                          monkeypatch, capsys):
    """Whatever the split does, the check after it sees the final training tiles: here every tile holding
    'Fibre' goes to validation, and training stops before a model is built, naming the class."""
    import dlpixel.training.run as run

    real = run.split_tiles

    def fibre_to_validation(tiles, counts, *args, **kwargs):
        split = real(tiles, counts, *args, **kwargs)
        fibre = {i for i in range(len(tiles)) if counts[i][sorted(CLASSES).index("Fibre")] > 0}
        split.val = sorted(set(split.val) | fibre)
        split.train = [i for i in split.train if i not in fibre]
        return split

    monkeypatch.setattr(run, "split_tiles", fibre_to_validation)
    monkeypatch.setattr("dlpixel.models.factory.create_model", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a model was built")))
    folder, _, _ = synthetic_project
    assert main(["train", "--project", str(folder), "--name", "m", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[-1]] and err[0].startswith("error: class 'Fibre' has no training pixels")
    assert "validation_split" in err[0] and "[2]" not in err[0]
    assert not store.classifiers_dir(folder).exists() or not any(store.classifiers_dir(folder).iterdir())
