"""``dlpixel demo``: the whole job on a real image that ships with scikit-image, in a few minutes on a CPU.

The image is scikit-image's immunohistochemistry sample (IHC, DAB and haematoxylin, 512 × 512). The project ships
sparse annotations for it (``data/ihc_demo.geojson``: short strokes and small regions of Tumor, Stroma and
Background, as a QuPath user would draw them, and two unclassified regions to measure). The demo writes both into a
folder project, trains a classifier with the default ``method: auto`` (on these few strokes a features classifier;
``method="unet"`` trains a small U-Net on an encoder whose ImageNet weights come with a Python package, no
download), applies it (class map, objects, measurements per region) and says where everything went.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from .config import TrainingConfig
from .runtime.events import CancelToken

DEMO_IMAGE = "ihc.tif"
DEMO_CLASSIFIER = "ihc_demo"
DEMO_SETTINGS: dict[str, Any] = {
    "description": "Tumor, stroma and background on scikit-image's IHC sample (dlpixel demo)",
    # The U-Net settings below apply when the demo trains a U-Net (method unet); method stays at its default.
    "backbone": "efficientnet-lite0",
    "tile_size": 64,
    "tile_overlap": 25,
    "epochs": 30,
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


def run_demo(out: Path, epochs: int | None = None, listener: Any = None, cancel: CancelToken | None = None,
             method: str | None = None) -> int:
    from .projects import open_project
    from .training.run import train_classifier

    project_dir = write_demo_project(out / "project")
    settings = dict(DEMO_SETTINGS)
    if epochs is not None:
        settings["epochs"] = epochs
    if method is not None:
        settings["method"] = method
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
    print(result_line(entry.metadata))
    written = _apply_demo(project, entry.name, listeners)
    print(next_steps(project_dir, entry.path, written))
    return 0


def result_line(meta: Any) -> str:
    """The method trained and its validation figure: a features classifier's estimate on held-out annotations
    beside the random forest's on the same split, or a U-Net's best epoch."""
    from .report.page import method_line

    results = meta.results
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in results.per_class_iou.items() if v is not None)
    if meta.architecture == "features":
        base = (meta.split.get("baseline") or {}).get("held_out_mean_iou")
        forest = f"; random forest on the same split {base:.3f}" if base is not None else ""
        return (f"method:     {method_line(meta)}\nvalidation mean IoU {results.mean_iou:.3f} on held-out annotations "
                f"({per_class}{forest})")
    return (f"method:     {method_line(meta)}\nvalidation mean IoU {results.mean_iou:.3f} (best epoch "
            f"{results.best_epoch} of {results.epochs_run}; {per_class})")


def next_steps(project_dir: Path, classifier_dir: Path, written: list[Path]) -> str:
    """What to look at after the demo: the report, the summary command, and the results in QuPath."""
    import shlex

    from .classifiers.store import REPORT

    geojson = next((p for p in written if p.name.endswith(".geojson")), None)
    class_map = next((p for p in written if p.name.endswith(".ome.tif")), None)
    lines = ["", "next:",
             f"  training report: {classifier_dir.resolve() / REPORT}  (open it in a web browser)",
             f"  summary:         dlpixel models show {DEMO_CLASSIFIER} --project "
             f"{shlex.quote(str(project_dir.resolve()))}",
             f"  in QuPath:       drag {(project_dir / DEMO_IMAGE).resolve()} into QuPath to open the image"]
    if geojson is not None:
        lines.append(f"                   then drag {geojson.resolve()} onto it: the classified regions as objects")
    if class_map is not None:
        lines.append(f"                   the class map {class_map.resolve()} opens as an image of its own")
    return "\n".join(lines)


def _apply_demo(project: Any, classifier: str, listeners: list[Any]) -> list[Path]:
    """Apply the new classifier three ways and show where the results are."""
    from .config import InferenceConfig
    from .inference.run import apply_classifier

    written = []
    for cfg in (InferenceConfig(output="map", scope="image"), InferenceConfig(output="objects", scope="image"),
                InferenceConfig(output="measurements", scope="annotations")):
        written += apply_classifier(project, classifier, cfg, listeners=listeners)
    for listener in listeners:
        getattr(listener, "close", lambda: None)()
    print(f"results:    {written[0].parent}")
    for path in written:
        print(f"  {path.name}")
    csv_path = next(p for p in written if p.suffix == ".csv")
    import csv

    for row in csv.DictReader(csv_path.open()):
        if row.get("name", "").startswith("Region"):
            shares = ", ".join(f"{k.split(': ', 1)[1][:-2]} {float(v):.1f} %" for k, v in row.items()
                               if k.endswith(" %") and v not in ("", "nan"))
            print(f"  {row['name']}: {shares}")
    return written
