#!/usr/bin/env bats
# fx-calib: structure, reproducibility, caching, bad inputs.

load helper

setup() {
	M=$BATS_TEST_TMPDIR/model
	C=$BATS_TEST_TMPDIR/cond.safetensors
	fx-synth -q -o "$M" --cond "$C" --prompts 2 --txt-len 32
	ARGS=(--model "$M" --cond "$C" --steps 2 --res 128x128 --samples 48)
}

@test "fx-calib --help lists every option" {
	run -0 fx-calib --help
	for o in --model --cond --prompts --steps --res --guidance --seed --samples --hessian --blocks --output; do
		assert_output --partial -- "$o"
	done
}

@test "every fused group of every block has absmax (K), samples (M,K) and with --hessian xtx (K,K)" {
	have_py_safetensors || skip "python safetensors not installed"
	c=$BATS_TEST_TMPDIR/calib.safetensors
	run -0 fx-calib "${ARGS[@]}" --hessian -o "$c"
	python3 - "$c" <<'PY'
import sys, json, struct
import numpy as np
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
assert hdr["__metadata__"]["fx.format"] == "fx.calib"
H = 256
groups = {}
for b in range(2):
    for g, k in [("norm1.linear", H), ("norm1_context.linear", H), ("qkv_proj", H), ("qkv_proj_context", H),
                 ("out_proj", H), ("out_proj_context", H), ("mlp_fc1", H), ("mlp_fc2", 4 * H),
                 ("mlp_context_fc1", H), ("mlp_context_fc2", 4 * H)]:
        groups[f"transformer_blocks.{b}.{g}"] = k
    for g, k in [("norm.linear", H), ("qkv_proj", H), ("mlp_fc1", H), ("out_proj", H), ("mlp_fc2", 4 * H)]:
        groups[f"single_transformer_blocks.{b}.{g}"] = k
for g, k in groups.items():
    assert hdr[g + ".absmax"]["shape"] == [k], g
    m, kk = hdr[g + ".samples"]["shape"]
    assert kk == k and 0 < m <= 48, (g, m, kk)
    assert hdr[g + ".xtx"]["shape"] == [k, k], g
# image rows: 2 prompts x 2 steps x 64 tokens >= 48 -> a full reservoir
assert hdr["transformer_blocks.0.qkv_proj.samples"]["shape"][0] == 48
assert len([k for k in hdr if k != "__metadata__"]) == 3 * len(groups)
PY
	run -0 fx-verify "$c"
}

@test "the same seed gives identical bytes; another seed changes the samples" {
	run -0 fx-calib "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/a.safetensors"
	run -0 fx-calib "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/b.safetensors"
	cmp "$BATS_TEST_TMPDIR/a.safetensors" "$BATS_TEST_TMPDIR/b.safetensors"
	run -0 fx-calib "${ARGS[@]}" --seed 5 -o "$BATS_TEST_TMPDIR/c.safetensors"
	! cmp -s "$BATS_TEST_TMPDIR/a.safetensors" "$BATS_TEST_TMPDIR/c.safetensors"
}

@test "a second run is up to date; changing --steps recomputes" {
	c=$BATS_TEST_TMPDIR/calib.safetensors
	run -0 fx-calib "${ARGS[@]}" -o "$c"
	run -0 --separate-stderr fx-calib "${ARGS[@]}" -o "$c" --json
	[[ "$stderr" == *"up to date"* ]]
	[[ "$output" == *'"up_to_date":true'* ]]
	run -0 --separate-stderr fx-calib --model "$M" --cond "$C" --steps 1 --res 128x128 --samples 48 -o "$c" --json
	[[ "$output" == *'"up_to_date":false'* ]]
}

@test "conditioning whose dims do not fit the model exits 3 naming both shapes" {
	fx-synth -q -o "$BATS_TEST_TMPDIR/m2" --txt-dim 512 --cond "$BATS_TEST_TMPDIR/c2.safetensors" --prompts 2
	run -3 --separate-stderr fx-calib --model "$M" --cond "$BATS_TEST_TMPDIR/c2.safetensors" --steps 1 --res 64x64 -o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"[2,64,512]"* ]]
	[[ "$stderr" == *"4096"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/x.safetensors" ]
}

@test "a model with a missing tensor exits 3 naming it" {
	have_py_safetensors || skip "python safetensors not installed"
	python3 - "$M/diffusion_pytorch_model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
raw = open(p, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
# rename the tensor in place: same length, so offsets stay valid
s = raw[8:8 + n].replace(b'"transformer_blocks.1.attn.norm_k.weight"', b'"transformer_blocks.1.attn.norm_x.weight"')
open(p, "wb").write(raw[:8] + s + raw[8 + n:])
PY
	run -3 --separate-stderr fx-calib "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"transformer_blocks.1.attn.norm_k.weight"* ]]
}

@test "NaN weights stop the run with the tensor named (exit 3)" {
	have_py_safetensors || skip "python safetensors not installed"
	python3 - "$M/diffusion_pytorch_model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
b, e = hdr["single_transformer_blocks.0.proj_mlp.weight"]["data_offsets"]
raw[8 + n + b:8 + n + b + 2] = b"\xc0\x7f"
open(p, "wb").write(raw)
PY
	run -3 --separate-stderr fx-calib "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"single_transformer_blocks.0.proj_mlp.weight"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/x.safetensors" ]
}

@test "--device cuda without a usable GPU falls back to the CPU, says so, same bytes" {
	run -0 fx-calib "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/cpu.safetensors"
	run -0 --separate-stderr fx-calib "${ARGS[@]}" --device cuda -o "$BATS_TEST_TMPDIR/cuda.safetensors"
	[[ "$stderr" == *"using the CPU"* ]]
	cmp "$BATS_TEST_TMPDIR/cpu.safetensors" "$BATS_TEST_TMPDIR/cuda.safetensors"
	run -2 fx-calib "${ARGS[@]}" --device gpu -o "$BATS_TEST_TMPDIR/x.safetensors"
}
