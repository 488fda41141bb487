#!/usr/bin/env bash
# The built-in example: a tiny synthetic FLUX through every stage that exists,
# ending with fx-verify's audit. Usage: example.sh WORKDIR (FX_BIN set by make).
set -euo pipefail
work=${1:-build/example}
bin=${FX_BIN:-build/bin}
mkdir -p "$work"
have() { [ -x "$bin/$1" ]; }
echo "example: tiny synthetic FLUX in $work"
"$bin/fx-synth" --force -q -o "$work/model" --cond "$work/cond.safetensors" --prompts 2
"$bin/fx-verify" "$work/model"
