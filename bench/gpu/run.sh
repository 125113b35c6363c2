#!/usr/bin/env bash
# One prepared GPU run, under 8 minutes: (a) every kernel on CUDA against PyTorch on the same GPU (sd selfcheck
# --dump writes each case's inputs and our output, torch_check.py recomputes it in float64), (b) our kernel timings
# and PyTorch's at the same shapes (CUDA events), (c) end to end on a random-weight SD1.5 fp16 model at 512x512
# (text encoder, UNet steps at batch 2, VAE decode, 20 and 50 steps, peak device memory, per-op time per step),
# (d) ILGPU's open questions (launch overhead from C#, >48 KB dynamic shared memory, the libcuda file), (e) PyTorch's
# eager UNet call on the same random weights, batch and latent size as (c), for the UNet-step ratio.
# Every step has a time limit inside one overall budget, and a failing step does not stop the others, so one
# short GPU session always brings back what could be measured. summary.md and the JSON files go to <output dir>.
#
# usage: bench/gpu/run.sh [--dry-run] <sd publish dir> <output dir>   (build the publish first with bench/gpu/build.sh)
#   --dry-run: the same steps on the CPU (the C# backend) at tiny shapes, PyTorch skipped (what CI runs).
#   PYTHON: the Python with torch and numpy (default python3). SD_GPU_BUDGET: overall seconds (default 470).
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 2 ]; then echo "usage: $0 [--dry-run] <sd publish dir> <output dir>" >&2; exit 2; fi
PUB="$(cd "$1" && pwd)"
SD="$PUB/sd"
OUT="$2"
PY="${PYTHON:-python3}"
HERE="$(cd "$(dirname "$0")" && pwd)"
BUDGET="${SD_GPU_BUDGET:-470}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sd-gpu-run.XXXXXX")"   # the kernel dump and the 2 GiB model: never in OUT
trap 'rm -rf "$WORK"' EXIT
TOK="$PUB/tokenizer"
if [ $DRY = 1 ]; then
  DEV=cpu; QUICK="--quick"; CONFIG=sd15-tiny; SIZE=64; STEPS_A=2; STEPS_B=3; TORCH_DEV=cpu
else
  DEV=cuda; QUICK=""; CONFIG=sd15; SIZE=512; STEPS_A=20; STEPS_B=50; TORCH_DEV=cuda
fi
step() { echo; echo "== $(date +%T) [$SECONDS s] $*"; }
# left N: N, or fewer seconds if the overall budget has less left (at least 5).
left() { local l=$((BUDGET - SECONDS)); [ $l -lt 5 ] && l=5; [ "$1" -lt $l ] && l=$1; echo $l; }
has_torch() { "$PY" -c 'import torch, numpy' 2>/dev/null; }
echo "{\"dry_run\": $([ $DRY = 1 ] && echo true || echo false), \"device\": \"$DEV\", \"budget_s\": $BUDGET}" > "$OUT/run.json"

