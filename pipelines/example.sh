#!/usr/bin/env bash
# The built-in example: a tiny synthetic FLUX.1-dev through the whole SVDQuant
# pipeline (pipelines/flux-svdq.mk), ending with fx-verify's summary.
# Usage: example.sh WORKDIR   (FX_BIN: the tools' folder)
set -euo pipefail
work=${1:-build/example}
bin=$(cd "${FX_BIN:-build/bin}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"

echo "example: a tiny synthetic FLUX.1-dev (2 double + 2 single blocks, hidden 256) in $work"
[ -e "$work/flux-tiny/config.json" ] && [ -e "$work/cond-256.safetensors" ] ||
	"$bin/fx-synth" -q --force -o "$work/flux-tiny" --cond "$work/cond-256.safetensors" --prompts 2 --txt-len 256
make --no-print-directory -f "$here/flux-svdq.mk" FX="$bin" MODEL="$work/flux-tiny" \
	COND="$work/cond-256.safetensors" OUT="$work/out" PRECISION=fp4 RANK=32 \
	PROMPTS=2 STEPS=2 RES=256x256 SAMPLES=128 GRID=5
echo "example: checkpoint $work/out/svdq-fp4_r32-flux-tiny.safetensors (audit: .audit.txt beside it)"
