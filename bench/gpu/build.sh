#!/usr/bin/env bash
# Builds the trimmed self-contained `sd` for a GPU machine that has no .NET (about 30 MB; see TOOLCHAIN.md).
# usage: bench/gpu/build.sh [output dir, default artifacts/gpu/sd]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/artifacts/gpu/sd}"
rm -rf "$OUT"
dotnet publish "$ROOT/src/StableDiffusion.Cli" -c Release -r linux-x64 --self-contained -p:PublishTrimmed=true \
  -p:DebugType=none -o "$OUT" --nologo -v quiet
"$OUT/sd" --version
du -sh "$OUT"
