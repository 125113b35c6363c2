#!/usr/bin/env bash
# The per-step goal on the CPU: later SD1.5 512² CFG steps against the machine's floor, two builds alternating.
# Each round measures the fp32 FMA ceiling (`sd bench --device cpu`), then runs BEFORE and AFTER once each (3 Euler
# steps, CFG 7); the floor is one CFG step's 1.606 TFLOP over that round's ceiling, so a busy moment of a shared
# machine moves both sides of the ratio.
#
#   bench/memory/steps.sh BEFORE_SD AFTER_SD SD15_FILE OUT [ROUNDS]
#
# *_SD: sd commands, e.g. "dotnet src/StableDiffusion.Cli/bin/Release/net10.0/sd.dll"; SD15_FILE: e.g.
# `sd random-model --config sd15 --format single-file --dtype fp16`. ROUNDS defaults to 3. Writes OUT/<build>-<round>.log,
# OUT/steps.md, and checks the two builds' images are the same.
set -uo pipefail
if [ $# -lt 4 ]; then sed -n 2,11p "$0"; exit 2; fi
before=$1 after=$2 sd15=$3 out=$4 rounds=${5:-3}
mkdir -p "$out"
flop=1.606e12
{
  echo "| round | FMA ceiling GFLOP/s | floor s | build | UNet steps s | later mean s | × floor |"
  echo "|---:|---:|---:|---|---|---:|---:|"
} > "$out/steps.md"
for r in $(seq 1 "$rounds"); do
  ceil=$(timeout 60 $after bench --device cpu 2>&1 | grep -m1 -oE "fp32 FMA [0-9.]+" | awk '{print $3}')
  [ -n "$ceil" ] || { echo "steps.sh: no FMA ceiling from '$after bench --device cpu'" >&2; exit 1; }
  for b in before after; do
    sd=$before; [ $b = after ] && sd=$after
    echo "== round $r: $b (ceiling $ceil GFLOP/s)" >&2
    $sd generate --model "$sd15" --prompt "a lighthouse at dusk" --steps 3 --sampler euler --cfg 7 --seed 1 \
      --width 512 --height 512 --device cpu --overwrite --output "$out/$b.png" > "$out/$b-$r.log" 2>&1 \
      || { echo "steps.sh: $b failed, see $out/$b-$r.log" >&2; exit 1; }
    steps=$(tr '\r' '\n' < "$out/$b-$r.log" | grep -E "^  unet " | sed -E 's/.*it\/s: //')
    echo "$steps" | awk -v r="$r" -v c="$ceil" -v f="$flop" -v b="$b" '{
      s = 0; for (i = 2; i <= NF; i++) s += $i; m = s / (NF - 1); floor = f / (c * 1e9)
      printf "| %d | %.1f | %.2f | %s | %s | %.2f | %.2f |\n", r, c, floor, b, $0, m, m / floor }' >> "$out/steps.md"
  done
done
if cmp -s "$out/before.png" "$out/after.png"; then echo; echo "The two builds' PNGs are byte-identical."; else echo; echo "The two builds' PNGs differ (compare their pixels)."; fi >> "$out/steps.md"
cat "$out/steps.md"
