"""Shared set-up of the reliability tests: a tiny folder project with a classifier whose output is known (an imported
ONNX threshold model), a folder outside the project that must never change, and helpers that run the command line
and check its one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import shapely
import tifffile
import torch
from dlpixel.classifiers import store
from dlpixel.cli.main import main
from shapely.geometry import mapping

SIZE = 64
REPO = Path(__file__).resolve().parents[1]
QUICK_TRAIN = ["--set", "method=unet",
               "--set", "epochs=1", "--set", "tile_size=32", "--set", "backbone=resnet18", "--set", "pretrained=false",
               "--set", "batch_size=2", "--set", "device=cpu", "--set", "num_workers=0", "--set", "freeze=none",
               "--set", "early_stop_patience=0"]


class Threshold(torch.nn.Module):
    """Class 1 where the first input channel exceeds 0.5, class 0 elsewhere."""

    def forward(self, x):
        d = 50.0 * (x[:, :1] - 0.5)
        return torch.cat([-d, d], dim=1)


def export_threshold(path: Path, channels: int = 3, classes: int = 2) -> Path:
    model = Threshold() if classes == 2 else torch.nn.Conv2d(channels, classes, 1)
    torch.onnx.export(model, torch.zeros(1, channels, 32, 32), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    return path


def truth() -> np.ndarray:
    """The positive pixels of the project's image: the left half."""
    positive = np.zeros((SIZE, SIZE), bool)
    positive[:, : SIZE // 2] = True
    return positive


def make_project(folder: Path, onnx: Path | None, annotations: list[tuple[str, shapely.Geometry, str | None]]
                 | None = None) -> Path:
    """A folder project with one RGB image (red where ``truth``), the given annotations (id, geometry, class) and,
    with ``onnx``, the classifier ``thr`` (threshold on red)."""
    from dlpixel.classifiers.onnx_import import import_onnx
    from dlpixel.config import NormalizationConfig

    folder.mkdir(parents=True, exist_ok=True)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[truth(), 0] = 255
    img[..., 1] = 80
    tifffile.imwrite(folder / "a.tif", img, photometric="rgb")
    annotations = annotations if annotations is not None else [("box", shapely.box(8, 8, 56, 56), None)]
    feats = []
    for ident, geom, cls in annotations:
        props: dict = {"objectType": "annotation"}
        if cls:
            props["classification"] = {"name": cls, "color": [200, 0, 0]}
        feats.append({"type": "Feature", "id": ident, "geometry": mapping(geom), "properties": props})
    (folder / "a.tif.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    if onnx is not None:
        import_onnx(folder, "thr", onnx, ["Other", "Positive"], ["Red", "Green", "Blue"], 32,
                    normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
    return folder


def labelled_project(folder: Path) -> Path:
    """A trainable project: two classes drawn on the two halves of the image."""
    return make_project(folder, None, [("p", shapely.box(4, 4, 28, 60), "Positive"),
                                       ("o", shapely.box(36, 4, 60, 60), "Other")])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) with a digest of its content: equal snapshots = untouched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


def hidden_leftovers(project: Path) -> list[str]:
    """Temporaries an interrupted run could leave visible: staging folders, swaps, locks, spools."""
    found = []
    for dirpath, dirnames, filenames in os.walk(project):
        for name in dirnames + filenames:
            if name.endswith((".partial", ".old", ".trash", ".lock", ".tmp")):
                found.append(str(Path(dirpath) / name))
    return found


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Assert a failure (non-zero) reported on exactly one stderr line starting with ``error:`` (the last one),
    naming ``needles``."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert code != 0, err
    assert len(errors) == 1 and lines[-1] == errors[0], err  # warnings on the way may come before it
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                "DLPIXEL_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def start_paused(argv: list[str], stage: str, marker: Path, timeout: float = 180) -> subprocess.Popen:
    """Start ``dlpixel argv`` in a child process that stops at pause point ``stage`` (see runtime.events.pause_point)
    and return once it is there: the test then kills, interrupts or changes things at exactly that point, and deletes
    ``marker`` to let it go on."""
    proc = subprocess.Popen([sys.executable, "-m", "dlpixel", *argv], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_env(DLPIXEL_PAUSE_AT=stage, DLPIXEL_PAUSE_FILE=str(marker)))
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended ({proc.returncode}) before reaching {stage}: {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach {stage}")
        time.sleep(0.05)
    return proc


def run_child(argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlpixel", *argv], cwd=REPO, text=True,
                          capture_output=True, env=child_env(), timeout=timeout)


def classifier_names(project: Path) -> list[str]:
    return [e.name for e in store.list_classifiers(project)]


def fill_disk(folder: Path) -> Path:
    """Fill the file system (a file of zeros until it is full); delete the returned file to free it again."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError:
            pass
    return filler
