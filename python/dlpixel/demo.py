"""``dlpixel demo``: the whole job on a real image that ships with scikit-image, in a few minutes on a CPU.

The image is scikit-image's immunohistochemistry sample (IHC, DAB and haematoxylin, 512 × 512). The project ships
sparse annotations for it (``data/ihc_demo.geojson``: short strokes and small regions of Tumor, Stroma and
Background), as a QuPath user would draw them. The demo writes both into a folder project, trains a small U-Net on an
encoder whose ImageNet weights come with a Python package (no download), and says where everything went.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from .config import TrainingConfig
from .training.events import CancelToken

DEMO_IMAGE = "ihc.tif"
DEMO_CLASSIFIER = "ihc_demo"
DEMO_SETTINGS: dict[str, Any] = {
    "description": "Tumor, stroma and background on scikit-image's IHC sample (dlpixel demo)",
    "backbone": "efficientnet-lite0",
    "pretrained": True,
    "tile_size": 64,
    "tile_overlap": 25,
    "epochs": 30,
    "batch_size": 8,
    "early_stop_patience": 8,
    "line_stroke_width": 5,
}


def write_demo_project(folder: Path) -> Path:
    """A folder project with the IHC image and its shipped annotations."""
    import skimage.data
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / DEMO_IMAGE, skimage.data.immunohistochemistry(), photometric="rgb")
    with resources.as_file(resources.files("dlpixel") / "data" / "ihc_demo.geojson") as src:
        shutil.copyfile(src, folder / f"{DEMO_IMAGE}.geojson")
    return folder


def run_demo(out: Path, epochs: int | None = None, listener: Any = None, cancel: CancelToken | None = None) -> int:
    from .projects import open_project
    from .training.run import train_classifier

    project_dir = write_demo_project(out / "project")
    settings = dict(DEMO_SETTINGS)
    if epochs is not None:
        settings["epochs"] = epochs
    cfg = TrainingConfig(**settings)
    project = open_project(project_dir)
    listeners = [listener] if listener is not None else []
    entry = train_classifier(project, DEMO_CLASSIFIER, cfg, overwrite=True, listeners=listeners, cancel=cancel)
    getattr(listener, "close", lambda: None)()
    results = entry.metadata.results
    assert results is not None
    print()
    print(f"project:    {project_dir}  (image {DEMO_IMAGE}, annotations {DEMO_IMAGE}.geojson)")
    print(f"classifier: {entry.path}")
    print(f"validation mean IoU {results.mean_iou:.3f} (best epoch {results.best_epoch} of {results.epochs_run}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in results.per_class_iou.items() if v is not None) + ")")
    _apply_demo(project, entry, out)
    return 0


def _apply_demo(project: Any, entry: Any, out: Path) -> None:
    """Apply the classifier when inference is available."""
    try:
        from .inference.run import apply_demo_outputs
    except ImportError:
        return
    for line in apply_demo_outputs(project, entry.name):
        print(line)
