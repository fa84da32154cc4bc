"""Shared test set-up: offline hubs, small synthetic projects whose full truth is known."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DLPIXEL_OFFLINE", "1")
# `dlpixel qupath install` records where it put the helper under $XDG_CONFIG_HOME: never the user's own.
os.environ["XDG_CONFIG_HOME"] = __import__("tempfile").mkdtemp(prefix="dlpixel-test-config-")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import shapely  # noqa: E402
from shapely.geometry import mapping  # noqa: E402

CLASSES = ("Background", "Nucleus", "Fibre")
COLORS = {"Background": [200, 200, 200], "Nucleus": [0, 0, 200], "Fibre": [200, 0, 0]}


def synthetic_image(size: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image of bluish disks (Nucleus) and reddish bands (Fibre) on a light noisy background, and its
    true class map (0 Background, 1 Nucleus, 2 Fibre)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), np.uint8)
    band = (np.abs(((xx + 0.6 * yy) % 112) - 56) < 14)
    truth[band] = 2
    for _ in range(size * size // 5000):
        cy, cx, r = rng.integers(12, size - 12), rng.integers(12, size - 12), rng.integers(10, 17)
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    palette = np.array([[225, 215, 220], [70, 60, 160], [200, 90, 110]], np.float32)
    img = palette[truth] + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth


def strokes_from_truth(truth: np.ndarray, per_class: int = 16, seed: int = 1) -> list[dict]:
    """Sparse annotations well inside each class: small disks and short lines, as GeoJSON features."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    feats = []
    for k, name in enumerate(CLASSES):
        dist = ndi.distance_transform_edt(truth == k)
        for i in range(per_class):
            # Half the marks sit near a class boundary, where the model has to learn where one class ends.
            cand = np.argwhere((dist >= 3) & (dist <= 5) if i % 2 else dist >= 6)
            y, x = cand[rng.integers(len(cand))]
            if i % 2 == 0:
                geom = shapely.Point(x + 0.5, y + 0.5).buffer(min(dist[y, x] - 1.5, 8), quad_segs=4)
            else:
                geom = shapely.LineString([(x - 0.5, y + 0.5), (x + 1.5, y + 0.5)])
            feats.append({"type": "Feature", "id": f"{name}-{i}", "geometry": mapping(geom),
                          "properties": {"objectType": "annotation",
                                         "classification": {"name": name, "color": COLORS[name]}}})
    return feats


def write_folder_project(folder: Path, images: dict[str, tuple[np.ndarray, list[dict]]]) -> Path:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    for name, (img, feats) in images.items():
        tifffile.imwrite(folder / name, img, photometric="rgb" if img.ndim == 3 and img.shape[-1] == 3 else None)
        (folder / f"{name}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return folder


@pytest.fixture
def synthetic_project(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A folder project with one 320 px synthetic image, sparse annotations, and the image's full truth."""
    img, truth = synthetic_image()
    folder = write_folder_project(tmp_path / "project", {"synthetic.tif": (img, strokes_from_truth(truth))})
    return folder, img, truth


@pytest.fixture
def failing_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Child processes (``runtime.children``) started from an interpreter that exits at once, as a broken
    installation would; idle children kept from earlier tests are stopped first."""
    from dlpixel.inference import map_process, read_process
    from dlpixel.runtime import children

    map_process._pool.stop_idle()
    read_process._pool.stop_idle()
    (tmp_path / "bin").mkdir(exist_ok=True)
    path = tmp_path / "bin" / "python3"
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    monkeypatch.setattr(children.sys, "executable", str(path))
    return path
