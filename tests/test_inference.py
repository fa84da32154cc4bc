"""Tiled inference: no seams, identical preprocessing, ONNX parity, bounded work."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import strokes_from_truth, synthetic_image, write_folder_project
from dlpixel.config import TrainingConfig
from dlpixel.data.preprocessing import stats_for
from dlpixel.inference.predictor import Predictor, load_backend
from dlpixel.projects import open_project
from dlpixel.runtime.tiling import Grid, axis_positions, blend_window
from dlpixel.training.run import train_classifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained once on the synthetic project (320 px image)."""
    img, truth = synthetic_image()
    folder = write_folder_project(tmp_path_factory.mktemp("infer") / "project",
                                  {"synthetic.tif": (img, strokes_from_truth(truth))})
    cfg = TrainingConfig(backbone="efficientnet-lite0", tile_size=64, epochs=25, batch_size=4, learning_rate=0.003,
                         early_stop_patience=0, line_stroke_width=3, tile_overlap=0)
    entry = train_classifier(open_project(folder), "seams", cfg)
    return folder, entry


def class_map(entry, folder, tile, overlap, backend="torch"):
    meta = entry.metadata
    src = open_project(folder).image("synthetic.tif").open()
    predictor = Predictor(load_backend(entry.path, meta, backend, "cpu"), meta, tile, overlap, batch_size=4)
    strips = list(predictor.strips(src, stats_for(src, meta.preprocessing)))
    assert all(s.computed.all() for s in strips)
    probs = np.concatenate([s.probabilities for s in strips])
    return probs.argmax(-1), probs, strips


def test_grid_positions_and_weights():
    assert axis_positions(320, 128, 96) == [0, 96, 192]
    assert axis_positions(100, 128, 96) == [0]
    assert axis_positions(256, 128, 128) == [0, 128]
    w = blend_window(128, 32)
    assert w.shape == (128, 128) and np.isclose(w[64, 64], 1) and w[0, 0] > 0 and w[0, 0] < 0.001
    g = Grid(320, 200, 128, 32)
    rows = g.rows()
    assert [y for y, _ in rows] == [0, 72] and rows[0][1] == [0, 96, 192]
    assert g.final_row_end(0, rows) == 72 and g.final_row_end(1, rows) == 200


def test_tiled_map_agrees_with_one_pass_without_seams(trained):
    folder, entry = trained
    tiled, tiled_probs, strips = class_map(entry, folder, 128, 32)
    whole, whole_probs, _ = class_map(entry, folder, 320, 0)
    assert tiled.shape == whole.shape == (320, 320)
    disagree = tiled != whole
    assert disagree.mean() <= 0.01, disagree.mean()
    # Pixels within 2 px of an interior tile border (tiles of 128 at stride 96: borders at 96, 128, 192, 224, 288).
    borders = [96, 128, 192, 224]
    near = np.zeros(320, bool)
    for b in borders:
        near[max(0, b - 2): b + 2] = True
    near2d = near[:, None] | near[None, :]
    rate_near = disagree[near2d].mean()
    rate_far = disagree[~near2d].mean()
    assert rate_near <= 2 * max(rate_far, 1e-3), (rate_near, rate_far)
    # Strips come out in order and cover the image once.
    assert [s.y for s in strips] == sorted(s.y for s in strips)
    assert sum(len(s.probabilities) for s in strips) == 320
    assert np.allclose(tiled_probs.sum(-1), 1, atol=1e-4)


def test_onnx_backend_matches_torch(trained):
    folder, entry = trained
    _, torch_probs, _ = class_map(entry, folder, 128, 32, backend="torch")
    _, onnx_probs, _ = class_map(entry, folder, 128, 32, backend="onnx")
    assert np.abs(torch_probs - onnx_probs).max() <= 1e-3


def test_only_tiles_touching_the_window_are_computed(trained):
    folder, entry = trained
    meta = entry.metadata
    src = open_project(folder).image("synthetic.tif").open()
    calls = []

    def backend(batch):
        calls.append(len(batch))
        return np.full((len(batch), 3, 64, 64), 1 / 3, np.float32)

    backend.name, backend.device = "stub", "cpu"
    predictor = Predictor(backend, meta, 64, 16, batch_size=4)
    strips = list(predictor.strips(src, stats_for(src, meta.preprocessing), window=(0, 100, 320, 140),
                                   tile_filter=lambda x, y: x < 100))
    # Tiles of 64 at stride 48: rows y=48 and y=96 touch y 100-140; x = 0, 48, 96 pass the filter.
    assert sum(calls) == 2 * 3
    rows = np.concatenate([s.computed for s in strips])
    assert rows.shape == (40, 320) and rows[:, :160].all() and not rows[:, 160:].any()
