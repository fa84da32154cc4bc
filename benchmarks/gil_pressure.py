"""How much reading rows and writing the map hold up the thread that launches the model, with each in this process
or in child processes (``InferenceConfig.row_readers``, ``map_writer``).

On a GPU the launching thread makes many short PyTorch calls; each gives up the interpreter lock and takes it back,
so it runs at the pace at which the other threads of its process let go of the lock. This benchmark stands in for
it with a thread that makes tiny PyTorch calls (``torch.add`` on 4 numbers, which release the lock as every
PyTorch call does) and counts them per second: alone, then while rows of tiles of an 8192² pyramidal OME-TIFF are
read (as ``apply`` reads them for 512-px tiles) by reader threads of this process or by child processes, then
while 8192² class maps are written by ``ClassMapWriter`` in a thread of this process or by a child. It prints the
calls per second of each, their ratio to the rate alone, and the seconds the reads and maps took. Last, strips are
handed to the map writer at the pace a model makes them (``--model-seconds`` per map: 0.26 s is U-Net resnet34 at
512 px on an H200 for 8192²): the caller's seconds for the whole map, close included, in this process and with the
child, and what closing takes after the last strip. Runs on a CPU; no GPU needed. On a machine with few cores the
children also compete for the cores, which a ratio below 1 shows too.

    python benchmarks/gil_pressure.py                  # 8192 × 8192, 2 readers
    python benchmarks/gil_pressure.py --readers 8 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _class_map(size: int) -> np.ndarray:
    """A class map of blobs of 64 px with 5% noise (about what a U-Net's map compresses like)."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 3, (size // 64 + 1, size // 64 + 1)).astype(np.uint8)
    blobs = np.repeat(np.repeat(coarse, 64, 0), 64, 1)[:size, :size]
    return np.where(rng.random((size, size)) < 0.05, rng.integers(0, 3, (size, size)), blobs).astype(np.uint8)


def _calls_per_second(while_alive: threading.Thread | None, seconds: float = 1.0) -> float:
    import torch

    a, b = torch.zeros(4), torch.zeros(4)
    n, t0 = 0, time.perf_counter()
    while (while_alive.is_alive() if while_alive is not None else time.perf_counter() - t0 < seconds):
        for _ in range(100):
            torch.add(a, 1, out=b)
        n += 100
    return n / (time.perf_counter() - t0)


def _beside(work: Any) -> tuple[float, float]:
    """(calls per second of the launching stand-in while ``work`` runs in another thread, seconds ``work`` took)."""
    took: list[float] = []

    def timed() -> None:
        t0 = time.perf_counter()
        work()
        took.append(time.perf_counter() - t0)

    worker = threading.Thread(target=timed)
    worker.start()
    rate = _calls_per_second(worker)
    worker.join()
    return rate, took[0]


def run(size: int = 8192, readers: int = 2, strip_rows: int = 384, rounds: int = 3,
        switch_interval: float = 0.0005, model_seconds: float = 0.26) -> dict[str, Any]:
    import torch
    from dlpixel.config import NormalizationConfig
    from dlpixel.data.images import FileImageSource
    from dlpixel.data.preprocessing import Preprocessing
    from dlpixel.inference import map_process, read_process
    from dlpixel.inference.bench import _bench_image
    from dlpixel.inference.map_process import open_map_writer
    from dlpixel.inference.reading import read_raw_block
    from dlpixel.runtime.tiling import Grid

    torch.set_num_threads(1)
    sys.setswitchinterval(switch_interval)  # as the device path of ``apply`` sets it
    map_process.prestart()
    read_process.prestart(readers)
    result: dict[str, Any] = {"image_px": f"{size}x{size}", "readers": readers, "strip_rows": strip_rows,
                              "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="dlpixel-gil-") as tmp:
        image = _bench_image(Path(tmp) / "image.ome.tif", size)
        data = _class_map(size)
        pre = Preprocessing(channels=[0, 1, 2], channel_names=["Red", "Green", "Blue"],
                            normalization=NormalizationConfig())
        rows = Grid(size, size, 512, 128).rows(0, size, 0, size)

        def reads(children: bool) -> None:
            with FileImageSource(image) as src:
                pool = (read_process.RowReaders(src, pre, 1.0, 512, readers) if children else None)

                def one(row: tuple[int, list[int]]) -> None:
                    y, xs = row
                    if pool is not None:
                        pool.read(xs, y, lambda shape, dtype: (np.empty(shape, dtype),) * 2)
                    else:
                        np.ascontiguousarray(read_raw_block(src, pre, 1.0, xs, y, 512)[0])

                from concurrent.futures import ThreadPoolExecutor

                try:
                    with ThreadPoolExecutor(readers) as threads:
                        for _ in range(rounds):
                            list(threads.map(one, rows))
                finally:
                    if pool is not None:
                        pool.close()

        def maps(separate: bool) -> None:
            for _ in range(rounds):
                with open_map_writer(separate, Path(tmp) / "map.ome.tif", size, size, 1, kind="classes") as sink:
                    for y in range(0, size, strip_rows):
                        sink.add_strip(y, data[y: y + strip_rows])

        alone = _calls_per_second(None)
        result["calls_per_second_alone"] = round(alone)
        cases = [("reads_same_process", lambda: reads(False)), ("reads_separate_processes", lambda: reads(True)),
                 ("map_same_process", lambda: maps(False)), ("map_separate_process", lambda: maps(True))]
        for name, work in cases + cases:  # two rounds of each, the better kept: a busy machine slows both alike
            rate, took = _beside(work)
            if rate > result.get(f"calls_per_second_{name}", 0):
                result[f"calls_per_second_{name}"] = round(rate)
                result[f"ratio_to_alone_{name}"] = round(rate / alone, 3)
                result[f"seconds_per_image_{name}"] = round(took / rounds, 3)
        # Strips handed over at the pace a model makes them (``model_seconds`` per map): the caller's seconds for
        # the whole map, close included, and what closing costs after the last strip.
        n_strips = -(-size // strip_rows)
        for separate in (False, True, False, True):
            name = "separate_process" if separate else "same_process"
            sink = open_map_writer(separate, Path(tmp) / "paced.ome.tif", size, size, 1, kind="classes")
            t0 = time.perf_counter()
            for y in range(0, size, strip_rows):
                sink.add_strip(y, data[y: y + strip_rows])
                time.sleep(model_seconds / n_strips)
            t1 = time.perf_counter()
            sink.close()
            t2 = time.perf_counter()
            if t2 - t0 < result.get(f"seconds_paced_map_{name}", float("inf")):
                result[f"seconds_paced_map_{name}"] = round(t2 - t0, 3)
                result[f"seconds_close_after_last_strip_{name}"] = round(t2 - t1, 3)
    result["seconds_model_per_map"] = model_seconds
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192, help="side of the image and the class map in pixels")
    p.add_argument("--readers", type=int, default=2, help="reader threads or child processes (apply: 8 on a GPU)")
    p.add_argument("--strip-rows", type=int, default=384, help="rows per map strip (384: 512-px tiles, overlap 128)")
    p.add_argument("--rounds", type=int, default=3, help="images read and maps written while the calls are counted")
    p.add_argument("--model-seconds", type=float, default=0.26,
                   help="seconds a model takes for the whole map, for the paced run (default %(default)s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = run(args.size, args.readers, args.strip_rows, args.rounds, model_seconds=args.model_seconds)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