step gpu
if [ $DRY = 0 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee "$OUT/gpu.txt"
else
  echo "none (dry run)" | tee "$OUT/gpu.txt"
fi

step "sd devices"
timeout "$(left 60)" "$SD" devices 2>&1 | tee "$OUT/devices.txt"

step "(a) sd selfcheck --device $DEV --dump (every kernel case's inputs and output)"
timeout "$(left 150)" "$SD" selfcheck --device $DEV --dump "$WORK/dump" 2>&1 | tee "$OUT/selfcheck.txt"
echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/selfcheck.txt"
du -sh "$WORK/dump" 2>/dev/null | tee -a "$OUT/selfcheck.txt"

step "(a) PyTorch recomputes every case (float64 on $TORCH_DEV)"
if [ $DRY = 0 ] || has_torch; then
  timeout "$(left 120)" "$PY" "$HERE/torch_check.py" "$WORK/dump" "$OUT/torch_check.json" --device $TORCH_DEV 2>&1 | tee "$OUT/torch_check.txt"
else
  echo "skipped: dry run and no torch/numpy for $PY" | tee "$OUT/torch_check.txt"
fi
rm -rf "$WORK/dump"

step "(b) sd bench --list"
timeout "$(left 30)" "$SD" bench --list $QUICK --json "$OUT/suite.json"

step "(b) sd bench --device $DEV"
timeout "$(left 150)" "$SD" bench --device $DEV $QUICK --json "$OUT/ours.json" 2>&1 | tee "$OUT/ours.txt"

if [ $DRY = 0 ]; then
  step "(b) PyTorch at the same cases"
  timeout "$(left 120)" "$PY" "$HERE/torch_bench.py" "$OUT/suite.json" "$OUT/torch.json" 2>&1 | tee "$OUT/torch.txt"
else
  echo '{"device": "none (dry run)", "torch": "skipped", "results": []}' > "$OUT/torch.json"
fi

step "(b) side by side"
python3 "$HERE/compare.py" "$OUT/ours.json" "$OUT/torch.json" "$OUT/kernels.md" 2>&1 | tail -n 60

step "(d) sd debug --what launch --device $DEV (launch overhead, >48 KB shared memory, libcuda)"
timeout "$(left 90)" "$SD" debug --what launch --device $DEV --json "$OUT/launch.json" > "$OUT/launch.txt" 2>&1
echo "exit $?" >> "$OUT/launch.txt"
cat "$OUT/launch.txt"

step "(c) random-weight $CONFIG model, fp16"
MODEL="$WORK/model"
timeout "$(left 180)" "$SD" random-model --config $CONFIG --dtype fp16 --out "$MODEL" --tokenizer "$TOK" 2>&1 | tee "$OUT/random-model.txt"
echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/random-model.txt"

# gen N LIMIT [--profile]: one generation of N steps; its stderr (where the time went, the per-op profile) into e2e-N.txt.
gen() {
  local n=$1 limit=$2 t0=$SECONDS rc
  timeout "$limit" "$SD" generate --model "$MODEL" --prompt "a photograph of an astronaut riding a horse" \
    --steps "$n" --width $SIZE --height $SIZE --seed 1 --device $DEV --output "$WORK/e2e-$n.png" --overwrite ${3:-} \
    > "$OUT/e2e-$n.stdout.txt" 2> "$OUT/e2e-$n.txt"
  rc=$?
  echo "sd-run: exit $rc, wall $((SECONDS - t0)) s, limit $limit s" >> "$OUT/e2e-$n.txt"
  grep -v "^step " "$OUT/e2e-$n.txt"
}
step "(c) sd generate ${SIZE}x${SIZE}, $STEPS_A steps, cfg 7.5 (UNet batch 2), --profile (per-op time per step)"
gen $STEPS_A "$(left 270)" --profile

step "(e) PyTorch eager UNet call on the same weights (functional SD UNet, SDPA, fp16), batch 2, $((SIZE / 8))x$((SIZE / 8)) latents"
if [ $DRY = 0 ]; then
  timeout "$(left 120)" "$PY" "$HERE/torch_unet.py" "$MODEL/unet" "$OUT/torch_unet.json" --batch 2 --size $((SIZE / 8)) 2>&1 \
    | grep -v "UserWarning\|frombuffer(" | tee "$OUT/torch_unet.txt"
else
  python3 "$HERE/torch_unet.py" "$MODEL/unet" "$OUT/torch_unet.json" --batch 2 --size $((SIZE / 8)) --spec-only 2>&1 | tee "$OUT/torch_unet.txt"
fi

step "(c) sd generate ${SIZE}x${SIZE}, $STEPS_B steps, no profile (unsynchronised step times)"
# Only when the shorter run says the longer one fits in what is left of the budget (with 30 s to spare).
EST=$(python3 "$HERE/summarize.py" --estimate "$OUT/e2e-$STEPS_A.txt" $STEPS_B 2>/dev/null || echo -1)
REMAIN=$((BUDGET - SECONDS - 30))
if [ "$EST" -ge 0 ] && [ "$EST" -le "$REMAIN" ]; then
  gen $STEPS_B "$(left $((EST * 2 + 30)))"
else
  echo "skipped: the $STEPS_B-step run is estimated at ${EST} s (from the $STEPS_A-step run; -1: it failed) and ${REMAIN} s are left" \
    | tee "$OUT/e2e-$STEPS_B.skipped.txt"
fi

step summary
python3 "$HERE/summarize.py" "$OUT" 2>&1 | tail -n 80
step "done in $SECONDS s"
