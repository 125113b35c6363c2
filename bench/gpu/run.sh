#!/usr/bin/env bash
# One prepared GPU run: device listing, the kernel self-check on CUDA, our kernel timings and PyTorch's at the
# same shapes on the same GPU, and the side-by-side table. Every step has a time limit and a failing step does
# not stop the others, so one short GPU session always brings back what could be measured.
#
# usage: bench/gpu/run.sh [--dry-run] <sd publish dir> <output dir>   (build the publish first with bench/gpu/build.sh)
#   --dry-run: the same steps on the ILGPU CPU accelerator at tiny shapes, PyTorch skipped (what CI runs).
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
SD="$(cd "$1" && pwd)/sd"
OUT="$2"
DEV=cuda; QUICK=""
if [ $DRY = 1 ]; then DEV=cpu; QUICK="--quick"; fi
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
step() { echo; echo "== $(date +%T) $*"; }

step gpu
if [ $DRY = 0 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee "$OUT/gpu.txt"
fi

step "sd devices"
timeout 60 "$SD" devices 2>&1 | tee "$OUT/devices.txt"

step "sd selfcheck --device $DEV"
timeout 120 "$SD" selfcheck --device $DEV 2>&1 | tee "$OUT/selfcheck.txt"
echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/selfcheck.txt"

step "sd bench --list"
timeout 30 "$SD" bench --list $QUICK --json "$OUT/suite.json"

step "sd bench --device $DEV"
timeout 150 "$SD" bench --device $DEV $QUICK --json "$OUT/ours.json" 2>&1 | tee "$OUT/ours.txt"

if [ $DRY = 0 ]; then
  step "PyTorch at the same cases"
  timeout 120 python3 "$HERE/torch_bench.py" "$OUT/suite.json" "$OUT/torch.json" 2>&1 | tee "$OUT/torch.txt"
else
  echo '{"device": "none (dry run)", "torch": "skipped", "results": []}' > "$OUT/torch.json"
fi

step compare
python3 "$HERE/compare.py" "$OUT/ours.json" "$OUT/torch.json" "$OUT/summary.md" 2>&1 | tail -n 60
step done
