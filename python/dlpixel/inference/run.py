"""``apply``: a classifier over a project's images, written out as measurements, objects or maps."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.strtree import STRtree

from ..classifiers import store
from ..classifiers.metadata import ClassifierMetadata
from ..config import InferenceConfig
from ..data.base import ImageSource, LabelShape, Plane, Project, ProjectImage, at_plane, planes_of, select_images
from ..data.preprocessing import Preprocessing, resolve_channels, stats_for
from ..errors import ConfigError, DataError
from ..runtime.events import CancelToken, Emitter, Listener
from ..runtime.pipeline import in_background
from .backends import load_backend
from .predictor import Predictor

MAP_OUTPUTS = ("map", "probabilities", "overlay")
"""Outputs written as files under ``<project>/results/<classifier>/``, never into the image's data."""
PIXEL_SIZE_TOLERANCE = 0.25
"""Relative difference of pixel sizes (image vs training) above which ``apply`` warns."""


def check_channels(meta: ClassifierMetadata, source: ImageSource, image: str) -> Preprocessing:
    """The classifier's preprocessing, with channel indices resolved against this image by name."""
    pre = meta.preprocessing
    names = list(source.channel_names)
    missing = [c for c in pre.channel_names if c not in names]
    if missing:
        if len(names) == len(pre.channel_names) and not set(pre.channel_names) & set(names):
            bad = [c for c in pre.channels if not 0 <= c < len(names)]
            if bad or len(pre.channels) != len(pre.channel_names):
                raise DataError(f"classifier '{meta.name}' reads channel indices {pre.channels}, but image '{image}' "
                                f"has {len(names)} channel(s); check the classifier's metadata.json or the image")
            return pre  # unnamed or renamed channels of the same count: keep the trained order
        raise DataError(
            f"image '{image}' lacks the channels {missing} that classifier '{meta.name}' expects "
            f"(it needs {pre.channel_names}; the image has {names})"
        )
    return pre.model_copy(update={"channels": resolve_channels(pre.channel_names, names, image)})


def check_pixel_size(meta: ClassifierMetadata, source: ImageSource, image: str, emit: Emitter) -> None:
    if meta.pixel_size_um is None or source.pixel_size_um is None:
        return
    here = source.pixel_size_um * meta.downsample
    if abs(here - meta.pixel_size_um) > PIXEL_SIZE_TOLERANCE * meta.pixel_size_um:
        emit.log(
            f"image '{image}' has {here:.4g} µm pixels at the classifier's downsample, but '{meta.name}' was trained "
            f"at {meta.pixel_size_um:.4g} µm; results may be poor",
            level="warning",
        )


def output_folder(project: Project, image: ProjectImage, classifier: str, output: str) -> Path | None:
    """Where ``apply`` writes this image's ``output``: maps go to ``<project>/results/<classifier>``; measurements
    and objects to the image's own results folder (None where the project stores them itself, as QuPath does)."""
    if output in MAP_OUTPUTS:
        return project.root / "results" / classifier
    results_dir = getattr(image, "results_dir", None)
    return results_dir(classifier) if results_dir is not None else None


