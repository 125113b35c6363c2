#!/usr/bin/env bash
# One prepared GPU run, under 8 minutes: (a) every kernel on CUDA against PyTorch on the same GPU (sd selfcheck
# --dump writes each case's inputs and our output, torch_check.py recomputes it in float64), (b) our kernel timings
# and PyTorch's at the same shapes (CUDA events), (c) end to end on a random-weight SD1.5 fp16 model at 512x512
# (text encoder, UNet steps at batch 2, VAE decode, 20 and 50 steps, peak device memory, per-op time per step),
# (d) ILGPU's open questions (launch overhead from C#, >48 KB dynamic shared memory, the libcuda file), (e) PyTorch's
# eager UNet call on the same random weights, batch and latent size as (c), for the UNet-step ratio, (f) the
# tensor-core plan, every configuration the planner can choose beside PyTorch at the SD1.5 and SDXL UNet shapes and
# one UNet step layer by layer, (g) an SDXL 1024x1024 step where the build has an SDXL model.
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

# (f) The tensor-core plan and its configurations at the UNet shapes. unet_case MODEL LATENT LIMIT [--all-configs]: every
# distinct GEMM/convolution shape of one UNet step (batch 2, fp16) as the planner launches it (and in every
# configuration), PyTorch at the same cases, and one step laid out layer by layer (unet-MODEL.md).
unet_case() {
  local m=$1 lat=$2 limit=$3 t0=$SECONDS
  timeout "$(left 20)" "$SD" bench --unet $m --latent $lat --batch 2 --list --json "$OUT/unet-$m-suite.json"
  timeout "$(left $limit)" "$SD" bench --unet $m --latent $lat --batch 2 --device $DEV $QUICK ${4:-} \
    --json "$OUT/unet-$m-ours.json" > "$OUT/unet-$m-ours.txt" 2>&1
  echo "exit $?" >> "$OUT/unet-$m-ours.txt"
  tail -n 4 "$OUT/unet-$m-ours.txt"
  if [ $DRY = 0 ]; then
    timeout "$(left 60)" "$PY" "$HERE/torch_bench.py" "$OUT/unet-$m-suite.json" "$OUT/unet-$m-torch.json" --min-seconds 0.05 \
      > "$OUT/unet-$m-torch.txt" 2>&1
  fi
  python3 "$HERE/unet_layers.py" "$OUT/unet-$m-ours.json" "$OUT/unet-$m-torch.json" "$OUT/unet-$m.md" 2>&1 | tail -n 2
  echo "unet $m: $((SECONDS - t0)) s"
}
step "(f) sd kernels --plan: SD1.5 64x64 and SDXL 128x128 latents, batch 2, 132 multiprocessors"
"$SD" kernels --plan --config sd15 --latent 64 --batch 2 --sms 132 --markdown > "$OUT/plan-sd15-64.md" 2>&1
"$SD" kernels --plan --config sdxl --latent 128 --batch 2 --sms 132 --markdown > "$OUT/plan-sdxl-128.md" 2>&1
tail -n 3 "$OUT/plan-sd15-64.md" "$OUT/plan-sdxl-128.md"
if [ $DRY = 0 ]; then
  step "(f) every tensor-core configuration beside PyTorch at the SD1.5 and SDXL UNet shapes (batch 2, fp16)"
  unet_case sd15 64 100 --all-configs
  unet_case sdxl 128 100 --all-configs
else
  step "(f) UNet shapes at 8x8 latents on the C# backend (dry run); SDXL's case list only"
  unet_case sd15 8 60
  timeout "$(left 20)" "$SD" bench --unet sdxl --latent 128 --batch 2 --list --json "$OUT/unet-sdxl-suite.json" && echo "sdxl: $(grep -c '"op"' "$OUT/unet-sdxl-suite.json") shapes"
fi

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

step "(g) SDXL $((SIZE * 2))x$((SIZE * 2)): 2 steps of a random-weight SDXL model (skipped where this build has no SDXL model)"
XL=sdxl$([ $DRY = 1 ] && echo -tiny)
timeout "$(left 150)" "$SD" random-model --config $XL --dtype fp16 --out "$WORK/sdxl" --tokenizer "$TOK" > "$OUT/sdxl-random-model.txt" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q -- "$XL" "$OUT/sdxl-random-model.txt"; then
  echo "skipped: this build has no SDXL model ($(head -n 1 "$OUT/sdxl-random-model.txt"))" | tee "$OUT/sdxl-e2e.skipped.txt"
elif [ $rc != 0 ]; then
  echo "FAILED: sd random-model --config $XL exited $rc: $(tail -n 1 "$OUT/sdxl-random-model.txt")" | tee "$OUT/sdxl-e2e.txt"
else
  timeout "$(left 120)" "$SD" generate --model "$WORK/sdxl" --prompt "a photograph of an astronaut riding a horse" --steps 2 \
    --width $((SIZE * 2)) --height $((SIZE * 2)) --seed 1 --device $DEV --output "$WORK/sdxl.png" --overwrite --profile \
    > "$OUT/sdxl-e2e.stdout.txt" 2> "$OUT/sdxl-e2e.txt"
  echo "sd-run: exit $?" | tee -a "$OUT/sdxl-e2e.txt"
  grep -v "^step " "$OUT/sdxl-e2e.txt" | tail -n 20
fi
if [ -d "$WORK/sdxl/unet" ]; then
  step "(g) PyTorch eager SDXL UNet call on the same weights (text_time embedding, SDPA, fp16), batch 2, $((SIZE / 4))x$((SIZE / 4)) latents"
  if [ $DRY = 0 ]; then
    timeout "$(left 120)" "$PY" "$HERE/torch_unet.py" "$WORK/sdxl/unet" "$OUT/torch_unet_sdxl.json" --batch 2 --size $((SIZE / 4)) 2>&1 \
      | grep -v "UserWarning\|frombuffer(" | tee "$OUT/torch_unet_sdxl.txt"
  else
    python3 "$HERE/torch_unet.py" "$WORK/sdxl/unet" "$OUT/torch_unet_sdxl.json" --batch 2 --size $((SIZE / 4)) --spec-only 2>&1 | tee "$OUT/torch_unet_sdxl.txt"
  fi
fi
rm -rf "$WORK/sdxl"

step summary
python3 "$HERE/summarize.py" "$OUT" 2>&1 | tail -n 80
step "done in $SECONDS s"
