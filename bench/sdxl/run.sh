#!/usr/bin/env bash
# SDXL on the CPU: one UNet step at a 128x128 latent (1024², CFG 7.5, so a batch of 2) and the 1024² VAE decode, with
# the process's peak RSS, from a random full-size SDXL single file and a diffusers folder (fp16 weights, fp32 compute).
# usage: bench/sdxl/run.sh SD OUT    (SD: the sd command, e.g. "dotnet src/StableDiffusion.Cli/bin/Release/net10.0/sd.dll")
# Needs ~14 GB of disk in $TMPDIR and ~23 GB of memory; run it alone.
set -uo pipefail
SD=${1:?usage: run.sh SD OUT}; OUT=${2:?usage: run.sh SD OUT}
WORK=${TMPDIR:-/tmp}/sd-sdxl-bench; mkdir -p "$OUT" "$WORK"
$SD random-model --config sdxl --format single-file --dtype fp16 --out "$WORK/sdxl.safetensors" > /dev/null
$SD random-model --config sdxl --dtype fp16 --out "$WORK/sdxl-folder" > /dev/null
$SD info "$WORK/sdxl.safetensors" > "$OUT/info-single-file.txt"
$SD info "$WORK/sdxl-folder" > "$OUT/info-diffusers.txt"
run() { # name, model, size
  /usr/bin/time -v $SD generate --model "$2" --prompt "a red fox in the snow" --steps 1 --seed 1 --width "$3" --height "$3" \
    --device cpu --output "$WORK/$1.png" --overwrite > /dev/null 2> "$OUT/$1.txt"
  echo "$1: exit $?"; grep -A14 "where the time went" "$OUT/$1.txt"; grep "Maximum resident" "$OUT/$1.txt"
}
run single-file-1024 "$WORK/sdxl.safetensors" 1024
run diffusers-512 "$WORK/sdxl-folder" 512
rm -rf "$WORK"
