"""The features classifier's prior correction (baked into the model, ONNX included) and the watershed refinement of
probability strips (streamed in bands, equal to refining the whole map)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from conftest import CLASSES, strokes_from_truth, synthetic_image, write_folder_project
from dlpixel.config import InferenceConfig, NormalizationConfig, TrainingConfig
from dlpixel.data.images import FileImageSource
from dlpixel.data.preprocessing import ChannelStats, Preprocessing
from dlpixel.inference.predictor import Strip
from dlpixel.inference.refine import gradient_magnitude, refine_probabilities, watershed_strips
from dlpixel.projects import open_project
from dlpixel.training.features import estimate_prior
from dlpixel.training.run import train_classifier


def test_em_recovers_a_known_prior_from_posteriors() -> None:
    """Posteriors of a two-Gaussian mixture computed with a 50/50 prior; the pixels are 20 % class 1: EM finds 0.2."""
    rng = np.random.default_rng(0)
    y = rng.random(200_000) < 0.2
    x = rng.normal(np.where(y, 1.5, -1.5), 1.0)
    p1 = 1 / (1 + np.exp(-3.0 * x))  # log-likelihood ratio of N(±1.5, 1) is 3x
    pi = estimate_prior(np.stack([1 - p1, p1]), np.array([0.5, 0.5]))
    assert pi[1] == pytest.approx(0.2, abs=0.005)


@pytest.fixture(scope="module")
def features_pair(tmp_path_factory):
    """The synthetic project (equal strokes per class; the classes cover unequal areas), a features classifier
    with and one without the prior correction."""
    img, truth = synthetic_image()
    folder = write_folder_project(tmp_path_factory.mktemp("prior") / "project",
                                  {"synthetic.tif": (img, strokes_from_truth(truth))})
    on = train_classifier(open_project(folder), "on", TrainingConfig(method="features", seed=3))
    off = train_classifier(open_project(folder), "off", TrainingConfig(method="features", seed=3,
                                                                       prior_correction=False))
    return folder, img, truth, on, off


def test_the_prior_is_estimated_and_baked_into_the_bias(features_pair) -> None:
    folder, img, truth, on, off = features_pair
    record = on.metadata.split["prior_correction"]
    assert "prior_correction" not in off.metadata.split
    classes = on.metadata.class_names  # the model's order
    true_fractions = np.bincount(truth.reshape(-1), minlength=3)[[CLASSES.index(c) for c in classes]] / truth.size
    train = np.array([record["training_prior"][c] for c in classes])
    image = np.array([record["image_prior"][c] for c in classes])
    assert np.abs(true_fractions - train).max() > 0.15  # the strokes' prior is far from the image's ...
    np.testing.assert_allclose(image, true_fractions, atol=0.02)  # ... and EM finds the image's
    state_on = torch.load(on.path / "model.pt", weights_only=True)
    state_off = torch.load(off.path / "model.pt", weights_only=True)
    torch.testing.assert_close(state_on["head.weight"], state_off["head.weight"])
    bias = np.array([record["bias"][c] for c in classes])
    np.testing.assert_allclose(bias, np.log(image / train), atol=2e-4)
    np.testing.assert_allclose((state_on["head.bias"] - state_off["head.bias"]).numpy(), bias, atol=2e-4)


def test_onnx_gives_the_corrected_model(features_pair) -> None:
    import onnxruntime as ort
    from dlpixel.models.features import FeaturesNet

    folder, img, truth, on, _ = features_pair
    model = FeaturesNet(3, 3)
    model.load_state_dict(torch.load(on.path / "model.pt", weights_only=True))
    x = np.random.default_rng(1).random((1, 3, 64, 96), dtype=np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(on.path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)


# --- watershed refinement ------------------------------------------------------------------------------------

def _disks(h: int, w: int, centres: list[tuple[int, int]], r: float, shift: float) -> tuple[np.ndarray, ...]:
    """A one-channel image of bright disks (radius r), the truth, and probabilities whose boundary lies ``shift``
    px outside the disks with an uncertain band a few px wide (p(fg) = sigmoid((r + shift - d) / 1.5))."""
    yy, xx = np.mgrid[:h, :h if h == w else w]
    d = np.min([np.hypot(yy - cy, xx - cx) for cy, cx in centres], 0)
    truth = d <= r
    image = np.where(truth, 200, 40).astype(np.uint8)
    fg = 1 / (1 + np.exp(-(r + shift - d) / 1.5))
    return image, truth, np.stack([1 - fg, fg]).astype(np.float32)


def test_watershed_moves_the_boundary_to_the_edge() -> None:
    image, truth, probs = _disks(96, 160, [(48, 60), (40, 120)], 18, 3.0)
    computed = np.ones(truth.shape, bool)
    grad = gradient_magnitude(image[..., None].astype(np.float32) / 255)
    before = probs.argmax(0) == 1
    after = refine_probabilities(probs, computed, grad).argmax(0) == 1
    ring = np.zeros_like(truth)
    ring[1:-1, 1:-1] = truth[1:-1, 1:-1] != truth[:-2, 1:-1]
    ring[1:-1, 1:-1] |= truth[1:-1, 1:-1] != truth[1:-1, :-2]
    from scipy import ndimage as ndi

    near_edge = ndi.binary_dilation(ring, iterations=1)
    assert (before != truth).sum() > 300  # the model's boundary is 3 px out
    assert not ((after != truth) & ~near_edge).any()  # the refined one is on the edge, within a pixel
    assert (after != truth).sum() < 0.25 * (before != truth).sum()


@pytest.mark.parametrize("strip_rows,band,margin", [(7, 16, 12), (50, 40, 16), (1000, 256, 32)])
def test_streamed_bands_equal_the_whole_map(tmp_path, strip_rows, band, margin) -> None:
    centres = [(20, 30), (60, 90), (110, 40), (150, 120), (185, 70), (95, 20)]
    image, truth, probs = _disks(200, 160, centres, 12, 2.0)
    path = tmp_path / "disks.tif"
    tifffile.imwrite(path, image)
    source = FileImageSource(path)
    pre = Preprocessing(channels=[0], channel_names=source.channel_names[:1],
                        normalization=NormalizationConfig(strategy="min_max"))
    stats = ChannelStats(offset=[0.0], scale=[255.0])
    computed = np.ones(truth.shape, bool)
    computed[:, 150:] = False  # columns outside the scope
    probs[:, ~computed] = 0
    whole = refine_probabilities(probs, computed, gradient_magnitude(image[..., None].astype(np.float32) / 255))
    strips = [Strip(y, probs[:, y: y + strip_rows].copy(), computed[y: y + strip_rows].copy())
              for y in range(0, 200, strip_rows)]
    out = list(watershed_strips(strips, source, pre, stats, 1.0, 200, band=band, margin=margin))
    assert [s.y for s in out] == list(range(0, 200, band))[: len(out)] and out[0].y == 0
    streamed = np.concatenate([s.planes for s in out], 1)
    np.testing.assert_array_equal(np.concatenate([s.computed for s in out]), computed)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    assert (whole.argmax(0) != probs.argmax(0)).sum() > 100  # the refinement changed the map


def test_apply_refines_features_maps_and_can_be_turned_off(features_pair) -> None:
    """``apply`` of a features classifier: the map is the watershed of its own probabilities (by default), or the
    model's argmax with ``refine: none``."""
    import dlpixel
    from dlpixel.data.preprocessing import stats_for
    from dlpixel.inference.backends import load_backend
    from dlpixel.inference.predictor import Predictor

    folder, img, truth, on, _ = features_pair
    src = open_project(folder).image("synthetic.tif").open()
    meta = on.metadata
    predictor = Predictor(load_backend(on.path, meta, "onnx", "cpu"), meta)
    strips = list(predictor.strips(src, stats_for(src, meta.preprocessing)))
    probs = np.concatenate([s.planes for s in strips], 1)
    image = np.concatenate([s for s in [np.asarray(img, np.float32)]])
    from dlpixel.data.preprocessing import normalize

    grad = gradient_magnitude(normalize(image, meta.preprocessing, stats_for(src, meta.preprocessing)))
    expected = refine_probabilities(probs, np.ones(probs.shape[1:], bool), grad).argmax(0)
    maps = {}
    for refine in ("auto", "none"):
        written = dlpixel.apply(folder, "on", {"output": "map", "refine": refine, "backend": "onnx"})
        maps[refine] = tifffile.imread(next(p for p in written if str(p).endswith(".tif")))
    np.testing.assert_array_equal(maps["auto"], expected)
    np.testing.assert_array_equal(maps["none"], probs.argmax(0))
    assert (maps["auto"] != maps["none"]).any()
    assert InferenceConfig().refine == "auto"
