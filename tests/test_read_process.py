"""Rows of tiles read by child processes (``inference.read_process``): the same blocks and offsets as
``read_raw_block`` in this process for every kind of file (8- and 16-bit, resampled, big-endian float, PNG), the
same class maps through the ``Predictor`` on both paths, the child's errors with their type, a child that dies
reported without a hang, and images a child cannot open read in this process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from dlpixel.config import NormalizationConfig
from dlpixel.data.images import FileImageSource, write_ome_tiff
from dlpixel.data.preprocessing import Preprocessing, stats_for
from dlpixel.errors import DataError
from dlpixel.inference.backends import TorchBackend
from dlpixel.inference.gpu import pinned_buffer
from dlpixel.inference.predictor import Predictor
from dlpixel.inference.read_process import RowReaders, readable_in_children
from dlpixel.inference.reading import read_raw_block
from dlpixel.runtime.children import ChildError
from dlpixel.runtime.tiling import Grid
from PIL import Image

CPU = torch.device("cpu")


def _numpy(shape, dtype):
    out = np.empty(shape, dtype)
    return out, out


def _image(tmp_path: Path, kind: str) -> tuple[Path, list[int]]:
    rng = np.random.default_rng(3)
    if kind == "rgb-pyramid":
        return write_ome_tiff(tmp_path / "rgb.ome.tif", rng.integers(0, 255, (700, 900, 3), dtype=np.uint8),
                              tile=128), [0, 1, 2]
    if kind == "uint16-strips":
        path = tmp_path / "u16.tif"
        tifffile.imwrite(path, rng.integers(0, 65535, (300, 410), dtype=np.uint16), rowsperstrip=37,
                         compression="zlib")
        return path, [0]
    if kind == "big-endian-float":
        path = tmp_path / "f.tif"
        tifffile.imwrite(path, rng.random((200, 330, 2)).astype(">f4"), tile=(64, 64), planarconfig="contig",
                         byteorder=">")
        return path, [1, 0]
    path = tmp_path / "flat.png"
    Image.fromarray(rng.integers(0, 255, (150, 260, 3), dtype=np.uint8)).save(path)
    return path, [2, 0]


@pytest.mark.parametrize("kind", ["rgb-pyramid", "uint16-strips", "big-endian-float", "png"])
@pytest.mark.parametrize("downsample", [1.0, 1.4])
def test_blocks_read_by_children_equal_blocks_read_here(tmp_path: Path, kind: str, downsample: float) -> None:
    path, channels = _image(tmp_path, kind)
    pre = Preprocessing(channels=channels, channel_names=[f"c{c}" for c in channels],
                        normalization=NormalizationConfig())
    tile = 64
    with FileImageSource(path) as src:
        assert readable_in_children(src)
        grid = Grid(int(np.ceil(src.width / downsample)), int(np.ceil(src.height / downsample)), tile, 16)
        rows = grid.rows(0, grid.height, 0, grid.width)
        requests = [(y, xs) for y, xs in rows] + [(rows[1][0], rows[1][1][::3]), (rows[-1][0], rows[-1][1][-1:])]
        readers = RowReaders(src, pre, downsample, tile, 2)
        try:
            for y, xs in requests:
                want, want_offsets = read_raw_block(src, pre, downsample, xs, y, tile)
                got, offsets = readers.read(xs, y, _numpy)
                assert offsets == list(want_offsets)
                assert got.dtype == want.dtype.newbyteorder("=") and np.array_equal(got, want), (y, xs)
                host, _ = readers.read(xs, y, lambda shape, dtype: pinned_buffer(shape, dtype, CPU))
                assert torch.equal(host, torch.from_numpy(np.ascontiguousarray(want, want.dtype.newbyteorder("="))))
        finally:
            readers.close()


def _meta(channels: list[int]):
    from dlpixel.classifiers.metadata import ClassifierMetadata, ClassInfo

    names = ["Red", "Green", "Blue"]
    return ClassifierMetadata(
        name="p", input_channels=names, tile_size=64, downsample=1.0,
        classes=[ClassInfo(index=i, name=f"k{i}", color=(9, 9, 9 * i)) for i in range(3)],
        preprocessing=Preprocessing(channels=channels, channel_names=names, normalization=NormalizationConfig()))


class _Pointwise(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


ROWS_LEFT_OUT = {None: None, "whole rows": lambda x, y: (y // 48) % 3 != 1, "tiles": lambda x, y: (x + y) % 96 != 0}


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("left_out", list(ROWS_LEFT_OUT))
def test_the_predictor_gives_the_same_map_with_rows_read_by_children(tmp_path: Path, on_device: bool,
                                                                      left_out: str | None) -> None:
    path, channels = _image(tmp_path, "rgb-pyramid")
    meta = _meta(channels)
    backend = TorchBackend(_Pointwise(), "cpu", "fp32")
    maps = {}
    for mode in ("same_process", "separate_processes"):
        with FileImageSource(path) as src:
            predictor = Predictor(backend, meta, 64, 16, batch_size=7, reader_threads=3, on_device=on_device)
            predictor.row_readers = mode
            strips = list(predictor.strips(src, stats_for(src, meta.preprocessing), (20, 30, 800, 650),
                                           ROWS_LEFT_OUT[left_out]))
            assert predictor.rows_read_in == mode
            maps[mode] = np.concatenate([s.classes() for s in strips])
    assert len(np.unique(maps["same_process"])) >= 2
    assert np.array_equal(maps["same_process"], maps["separate_processes"])


def test_a_childs_error_reaches_the_caller_with_its_type_and_the_child_reads_on(tmp_path: Path) -> None:
    truth = np.ones((128, 128, 1), np.float32)
    truth[70, 5] = np.nan
    path = write_ome_tiff(tmp_path / "nan.ome.tif", truth, tile=64, pyramid=False)
    pre = Preprocessing(channels=[0], channel_names=["c0"], normalization=NormalizationConfig())
    with FileImageSource(path) as src:
        readers = RowReaders(src, pre, 1.0, 64, 1)
        try:
            with pytest.raises(DataError, match="NaN or infinite pixel values"):
                readers.read([0, 48], 48, _numpy)
            block, offsets = readers.read([0, 48], 0, _numpy)  # the same child, still serving
            assert offsets == [0, 48] and (block == 1).all()
        finally:
            readers.close()


def test_a_child_that_dies_is_reported_and_not_reused(tmp_path: Path) -> None:
    path, channels = _image(tmp_path, "rgb-pyramid")
    pre = Preprocessing(channels=channels, channel_names=["a", "b", "c"], normalization=NormalizationConfig())
    with FileImageSource(path) as src:
        readers = RowReaders(src, pre, 1.0, 64, 1)
        child = readers._all[0]
        child.proc.kill()
        child.proc.wait()
        with pytest.raises(ChildError, match=r"stopped unexpectedly \(exit code -9; killed.*row_readers: same_process"):
            readers.read([0, 48], 0, _numpy)
        assert readers._all == []
        with pytest.raises(ChildError, match="every row reader process stopped"):  # no wait for a child forever
            readers.read([0, 48], 48, _numpy)
        readers.close()


def test_a_file_a_child_cannot_open_is_one_error_and_the_children_serve_on(tmp_path: Path) -> None:
    path, channels = _image(tmp_path, "rgb-pyramid")
    pre = Preprocessing(channels=channels, channel_names=["a", "b", "c"], normalization=NormalizationConfig())
    with FileImageSource(path) as src:
        path.rename(tmp_path / "moved.ome.tif")  # gone before the children open it
        with pytest.raises(DataError, match="image file not found"):
            RowReaders(src, pre, 1.0, 64, 3)
        (tmp_path / "moved.ome.tif").rename(path)
        readers = RowReaders(src, pre, 1.0, 64, 3)
        try:
            block, offsets = readers.read([0, 48], 0, _numpy)
            assert offsets == [0, 48] and np.array_equal(block, read_raw_block(src, pre, 1.0, [0, 48], 0, 64)[0])
        finally:
            readers.close()


def test_images_a_child_cannot_open_are_read_in_this_process(tmp_path: Path) -> None:
    from dlpixel.data.base import at_plane  # noqa: F401 - views of a file stay files

    path, _ = _image(tmp_path, "rgb-pyramid")

    class Served(FileImageSource):
        """Stands for an image only this process can read (QuPath's servers)."""

    with Served(path) as src:
        assert not readable_in_children(src)
    with FileImageSource(path) as src:
        assert readable_in_children(src) and readable_in_children(src.at_plane(0, 0))


def test_without_children_rows_are_read_in_this_process_with_a_warning(tmp_path: Path,
                                                                       failing_python: Path) -> None:
    from dlpixel.runtime.events import Emitter

    path, channels = _image(tmp_path, "rgb-pyramid")
    meta = _meta(channels)
    events: list[dict] = []
    with FileImageSource(path) as src:
        predictor = Predictor(TorchBackend(_Pointwise(), "cpu", "fp32"), meta, 64, 16, batch_size=4,
                              emit=Emitter([events.append]))
        predictor.row_readers = "separate_processes"
        strips = list(predictor.strips(src, stats_for(src, meta.preprocessing), (0, 0, 300, 200)))
    assert predictor.rows_read_in == "same_process" and predictor.row_readers == "same_process"
    assert sum(s.classes().shape[0] for s in strips) == 200
    assert any("reading rows in this process instead" in str(e.get("message", "")) for e in events)


def _on_cuda() -> TorchBackend:
    """A CPU backend that says it runs on CUDA: only ``Predictor``'s choices read ``device``."""
    backend = TorchBackend(_Pointwise(), "cpu", "fp32")
    backend.device = "cuda"
    return backend


@pytest.mark.parametrize("cores", [2, 16, 64])
def test_auto_puts_rows_and_map_in_children_only_on_the_cuda_device_path(monkeypatch, cores: int) -> None:
    from dlpixel.inference.predictor import AUTO_READERS_CPU, AUTO_READERS_GPU, readers_for

    monkeypatch.setattr("os.cpu_count", lambda: cores)
    meta = _meta([0, 1, 2])
    cuda = Predictor(_on_cuda(), meta, 64, 16)
    cpu = Predictor(TorchBackend(_Pointwise(), "cpu", "fp32"), meta, 64, 16)
    assert cuda.uses_device() and not cpu.uses_device()
    assert cuda.in_children("auto") and not cpu.in_children("auto")
    host_on_cuda = Predictor(_on_cuda(), meta, 64, 16, on_device=False)
    assert not host_on_cuda.in_children("auto")  # numpy blending: nothing to feed a launching thread
    for p in (cuda, cpu):
        assert p.in_children("separate_processes") and p.in_children("separate_process")
        assert not p.in_children("same_process")
    assert cpu.reader_threads == AUTO_READERS_CPU == readers_for("auto", False)
    assert cuda.reader_threads == max(AUTO_READERS_CPU, min(AUTO_READERS_GPU, cores // 2))
    assert Predictor(_on_cuda(), meta, 64, 16, reader_threads=5).reader_threads == 5
