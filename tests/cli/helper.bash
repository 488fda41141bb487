# Shared by the bats tests: assertion libraries and small helpers.
bats_require_minimum_version 1.5.0
load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

# A tiny synthetic model (diffusers folder) and conditioning, cached per file.
mk_model() {
	local dir=${1:-$BATS_TEST_TMPDIR/model}
	shift || true
	fx-synth -q -o "$dir" "$@"
}

# Python with the safetensors package, or empty.
have_py_safetensors() {
	python3 -c 'import safetensors' >/dev/null 2>&1
}

json_get() {  # json_get FILE_OR_- PYTHON_EXPR (with `d` the parsed document)
	python3 -c "import json,sys; d=json.load(open(sys.argv[1]) if sys.argv[1] != '-' else sys.stdin); print($2)" "$1"
}
