#!/usr/bin/env bash
# Builds the trimmed self-contained `sd` for a GPU machine that has no .NET (about 33 MB; see TOOLCHAIN.md), with
# CLIP's vocab (tokenizer/vocab.json, merges.txt: the random model of run.sh needs it) and bench/gpu's scripts
# (bench/), so the folder alone is what the GPU machine needs:  <dir>/bench/run.sh <dir> OUT
# Without sd serve (SD_NO_SERVER): ASP.NET Core would not fit the 64 MiB and the GPU runs do not need it.
# usage: bench/gpu/build.sh [output dir, default artifacts/gpu/sd]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/artifacts/gpu/sd}"
TOKENIZER="${SD_TOKENIZER:-$ROOT/../shared/reference/configs/sd15/tokenizer}"
rm -rf "$OUT"
dotnet publish "$ROOT/src/StableDiffusion.Cli" -c Release -r linux-x64 --self-contained -p:PublishTrimmed=true -p:SD_NO_SERVER=true \
  -p:DebugType=none -o "$OUT" --nologo -v quiet
mkdir -p "$OUT/tokenizer" "$OUT/bench/unet"
cp "$TOKENIZER/vocab.json" "$TOKENIZER/merges.txt" "$OUT/tokenizer/"
cp "$ROOT"/bench/gpu/run.sh "$ROOT"/bench/gpu/*.py "$OUT/bench/"
cp "$ROOT"/bench/gpu/unet/unet_reference.py "$OUT/bench/unet/"
"$OUT/sd" --version
du -sh "$OUT"
size=$(du -sm "$OUT" | cut -f1)
if [ "$size" -gt 64 ]; then echo "the publish is $size MiB, over the GPU machine's 64 MiB" >&2; exit 1; fi
