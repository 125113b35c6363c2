#!/usr/bin/env bash
# Builds the trimmed self-contained unet-check for a GPU machine that has no .NET (see TOOLCHAIN.md).
# usage: bench/gpu/unet/build.sh [output dir, default artifacts/gpu/unet-check]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
OUT="${1:-$ROOT/artifacts/gpu/unet-check}"
rm -rf "$OUT"
dotnet publish "$ROOT/bench/gpu/unet/UnetCheck.csproj" -c Release -r linux-x64 --self-contained -p:PublishTrimmed=true \
  -p:DebugType=none -o "$OUT" --nologo -v quiet
du -sh "$OUT"
