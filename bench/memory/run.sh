#!/usr/bin/env bash
# Memory and time to first image on the CPU, one process at a time (peak RSS is a high-water mark, from /usr/bin/time):
#   SD1.5 512², 3 Euler steps, CFG 7, --device cpu: a "before" and an "after" build of sd; after with --precision fp16
#     (the pool's peak is what an fp16 GPU run holds), with 256-pixel VAE tiles, with TAESD, under --max-memory 1G
#     (refused before loading); stable-diffusion.cpp on the same file when SDCPP is given;
#   SDXL 1024², 1 step, CFG 7: after, fp32 and fp16 compute; the SDXL VAE decoding 2048² in 512-pixel tiles
#     (`bench cpu decode`, no UNet).
#
#   bench/memory/run.sh BEFORE_SD AFTER_SD SD15_FILE SDXL_FILE TAESD_DIR OUT [SDCPP]
#
# *_SD: sd commands, e.g. "dotnet src/StableDiffusion.Cli/bin/Release/net10.0/sd.dll"; SD15_FILE/SDXL_FILE: e.g.
# `sd random-model --config sd15|sdxl --format single-file --dtype fp16`; TAESD_DIR: `sd random-model --config taesd`;
# SDCPP: stable-diffusion.cpp's sd-cli. Writes OUT/<case>.log and OUT/results.md. The before build peaks near
# 10 GiB; the SDXL cases need ~7 GiB and ~7 GB of disk for the file. Run it on a quiet machine.
set -uo pipefail
if [ $# -lt 6 ]; then sed -n 2,15p "$0"; exit 2; fi
before=$1 after=$2 sd15=$3 sdxl=$4 taesd=$5 out=$6 sdcpp=${7:-}
here=$(cd "$(dirname "$0")/../.." && pwd)
bench="dotnet $here/bench/StableDiffusion.Bench/bin/Release/net10.0/StableDiffusion.Bench.dll"
mkdir -p "$out"
prompt="a lighthouse at dusk"

gen() { # case sd model size steps extra-args...
  local name=$1 sd=$2 model=$3 size=$4 steps=$5; shift 5
  echo "== $name" >&2
  /usr/bin/time -v $sd generate --model "$model" --prompt "$prompt" --steps "$steps" --sampler euler --cfg 7 --seed 1 \
    --width "$size" --height "$size" --device cpu --overwrite --output "$out/$name.png" "$@" > "$out/$name.log" 2>&1
  echo "exit $?" >> "$out/$name.log"
  rm -f "$out/$name.png"
}

timeout 30 $after bench --device cpu 2>&1 | grep -m1 "measured ceilings" > "$out/ceilings.txt"
gen sd15-before "$before" "$sd15" 512 3
gen sd15-after "$after" "$sd15" 512 3
gen sd15-after-fp16 "$after" "$sd15" 512 3 --precision fp16
gen sd15-after-tiled "$after" "$sd15" 512 3 --vae-tiling --vae-tile 256
gen sd15-after-taesd "$after" "$sd15" 512 3 --taesd "$taesd"
gen sd15-after-max-memory-1G "$after" "$sd15" 512 3 --max-memory 1G
gen sdxl-after "$after" "$sdxl" 1024 1
gen sdxl-after-fp16 "$after" "$sdxl" 1024 1 --precision fp16
echo "== sdxl-decode-2048-tiled" >&2
/usr/bin/time -v $bench cpu decode "$sdxl" --size 2048 --tile 512 > "$out/sdxl-decode-2048-tiled.log" 2>&1
if [ -n "$sdcpp" ]; then
  echo "== sd15-sdcpp" >&2
  /usr/bin/time -v "$sdcpp" -m "$sd15" -p "$prompt" -n "" --sampling-method euler --steps 3 --cfg-scale 7 -W 512 -H 512 \
    -s 1 -t 2 -o "$out/sd15-sdcpp.png" -v > "$out/sd15-sdcpp.log" 2>&1
  rm -f "$out/sd15-sdcpp.png"
fi

rss() { awk '/Maximum resident set size/ {printf "%.2f", $NF / 1048576}' "$out/$1.log"; }
wall() { grep "Elapsed (wall clock)" "$out/$1.log" | awk '{print $NF}'; }
stage() { tr '\r' '\n' < "$out/$1.log" | grep -E "^  $2 " | head -1 | sed -E "s/^  $2 +([0-9.]+) s.*/\1/"; }
steps() { tr '\r' '\n' < "$out/$1.log" | grep -E "^  unet " | sed -E 's/.*it\/s: //'; }
device() { tr '\r' '\n' < "$out/$1.log" | grep -oE "peak device memory [0-9.]+ MiB" | awk '{print $4}'; }
decode() { tr '\r' '\n' < "$out/$1.log" | grep -E "^  (vae|taesd) decode" | head -1 | sed -E 's/^  [a-z]+ decode( \(tiled\))? +([0-9.]+) s.*/\2/'; }
{
  echo "CPU: $(cat "$out/ceilings.txt")"
  echo
  echo "| case | peak RSS GiB | peak device MiB | load unet s | unet steps s | decode s | wall |"
  echo "|---|---:|---:|---:|---|---:|---:|"
  for c in sd15-before sd15-after sd15-after-fp16 sd15-after-tiled sd15-after-taesd sdxl-after sdxl-after-fp16; do
    echo "| $c | $(rss $c) | $(device $c) | $(stage $c 'load unet') | $(steps $c) | $(decode $c) | $(wall $c) |"
  done
  echo
  echo "- sd15-after-max-memory-1G: $(grep -h 'sd: error' "$out/sd15-after-max-memory-1G.log") ($(grep -h '^exit' "$out/sd15-after-max-memory-1G.log"), peak RSS $(rss sd15-after-max-memory-1G) GiB)"
  echo "- sdxl-decode-2048-tiled: $(grep -h '^vae decode' "$out/sdxl-decode-2048-tiled.log"); /usr/bin/time peak RSS $(rss sdxl-decode-2048-tiled) GiB"
  if [ -n "$sdcpp" ]; then
    echo "- sd15-sdcpp: peak RSS $(rss sd15-sdcpp) GiB, wall $(wall sd15-sdcpp); $(grep -hoE '(loading tensors completed|sampling completed|latent 1 decoded), taking [0-9.]+s' "$out/sd15-sdcpp.log" | tr '\n' ';')"
  fi
} > "$out/results.md"
cat "$out/results.md"
