"""How much the map writer holds up the thread that launches the model, with the writer in this process or in a
child (``InferenceConfig.map_writer``).

On a GPU the launching thread makes many short PyTorch calls; each gives up the interpreter lock and takes it back,
so it runs at the pace at which the other threads of its process let go of the lock. This benchmark stands in for
it with a thread that makes tiny PyTorch calls (``torch.add`` on 4 numbers, which release the lock as every
PyTorch call does) and counts them per second: alone, then while maps are written by ``ClassMapWriter`` in a thread
of this process (``same_process``), then while a child writes them (``separate_process``). It prints the calls per
second of each and their ratio to the rate alone, and the seconds the maps took. Runs on a CPU; no GPU needed.

    python benchmarks/map_writer_gil.py                 # 8192 × 8192 class maps, strips of 384 rows
    python benchmarks/map_writer_gil.py --size 4096 --json
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


def run(size: int = 8192, strip_rows: int = 384, maps: int = 3, switch_interval: float = 0.0005) -> dict[str, Any]:
    import torch
    from dlpixel.inference.map_process import open_map_writer, prestart

    torch.set_num_threads(1)
    sys.setswitchinterval(switch_interval)  # as the device path of ``apply`` sets it
    data = _class_map(size)
    a, b = torch.zeros(4), torch.zeros(4)

    def calls_per_second(while_alive: threading.Thread | None, seconds: float = 1.0) -> float:
        n, t0 = 0, time.perf_counter()
        while (while_alive.is_alive() if while_alive is not None else time.perf_counter() - t0 < seconds):
            for _ in range(100):
                torch.add(a, 1, out=b)
            n += 100
        return n / (time.perf_counter() - t0)

    prestart()
    alone = calls_per_second(None)
    result: dict[str, Any] = {"map_px": f"{size}x{size}", "strip_rows": strip_rows, "maps": maps,
                              "calls_per_second_alone": round(alone)}
    with tempfile.TemporaryDirectory(prefix="dlpixel-gil-") as tmp:
        for writer in ("same_process", "separate_process", "same_process", "separate_process"):
            seconds: list[float] = []

            def write(separate: bool = writer == "separate_process") -> None:
                t0 = time.perf_counter()
                for _ in range(maps):
                    with open_map_writer(separate, Path(tmp) / "map.ome.tif", size, size, 1,
                                         kind="classes") as sink:
                        for y in range(0, size, strip_rows):
                            sink.add_strip(y, data[y: y + strip_rows])
                seconds.append(time.perf_counter() - t0)

            worker = threading.Thread(target=write)
            worker.start()
            rate = calls_per_second(worker)
            worker.join()
            # Keep the better of two rounds of each, so a busy machine slows both alike.
            if rate > result.get(f"calls_per_second_{writer}", 0):
                result[f"calls_per_second_{writer}"] = round(rate)
                result[f"ratio_to_alone_{writer}"] = round(rate / alone, 3)
                result[f"seconds_per_map_{writer}"] = round(seconds[0] / maps, 3)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192, help="side of the class map in pixels")
    p.add_argument("--strip-rows", type=int, default=384, help="rows per strip (384: 512-px tiles, overlap 128)")
    p.add_argument("--maps", type=int, default=3, help="maps written while the calls are counted")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = run(args.size, args.strip_rows, args.maps)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
