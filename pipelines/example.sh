#!/usr/bin/env bash
# The built-in example: a tiny synthetic FLUX through every stage, ending with
# fx-verify's audit. Usage: example.sh WORKDIR   (FX_BIN: the tools' folder)
set -euo pipefail
work=${1:-build/example}
bin=${FX_BIN:-build/bin}
mkdir -p "$work"
have() { [ -x "$bin/$1" ]; }
run() { echo "+ $*" | sed "s|$bin/||"; "$@"; }

echo "example: a tiny synthetic FLUX.1-dev in $work"
[ -e "$work/model/config.json" ] && [ -e "$work/cond.safetensors" ] ||
	run "$bin/fx-synth" -q --force -o "$work/model" --cond "$work/cond.safetensors" --prompts 2
branch=()
if have fx-calib && have fx-lowrank; then
	run "$bin/fx-calib" --model "$work/model" --cond "$work/cond.safetensors" --prompts 2 \
		--steps 2 --res 128x128 --samples 128 -o "$work/calib.safetensors"
	run "$bin/fx-lowrank" --model "$work/model" --calib "$work/calib.safetensors" --rank 32 \
		--precision fp4 --alpha-grid 5 -o "$work/branch.safetensors"
	branch=(--branch "$work/branch.safetensors")
fi
run "$bin/fx-quant" --model "$work/model" "${branch[@]}" --precision fp4 -o "$work/quant.safetensors"
run "$bin/fx-pack" --model "$work/model" --quant "$work/quant.safetensors" "${branch[@]}" \
	-o "$work/svdq-fp4-example.safetensors"
run "$bin/fx-meta" --model "$work/model" "$work/svdq-fp4-example.safetensors"
run "$bin/fx-verify" "$work/svdq-fp4-example.safetensors" | tail -n 4
