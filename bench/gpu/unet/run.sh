#!/usr/bin/env bash
# The full-size SD1.5 UNet (random weights, 64x64 latents = 512x512 images, batch 2) on CUDA against PyTorch on the
# same GPU: our fp16 and fp32 outputs against a float64 reference written with torch functional ops, load and
# forward times, device memory (pool bytes), and PyTorch's time and memory for the same functional model.
# Each step has a time limit; the weights (3.4 GB) go to a scratch folder, only the report comes back.
#
# usage: bench/gpu/unet/run.sh <unet-check publish dir> <output dir>    (publish: bench/gpu/unet/build.sh)
set -uo pipefail
BIN="$(cd "$1" && pwd)/unet-check"
OUT="$2"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${UNET_CHECK_WORK:-/tmp/unet-check}"
mkdir -p "$OUT" "$WORK"
step() { echo; echo "== $(date +%T) $*"; }

step gpu
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"

step "unet-check (ours on CUDA)"
timeout 240 "$BIN" "$WORK" --device cuda --size 64 --batch 2 --runs 3 ${UNET_CHECK_ARGS:-} 2>&1 | tee "$OUT/ours.txt"

step "reference (torch, float64) and PyTorch timings"
timeout 150 python3 "$HERE/unet_reference.py" "$WORK" 2>&1 | grep -v "UserWarning\|frombuffer(" | tee "$OUT/reference.txt"
step done
