#!/usr/bin/env bash
# Memory and time to first image on the CPU: one SD1.5 single file at 512x512, 2 Euler steps, CFG 7, --device cpu,
# run by a "before" and an "after" build of sd, one process at a time. Peak RSS comes from /usr/bin/time (the
# kernel's maximum resident set size, the same figure for both builds); stage times from sd's own summary.
#
#   bench/memory/run.sh BEFORE_SD AFTER_SD MODEL TOKENIZER_DIR TAESD_DIR OUT_DIR [SIZE]
#
# BEFORE_SD/AFTER_SD: the sd executables to compare; MODEL: e.g. `sd random-model --config sd15 --format single-file`;
# TAESD_DIR: e.g. `sd random-model --config taesd`. Writes OUT_DIR/<case>.log and OUT_DIR/results.md.
# Full-size runs peak near 10 GiB: check `free -g` first on a shared machine.
set -euo pipefail
if [ $# -lt 6 ]; then sed -n 2,11p "$0"; exit 2; fi
before=$1 after=$2 model=$3 tokenizer=$4 taesd=$5 out=$6 size=${7:-512}
mkdir -p "$out"
common=(generate --model "$model" --tokenizer "$tokenizer" --prompt "a lighthouse at dusk" --steps 2 --sampler euler
        --cfg 7 --seed 1 --width "$size" --height "$size" --device cpu --overwrite)

run() { # case sd extra-args...
  local name=$1 sd=$2; shift 2
  echo "== $name" >&2
  nice -n 10 /usr/bin/time -v "$sd" "${common[@]}" --output "$out/$name.png" "$@" > "$out/$name.log" 2>&1
  rm -f "$out/$name.png"
}

run before "$before"
run after "$after"
run after-tiled "$after" --vae-tiling
run after-taesd "$after" --taesd "$taesd"

field() { grep -E "^  $2 " "$out/$1.log" | head -1 | awk '{print $(NF-1)}' | sed 's/s$//'; }
stage() { grep -E "^  $2 " "$out/$1.log" | head -1 | sed -E "s/^  $2 +([0-9.]+) s.*/\1/"; }
steps() { grep -E "^  unet " "$out/$1.log" | sed -E 's/.*it\/s: //'; }
rss() { awk '/Maximum resident set size/ {printf "%.2f", $NF / 1048576}' "$out/$1.log"; }
wall() { grep "Elapsed (wall clock)" "$out/$1.log" | awk '{print $NF}'; }
decode() { grep -E "^  (vae|taesd) decode" "$out/$1.log" | head -1 | awk '{print $(NF-1)}'; }

{
  echo "| case | peak RSS GiB | load unet s | unet steps s (first, second) | decode s | wall |"
  echo "|---|---:|---:|---|---:|---:|"
  for c in before after after-tiled after-taesd; do
    echo "| $c | $(rss $c) | $(stage $c 'load unet') | $(steps $c) | $(decode $c) | $(wall $c) |"
  done
} > "$out/results.md"
cat "$out/results.md"
