"""The map writer in a child process (``inference.map_process``): the same file as ``ClassMapWriter`` byte for
byte, the same errors with their types, nothing left behind on an error, an abort or the caller's death, and a
fallback to this process where no child can start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from dlpixel.inference import map_process
from dlpixel.inference.map_process import MapWriterProcess, open_map_writer
from dlpixel.inference.outputs_map import ClassMapWriter
from dlpixel.runtime import children


def _maps(h: int, w: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(h * w + channels)
    coarse = rng.integers(0, 3, (h // 16 + 1, w // 16 + 1, channels)).astype(np.uint8)
    noisy = rng.integers(0, 256 if channels > 1 else 3, (h, w, channels)).astype(np.uint8)
    blobs = np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:h, :w]
    return np.where(rng.random((h, w, 1)) < 0.1, noisy, blobs)


def _strips(data: np.ndarray, heights: list[int]):
    y = 0
    for i in range(10**6):
        if y >= data.shape[0]:
            return
        rows = heights[i % len(heights)]
        yield y, data[y: y + rows]
        y += rows


def _without_uuid(path: Path) -> bytes:
    """The file with its OME UUID blanked (tifffile draws a new one for every file)."""
    return re.sub(rb"urn:uuid:[0-9a-f-]+", b"", path.read_bytes())


@pytest.mark.parametrize("kind,channels,size", [("classes", 1, (700, 1000)), ("probabilities", 3, (300, 513))])
def test_the_child_writes_the_same_file_as_this_process(tmp_path: Path, kind: str, channels: int,
                                                        size: tuple[int, int]) -> None:
    h, w = size
    data = _maps(h, w, channels)
    extra = ({"class_names": ["a", "b", "c"], "colors": [(255, 0, 0), (0, 255, 0), (0, 0, 255)],
              "overlay": "overlay.png"} if kind == "classes" else {"channel_names": ["a", "b", "c"]})
    files = {}
    for writer in (ClassMapWriter, MapWriterProcess):
        out = tmp_path / writer.__name__
        options = dict(extra, preview=out / "map.png")
        if "overlay" in options:
            options["overlay"] = out / "overlay.png"
        with writer(out / "map.ome.tif", w, h, channels, pixel_size_um=0.5, kind=kind, **options) as sink:
            for y, strip in _strips(data, [37, 256, 1, 90]):
                sink.add_strip(y, strip)
            assert sink.rows_written == h
        files[writer] = sorted(p.name for p in out.iterdir())
        assert "map.ome.tif" in files[writer]
    assert files[ClassMapWriter] == files[MapWriterProcess]  # and no temporaries
    for name in files[ClassMapWriter]:
        ours, theirs = tmp_path / "ClassMapWriter" / name, tmp_path / "MapWriterProcess" / name
        if name.endswith(".json"):
            assert ours.read_text().replace("ClassMapWriter", "") == theirs.read_text().replace("MapWriterProcess", "")
        else:
            assert _without_uuid(ours) == _without_uuid(theirs), name


def test_bad_strips_are_refused_at_once_as_in_this_process(tmp_path: Path) -> None:
    with MapWriterProcess(tmp_path / "m.ome.tif", 64, 40, 1) as sink:
        with pytest.raises(ValueError, match=r"expected uint8 strips of shape \(rows, 64, 1\)"):
            sink.add_strip(0, np.zeros((8, 63), np.uint8))
        with pytest.raises(ValueError, match="strip starts at row 8, expected row 0"):
            sink.add_strip(8, np.zeros((8, 64), np.uint8))
        sink.add_strip(0, np.zeros((40, 64), np.uint8))
        with pytest.raises(ValueError, match="run past"):
            sink.add_strip(40, np.zeros((1, 64), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.tif"]


def test_an_error_in_the_child_reaches_the_caller_with_its_errno_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "taken.ome.tif"
    target.mkdir()  # the finished file cannot replace a folder: close fails in the child
    sink = MapWriterProcess(target, 64, 40, 1)
    sink.add_strip(0, np.ones((40, 64), np.uint8))
    with pytest.raises(OSError) as caught:
        sink.close()
    assert caught.value.errno is not None and caught.value.strerror
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.ome.tif"] and not any(target.iterdir())
    # The child is kept and serves the next map.
    with MapWriterProcess(tmp_path / "next.ome.tif", 64, 40, 1) as sink:
        sink.add_strip(0, np.full((40, 64), 2, np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next.ome.tif", "taken.ome.tif"]


def test_an_error_in_a_strip_stops_the_next_call(tmp_path: Path) -> None:
    sink = MapWriterProcess(tmp_path / "m.ome.tif", 64, 600, 1)
    child = sink._child
    assert child is not None
    child.send.send(("strip", 0, (3, 3, 1)))  # a strip the child's writer refuses
    child.send.send_bytes(b"\0" * 9)
    deadline = time.monotonic() + 60
    while not child.recv.poll(0.05) and time.monotonic() < deadline:
        pass
    with pytest.raises(ValueError, match="expected uint8 strips"):
        sink.add_strip(0, np.zeros((8, 64), np.uint8))
    assert list(tmp_path.iterdir()) == []
    sink.abort()  # nothing more to do


def test_abort_leaves_nothing_and_a_killed_child_is_reported(tmp_path: Path) -> None:
    sink = MapWriterProcess(tmp_path / "m.ome.tif", 300, 600, 1)
    sink.add_strip(0, np.ones((300, 300), np.uint8))
    sink.abort()
    sink.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="already closed"):
        sink.add_strip(300, np.ones((300, 300), np.uint8))
    sink = MapWriterProcess(tmp_path / "m.ome.tif", 300, 600, 1)
    sink.add_strip(0, np.ones((300, 300), np.uint8))
    assert sink._child is not None
    sink._child.proc.kill()
    sink._child.proc.wait()
    assert [p.name for p in tmp_path.iterdir()][0].endswith(".tiles.tmp")  # the spool of the killed child
    with pytest.raises(children.ChildError, match="stopped unexpectedly"):
        sink.add_strip(300, np.ones((300, 300), np.uint8))
        sink.close()
    assert list(tmp_path.iterdir()) == []  # removed for it


def test_without_a_child_the_map_is_written_in_this_process(tmp_path: Path, failing_python: Path) -> None:
    with pytest.warns(RuntimeWarning, match="writing the map in this process instead"):
        sink = open_map_writer(True, tmp_path / "m.ome.tif", 64, 40, 1)
    assert isinstance(sink, ClassMapWriter)
    sink.abort()
    assert isinstance(open_map_writer(False, tmp_path / "n.ome.tif", 64, 40, 1), ClassMapWriter)


def test_when_the_caller_dies_the_child_removes_its_spool_and_exits(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys, numpy as np
        from dlpixel.inference.map_process import MapWriterProcess
        sink = MapWriterProcess({str(tmp_path / 'm.ome.tif')!r}, 512, 1024, 1)
        sink.add_strip(0, np.ones((512, 512), np.uint8))
        print(sink._child.proc.pid, flush=True)
        os._exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(map_process.__file__).parents[2])})
    assert done.returncode == 3, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (Path(f"/proc/{pid}").exists() or any(tmp_path.iterdir())):
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_program_embedding_python_is_never_started_as_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(children.sys, "executable", "/opt/QuPath/bin/QuPath")
    with pytest.raises(children.ChildError, match="no Python interpreter"):
        children.Child("dlpixel.inference.map_process")