def check_output_folder(folder: Path, root: Path | None = None) -> None:
    """Create ``folder`` and write a file into it, so a folder that cannot be written stops ``apply`` before any
    tile is computed, with a one-line error naming it. Inside a project (``root``) the folder must lie inside it and
    not be a symbolic link, and the project folder itself is never created."""
    import tempfile

    from ..data._io import make_dirs_under, remove_stale_temporaries

    try:
        if root is not None:
            make_dirs_under(Path(root), folder)
            remove_stale_temporaries(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise DataError(f"cannot write to the output folder {folder} ({err.strerror or type(err).__name__}); "
                        "make it writable or move the project") from None


def _check_project(project: Project) -> None:
    """Stop with a one-line error when the project folder disappeared during the run (it is never recreated)."""
    if not Path(project.root).is_dir():
        raise DataError(f"the project folder {project.root} no longer exists (moved or deleted during the run); "
                        "nothing was written")


def scope_shapes(image: ProjectImage, cfg: InferenceConfig, context: dict[str, Any]) -> list[LabelShape] | None:
    """The annotations the result is computed for (None = the whole image)."""
    if cfg.scope == "image":
        return None
    shapes = [s for s in image.annotations() if s.kind == "area"]
    if cfg.scope == "selected":
        wanted = set(context.get("selected_ids") or [])
        shapes = [s for s in shapes if s.id in wanted]
    return shapes


def map_stem(name: str) -> str:
    """The file-name stem of an image's map files: its name without the image extension, safe on any file system."""
    from ..data.folder import image_stem

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", image_stem(name)) or "image"


def check_request(meta: ClassifierMetadata, cfg: InferenceConfig, images: Sequence[ProjectImage],
                  context: dict[str, Any]) -> None:
    """Refuse settings that cannot give a meaningful result, before any tile is computed."""
    if cfg.scope == "selected" and not context.get("selected_ids"):
        raise ConfigError("scope 'selected' needs selected annotations, which only QuPath knows: run it from "
                          "QuPath, or use scope 'annotations'")
    if cfg.output == "measurements" and cfg.scope == "image":
        raise ConfigError("measurements are made inside annotations: use scope 'annotations' or 'selected', or "
                          "output 'map' for the whole image")
    if meta.preprocessing.context_scale > 1 and cfg.tile_size not in (None, meta.tile_size):
        raise ConfigError(f"classifier '{meta.name}' sees context around each tile, which lines up only at its own "
                          f"tile size {meta.tile_size}; leave tile_size unset")
    if cfg.output in MAP_OUTPUTS:
        stems: dict[str, str] = {}
        for im in images:
            other = stems.setdefault(map_stem(im.name).lower(), im.name)
            if other != im.name:
                raise DataError(f"images '{other}' and '{im.name}' would write the same map files; apply to one "
                                "of them at a time (--image)")


def refines(meta: ClassifierMetadata, cfg: InferenceConfig) -> bool:
    """Whether the strips are refined by ``refine.watershed_strips`` (``auto``: features classifiers)."""
    return cfg.refine == "watershed" or (cfg.refine == "auto" and meta.architecture == "features")


def apply_classifier(
    project: Project,
    classifier: str,
    cfg: InferenceConfig,
    image_names: Sequence[str] | None = None,
    listeners: Iterable[Listener] = (),
    cancel: CancelToken | None = None,
    context: dict[str, Any] | None = None,
) -> list[Path]:
    """Apply ``classifier`` to the images and write the output ``cfg.output``; returns the files written."""
    emit = Emitter(listeners)
    cancel = cancel or CancelToken()
    context = context or {}
    entry = store.load_classifier(project.root, classifier)
    meta = entry.metadata
    images = select_images(project, image_names)
    check_request(meta, cfg, images, context)
    for folder in dict.fromkeys(output_folder(project, im, classifier, cfg.output) for im in images):
        if folder is not None:
            check_output_folder(folder, project.root if folder.is_relative_to(project.root) else None)
    _prestart_children(cfg)  # child processes start while the model loads
    backend = load_backend(entry.path, meta, cfg.backend, cfg.device, cfg.precision, cfg.cuda_graphs)
    precision = getattr(backend, "precision", "fp32")
    emit("stage", stage="inference", message=f"applying '{classifier}' with {backend.name} on {backend.device} "
         f"({precision})", backend=backend.name, device=backend.device, precision=precision)
    predictor = Predictor(backend, meta, cfg.tile_size, cfg.overlap, cfg.batch_size, cfg.reader_threads, emit, cancel)
    predictor.keep_probabilities = cfg.output == "probabilities" or refines(meta, cfg)
    predictor.row_readers = cfg.row_readers
    written: list[Path] = []
    for image in images:
        source = image.open()
        try:
            paths = _apply_image(project, image, source, classifier, meta, cfg, predictor, context, emit)
        finally:
            source.close()  # type: ignore[attr-defined]
        if paths:
            emit.log(f"{image.name}: wrote {', '.join(str(p) for p in paths)}")
        written += paths
    emit("done", message=f"applied '{classifier}': {len(written)} file(s) written", written=[str(p) for p in written],
         backend=backend.name, device=backend.device, precision=precision)
    return written


def _prestart_children(cfg: InferenceConfig) -> None:
    """Start the child processes that ``row_readers`` and ``map_writer`` may use, before the model is loaded (what
    ``auto`` gives is known only then: on a CPU the children then stay idle until the run ends)."""
    from ..runtime.device import surely_cpu
    from .predictor import readers_for

    gpu_likely = cfg.device in ("auto", "cuda") and not surely_cpu()
    if cfg.row_readers == "separate_processes" or (cfg.row_readers == "auto" and gpu_likely):
        from .read_process import prestart

        prestart(readers_for(cfg.reader_threads, device_path=True))
    if cfg.output in MAP_OUTPUTS and (cfg.map_writer == "separate_process" or (cfg.map_writer == "auto"
                                                                                and gpu_likely)):
        from .map_process import prestart as prestart_writer

        prestart_writer()


def _apply_image(
    project: Project,
    image: ProjectImage,
    source: ImageSource,
    classifier: str,
    meta: ClassifierMetadata,
    cfg: InferenceConfig,
    predictor: Predictor,
    context: dict[str, Any],
    emit: Emitter,
) -> list[Path]:
    """One image: predict over the scope, plane by plane (``check_planes``), and hand the strips to the output's
    sink; the files written."""
    pre = check_channels(meta, source, image.name)
    check_pixel_size(meta, source, image.name, emit)
    predictor.meta = meta.model_copy(update={"preprocessing": pre})
    shapes = scope_shapes(image, cfg, context)
    if shapes is not None and not shapes:
        emit.log(f"image '{image.name}' has no annotations in scope '{cfg.scope}'; skipped", level="warning")
        return []
    planes = check_planes(image.name, source, shapes, cfg.output)
    if len(planes) > 1:
        # Annotations on several planes: one pass per plane, each with that plane's pixels and annotations; the
        # results (measurements or objects) are written together.
        results: Any = {} if cfg.output == "measurements" else []
        for plane in planes:
            view = at_plane(source, plane, image.name)
            sink = _predict_plane(project, image, view, classifier, meta, cfg, predictor,
                                  in_background(stats_for, view, pre), [s for s in shapes or [] if s.plane == plane],
                                  plane)
            if cfg.output == "measurements":
                results.update(sink.result())
            else:
                results += sink.result()
        if cfg.output == "measurements":
            return list(image.write_results(classifier, measurements=results))  # type: ignore[attr-defined]
        return list(image.write_results(classifier, objects=results,  # type: ignore[attr-defined]
                                        object_type=cfg.object_type))
    view = at_plane(source, planes[0], image.name)
    sink = _predict_plane(project, image, view, classifier, meta, cfg, predictor, in_background(stats_for, view, pre),
                          shapes, planes[0])
    if cfg.output == "measurements":
        return list(image.write_results(classifier, measurements=sink.result()))  # type: ignore[attr-defined]
    if cfg.output == "objects":
        return list(image.write_results(classifier, objects=sink.result(),  # type: ignore[attr-defined]
                                        object_type=cfg.object_type))
    return sink.written


def check_planes(image: str, source: ImageSource, shapes: Sequence[LabelShape] | None, output: str) -> list[Plane]:
    """The planes (z, t) to compute: those of the annotations in scope, or (0, 0) for a 2D image. A whole
    multi-plane image, or a map of annotations on several planes, is a one-line error naming the image."""
    n_z, n_t = planes_of(source)
    if shapes is None:
        if n_z * n_t > 1:
            raise DataError(f"image '{image}' has {n_z} z-slices and {n_t} timepoints; scope 'image' cannot choose "
                            "one: draw annotations on the planes to classify and use scope 'annotations'")
        return [(0, 0)]
    planes = sorted({tuple(s.plane) for s in shapes})
    if len(planes) > 1 and output in MAP_OUTPUTS:
        raise DataError(f"image '{image}' has annotations on {len(planes)} planes (z, t) {planes}; a map shows one "
                        "plane: apply to annotations on one plane at a time, or use measurements or objects")
    return planes  # type: ignore[return-value]


def _predict_plane(
    project: Project,
    image: ProjectImage,
    source: ImageSource,
    classifier: str,
    meta: ClassifierMetadata,
    cfg: InferenceConfig,
    predictor: Predictor,
    stats: Any,
    shapes: list[LabelShape] | None,
    plane: Plane,
) -> Any:
    """Predict one plane of an image over the scope and hand the strips to the output's sink; the finished sink
    (a map sink is closed and lists its files in ``written``)."""
    from .map_process import open_map_writer
    from .outputs import AreaAccumulator, ObjectBuilder, default_min_object_area

    class_names = meta.class_names
    ds = meta.downsample
    grid = predictor.grid(source)
    window = None
    tile_filter = None
    if shapes is not None:
        bounds = shapely.total_bounds([s.geometry for s in shapes])
        if bounds[0] >= source.width or bounds[1] >= source.height or bounds[2] <= 0 or bounds[3] <= 0:
            raise DataError(f"the annotations of image '{image.name}' lie outside it "
                            f"({source.width} × {source.height} px)")
        if cfg.output in ("measurements", "objects"):
            # Maps cover the whole image (uncomputed pixels stay empty); the others need only these rows.
            window = (0, int(math.floor(bounds[1] / ds)), grid.width, int(math.ceil(bounds[3] / ds)))
        tree = STRtree([shapely.transform(s.geometry, lambda c: c / ds) for s in shapes])
        t = predictor.tile

        def tile_filter(x: int, y: int, tree: STRtree = tree, t: int = t) -> bool:
            return len(tree.query(shapely.box(x, y, x + t, y + t), predicate="intersects")) > 0

    pixel_size = source.pixel_size_um
    if cfg.output == "measurements":
        sink: Any = AreaAccumulator(shapes or [], class_names, ds, pixel_size, classifier=classifier,
                                    image_size=(source.width, source.height))
    elif cfg.output == "objects":
        min_area = default_min_object_area(ds, pixel_size) if cfg.min_object_area is None else cfg.min_object_area
        sink = ObjectBuilder(class_names, ds, min_area, cfg.min_hole_area, cfg.simplify, pixel_size,
                             shapes, cfg.object_type, class_colors=[tuple(c.color) for c in meta.classes],
                             classifier=classifier, image_size=(source.width, source.height), plane=plane)
    else:
        classes = cfg.output != "probabilities"
        suffix = "classes" if classes else "probabilities"
        path = project.root / "results" / classifier / f"{map_stem(image.name)}.{suffix}.ome.tif"
        preview = path.with_name(path.name.replace(".ome.tif", ".png"))
        overlay = path.with_name(f"{map_stem(image.name)}.overlay.png") if cfg.output == "overlay" else None
        _check_project(project)  # the writer creates its folder: never the project's, should it have gone
        sink = open_map_writer(
            predictor.in_children(cfg.map_writer), path, grid.width, grid.height, 1 if classes else len(class_names),
            pixel_size_um=pixel_size * ds if pixel_size else None,
            channel_names=["classes"] if classes else class_names,
            kind="classes" if classes else "probabilities",
            colors=[tuple(c.color) for c in meta.classes], preview=preview, class_names=class_names,
            overlay=overlay, region=(0.0, 0.0, grid.width * ds, grid.height * ds), plane=plane,
        )
    strips: Iterable[Any] = predictor.strips(source, stats, window, tile_filter, label=image.name)
    if refines(meta, cfg):
        from .refine import watershed_strips

        strips = watershed_strips(strips, source, predictor.meta.preprocessing, stats, ds, grid.height)
    ahead = predictor.ahead_of_writer(strips, name=f"dlpixel-apply-{image.name}")
    try:
        for strip in ahead:
            if cfg.output == "probabilities":
                data = np.rint(strip.probabilities * 255).astype(np.uint8)
                data[~strip.computed] = 0
            else:
                data = strip.classes()
            sink.add_strip(strip.y, data)
        _check_project(project)
        if cfg.output in MAP_OUTPUTS:
            sink.close()
    except OSError as err:
        if hasattr(sink, "abort"):
            sink.abort()
        raise DataError(f"cannot write the {cfg.output} of image '{image.name}' to {project.root / 'results'} "
                        f"({err.strerror or err}); free disk space or make the project writable") from None
    except BaseException:
        if hasattr(sink, "abort"):
            sink.abort()
        raise
    finally:
        ahead.close()  # stops (and joins) the producer however the loop ended
    if cfg.output in MAP_OUTPUTS:
        sink.written = [path, preview] + ([overlay, overlay.with_suffix(".json")] if overlay is not None else [])
    return sink
