"""Tiled inference: no seams, identical preprocessing, ONNX parity, bounded work."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CLASSES, strokes_from_truth, synthetic_image, write_folder_project
from dlpixel.config import TrainingConfig
from dlpixel.data.preprocessing import stats_for
from dlpixel.inference.backends import load_backend
from dlpixel.inference.predictor import Predictor
from dlpixel.projects import open_project
from dlpixel.runtime.tiling import Grid, axis_positions, blend_window
from dlpixel.training.run import train_classifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained once on the synthetic project (320 px image)."""
    img, truth = synthetic_image()
    folder = write_folder_project(tmp_path_factory.mktemp("infer") / "project",
                                  {"synthetic.tif": (img, strokes_from_truth(truth))})
    cfg = TrainingConfig(method="unet", backbone="efficientnet-lite0", tile_size=64,
                         epochs=25, batch_size=4, learning_rate=0.003,
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


def known_model(radius: int, seed: int = 3):
    """A backend whose answer is known: class logits are fixed linear mixes of each channel's mean over a
    (2r+1)² window, zero outside the tile (as a convolution pads). radius 0 is a per-pixel model."""
    from scipy import ndimage as ndi

    mix = np.random.default_rng(seed).normal(0, 3, (3, 3)).astype(np.float32)

    def backend(batch):
        size = (1, 1, 2 * radius + 1, 2 * radius + 1)
        mean = ndi.uniform_filter(batch.astype(np.float64), size=size, mode="constant").astype(np.float32)
        logits = np.einsum("kc,nchw->nkhw", mix, mean)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    backend.name, backend.device = "known", "cpu"
    return backend


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """The synthetic project and metadata for a 3-class model on its RGB channels; no training needed."""
    from dlpixel.classifiers.metadata import ClassifierMetadata, ClassInfo
    from dlpixel.config import NormalizationConfig
    from dlpixel.data.preprocessing import Preprocessing

    img, truth = synthetic_image()
    folder = write_folder_project(tmp_path_factory.mktemp("known") / "project",
                                  {"synthetic.tif": (img, strokes_from_truth(truth))})
    names = ["Red", "Green", "Blue"]
    meta = ClassifierMetadata(
        name="known", input_channels=names, tile_size=64, downsample=1.0,
        classes=[ClassInfo(index=i, name=n, color=(200, 10 * i, 0)) for i, n in enumerate(CLASSES)],
        preprocessing=Preprocessing(channels=[0, 1, 2], channel_names=names, normalization=NormalizationConfig()),
        training=TrainingConfig(), labelled_pixels={}, class_weights={})
    return folder, meta


def known_map(meta, folder, backend, tile, overlap):
    src = open_project(folder).image("synthetic.tif").open()
    strips = list(Predictor(backend, meta, tile, overlap, batch_size=3).strips(src, stats_for(src, meta.preprocessing)))
    assert all(s.computed.all() for s in strips)
    assert [s.y for s in strips] == sorted(s.y for s in strips)
    return np.concatenate([s.probabilities for s in strips])


def near_tile_borders(size: int, tile: int, overlap: int, radius: int) -> np.ndarray:
    """(size, size) bool: pixels closer than ``radius`` to an edge of a tile that lies inside the image."""
    near = np.zeros(size, bool)
    for p in axis_positions(size, tile, tile - overlap):
        for edge in (p, p + tile):
            if 0 < edge < size:
                near[max(0, edge - radius): edge + radius] = True
    return near[:, None] | near[None, :]


@pytest.mark.parametrize("tile,overlap", [(128, 32), (96, 24)])
def test_tiled_map_of_a_per_pixel_model_is_the_one_pass_map(known, tile, overlap):
    """Blending normalises exactly: a per-pixel model gives the one-pass answer at every pixel (96/24 shifts the
    last tile back inside the 320 px image)."""
    folder, meta = known
    model = known_model(0)
    whole = known_map(meta, folder, model, 320, 0)
    tiled = known_map(meta, folder, model, tile, overlap)
    assert tiled.shape == whole.shape == (320, 320, 3)
    assert np.abs(tiled - whole).max() <= 1e-5
    assert np.array_equal(tiled.argmax(-1), whole.argmax(-1))


@pytest.mark.parametrize("tile,overlap", [(128, 32), (96, 24)])
def test_tiled_map_of_a_fixed_receptive_field_agrees_off_borders_and_is_bounded_on_them(known, tile, overlap):
    """A model that sees 7 × 7 px (radius 3) differs from the one-pass answer only where a tile's own border is
    within its view; there the blending ramp gives that tile a weight of at most (r - ½)/overlap per axis, so the
    probabilities differ by at most 2 (r - ½)/overlap. Without overlap the same model leaves seams."""
    folder, meta = known
    r = 3
    model = known_model(r)
    whole = known_map(meta, folder, model, 320, 0)
    tiled = known_map(meta, folder, model, tile, overlap)
    near = near_tile_borders(320, tile, overlap, r)
    err = np.abs(tiled - whole).max(-1)
    assert err[~near].max() <= 1e-5
    assert err[near].max() <= 2 * (r - 0.5) / overlap
    disagree = tiled.argmax(-1) != whole.argmax(-1)
    assert not disagree[~near].any()
    # The same model tiled without overlap: its tile borders show, and far more than with blending.
    seams = np.abs(known_map(meta, folder, model, tile, 0) - whole).max(-1)
    assert seams[near_tile_borders(320, tile, 0, r)].max() > 4 * err.max()


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
