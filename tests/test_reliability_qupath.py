"""QuPath's data.qpdata is never lost (a real QuPath, see tests/qupath_kit.py): an unreadable one (what a save that
was killed leaves) is restored from its newest backup with a log line, or named in a one-line error when it has
none; backups are pruned to the last ``BACKUPS_KEPT``; a backup that does not fit on the disk gives one line and no
empty backup; two annotations that share an id each get their own measurements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from dlpixel.data.base import LabelShape

sys.path.insert(0, str(Path(__file__).parent))
from qupath_kit import require_qupath, write_pyramid_tiff  # noqa: E402
from reliability_kit import SIZE, export_threshold, fill_disk, one_line_error, run_cli, truth  # noqa: E402


@pytest.fixture(scope="module")
def qupath_dir() -> Path:
    from dlpixel.qupath import jvm

    home = require_qupath()
    jvm.start_jvm(home)
    return home


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return export_threshold(tmp_path_factory.mktemp("onnx") / "thr.onnx")


def _project(folder: Path, images: Path, onnx: Path, boxes: list[shapely.Geometry]) -> Path:
    """A QuPath project with one RGB image (red where ``truth``), unclassified ``boxes`` and the classifier ``thr``."""
    from dlpixel.classifiers.onnx_import import import_onnx
    from dlpixel.config import NormalizationConfig
    from dlpixel.qupath.project import create_qupath_project

    images.mkdir(parents=True, exist_ok=True)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[truth(), 0] = 255
    img[..., 1] = 80
    tif = write_pyramid_tiff(images / "a.tif", [img], None)
    qp = create_qupath_project(folder)
    qp.add_image(tif, "a.tif").add_annotations([LabelShape(None, b, "area") for b in boxes])
    import_onnx(folder, "thr", onnx, ["Other", "Positive"], ["Red", "Green", "Blue"], 32,
                normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))
    return folder / "project.qpproj"


def _image(qpproj: Path):
    from dlpixel.qupath.project import open_qupath_project

    return open_qupath_project(qpproj).image("a.tif")


def _apply(capsys, qpproj: Path, qupath: Path) -> tuple[int, str, str]:
    return run_cli(capsys, "apply", "--project", str(qpproj), "--qupath", str(qupath), "--classifier", "thr",
                   "--output", "measurements", "--backend", "onnx", "--quiet")


def _positive_areas(qpproj: Path) -> list[float]:
    return sorted(s.measurements.get("thr: Positive area px^2", -1.0) for s in _image(qpproj).annotations())


BOX = shapely.box(4, 4, 20, 20)  # all positive: 256 px


def test_an_unreadable_data_file_is_restored_from_its_newest_backup(tmp_path, qupath_dir, onnx_file, capsys, caplog):
    qpproj = _project(tmp_path / "project", tmp_path / "images", onnx_file, [BOX])
    code, _, err = _apply(capsys, qpproj, qupath_dir)  # saves with a backup of the annotations-only data
    assert code == 0, err
    data = _image(qpproj).data_file
    good = data.read_bytes()
    data.write_bytes(good[: len(good) // 3])  # what a save killed half-way leaves
    with caplog.at_level("WARNING"):
        code, _, err = _apply(capsys, qpproj, qupath_dir)
    assert code == 0, err
    assert any("was unreadable" in r.getMessage() and "restored it from the backup" in r.getMessage()
               for r in caplog.records)
    assert list(data.parent.glob("data.qpdata.*.unreadable"))  # the damaged file is kept, not deleted
    assert _positive_areas(qpproj) == [256.0]


def test_an_unreadable_data_file_without_backup_is_one_line_naming_it(tmp_path, qupath_dir, onnx_file, capsys):
    qpproj = _project(tmp_path / "project", tmp_path / "images", onnx_file, [BOX])
    data = _image(qpproj).data_file
    for backup in data.parent.glob("data.qpdata.*"):
        backup.unlink()
    data.write_bytes(data.read_bytes()[:100])
    code, _, err = _apply(capsys, qpproj, qupath_dir)
    one_line_error(code, err, str(data), "no backup")
    assert data.stat().st_size == 100  # left as it was, for the user to decide


def test_backups_are_pruned_to_the_last_few(tmp_path, qupath_dir, onnx_file, capsys):
    from dlpixel.qupath.writeback import BACKUPS_KEPT, add_annotations

    qpproj = _project(tmp_path / "project", tmp_path / "images", onnx_file, [BOX])
    image = _image(qpproj)
    for i in range(BACKUPS_KEPT + 3):
        add_annotations(image, [LabelShape(None, shapely.box(30 + i, 30, 31 + i, 31), "area")])
    backups = sorted(image.data_file.parent.glob("data.qpdata.*.bak"))
    assert len(backups) == BACKUPS_KEPT
    assert all(b.stat().st_size > 0 for b in backups)
    assert len(_image(qpproj).annotations()) == 1 + BACKUPS_KEPT + 3


def test_a_backup_on_a_full_disk_is_one_line_and_leaves_no_empty_backup(tmp_path, qupath_dir, onnx_file, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        qpproj = _project(disk / "project", tmp_path / "images", onnx_file, [BOX])
        data = _image(qpproj).data_file
        before = data.read_bytes()
        fill_disk(disk)
        code, _, err = _apply(capsys, qpproj, qupath_dir)
        one_line_error(code, err, "cannot back up", "free disk space")
        assert data.read_bytes() == before
        assert not [p for p in data.parent.iterdir() if p.name != "data.qpdata" and p.stat().st_size == 0]
        assert not list(data.parent.glob("*.partial"))
        (disk / "filler.bin").unlink()
        code, _, err = _apply(capsys, qpproj, qupath_dir)
        assert code == 0, err
        assert _positive_areas(qpproj) == [256.0]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_two_annotations_with_the_same_id_get_their_own_measurements(tmp_path, qupath_dir, onnx_file, capsys):
    import jpype

    other = shapely.box(40, 4, 60, 14)  # all other: 200 px
    qpproj = _project(tmp_path / "project", tmp_path / "images", onnx_file, [BOX, other])
    image = _image(qpproj)
    data = image.read_image_data()
    first, second = list(data.getHierarchy().getAnnotationObjects())
    try:
        second.setID(first.getID())
    except (AttributeError, jpype.JException):
        pytest.skip("this QuPath cannot set an object's id")
    image.entry.saveImageData(data)
    assert len({s.id.split("#")[0] for s in _image(qpproj).annotations()}) == 1
    code, _, err = _apply(capsys, qpproj, qupath_dir)
    assert code == 0, err
    assert _positive_areas(qpproj) == [0.0, 256.0]
