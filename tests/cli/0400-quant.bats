#!/usr/bin/env bats
# fx-quant: options, fx.quant structure, caching, bad inputs.

load helper

setup() {
	M=$BATS_TEST_TMPDIR/model
	fx-synth -q -o "$M"
}

@test "fx-quant --help lists every option and exits 0" {
	run -0 fx-quant --help
	for o in --model --branch --calib --precision --search --blocks --output --force --json --threads; do
		assert_output --partial -- "$o"
	done
}

@test "fx-quant without --precision is a usage error (exit 2)" {
	run -2 --separate-stderr fx-quant --model "$M" -o "$BATS_TEST_TMPDIR/q.safetensors"
	[[ "$stderr" == *"--precision"* ]]
}

@test "fx-quant int4 writes codes and BF16 group-64 scales for every fused group" {
	q=$BATS_TEST_TMPDIR/q.safetensors
	run -0 fx-quant --model "$M" --precision int4 -o "$q"
	run -0 fx-verify --json "$q"
	echo "$output" | python3 -c '
import json, sys
d = json.load(sys.stdin)
f = d["files"][0]
assert f["format"] == "fx.quant", f
assert f["dtypes"] == {"BF16": 36, "U8": 30}, f["dtypes"]
assert f["findings"] == [], f["findings"]
'
	if have_py_safetensors; then
		python3 - "$q" <<'PY'
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    keys = set(f.keys())
    for b in range(2):
        for g in ["qkv_proj", "qkv_proj_context", "out_proj", "out_proj_context", "mlp_fc1",
                  "mlp_fc2", "mlp_context_fc1", "mlp_context_fc2"]:
            assert f"transformer_blocks.{b}.{g}.codes" in keys, (b, g)
            assert f"transformer_blocks.{b}.{g}.scales" in keys, (b, g)
        for g in ["norm1.linear", "norm1_context.linear"]:
            assert f"transformer_blocks.{b}.{g}.zeros" in keys, (b, g)
    c = f.get_tensor("transformer_blocks.0.qkv_proj_context.codes")
    assert c.shape == (768, 128), c.shape
    assert f.metadata()["fx.format"] == "fx.quant"
PY
	fi
}

@test "fx-quant fp4 writes e4m3 scales and one tensor scale per fused member" {
	q=$BATS_TEST_TMPDIR/q.safetensors
	run -0 fx-quant --model "$M" --precision fp4 -o "$q"
	run -0 fx-verify --json "$q"
	echo "$output" | python3 -c '
import json, sys
f = json.load(sys.stdin)["files"][0]
assert f["dtypes"]["F8_E4M3"] == 24, f["dtypes"]
assert f["dtypes"]["F32"] == 24, f["dtypes"]
'
	if have_py_safetensors; then
		python3 - "$q" <<'PY'
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    assert f.get_tensor("transformer_blocks.0.qkv_proj.tscale").shape == (3,)
    assert f.get_tensor("transformer_blocks.0.out_proj.tscale").shape == (1,)
    assert f.get_tensor("single_transformer_blocks.0.mlp_fc2.tscale").shape == (1,)
PY
	fi
}

@test "an unchanged rerun is up to date and leaves the file untouched" {
	q=$BATS_TEST_TMPDIR/q.safetensors
	run -0 fx-quant --model "$M" --precision int4 -o "$q"
	sum1=$(sha256sum "$q")
	run -0 --separate-stderr fx-quant --model "$M" --precision int4 -o "$q" --json
	[[ "$stderr" == *"up to date"* ]]
	[[ "$output" == *'"up_to_date":true'* ]]
	[ "$(sha256sum "$q")" = "$sum1" ]
}

@test "same inputs give byte-identical output" {
	run -0 fx-quant --model "$M" --precision fp4 -o "$BATS_TEST_TMPDIR/a.safetensors"
	run -0 fx-quant --model "$M" --precision fp4 -o "$BATS_TEST_TMPDIR/b.safetensors"
	cmp "$BATS_TEST_TMPDIR/a.safetensors" "$BATS_TEST_TMPDIR/b.safetensors"
}

@test "--blocks limits the layers" {
	q=$BATS_TEST_TMPDIR/q.safetensors
	run -0 fx-quant --model "$M" --precision int4 --blocks 2-3 -o "$q" --json
	[[ "$output" == *'single_transformer_blocks.1.mlp_fc2'* ]]
	[[ "$output" != *'"transformer_blocks.0.'* ]]
}

@test "a misshapen weight is refused naming the tensor (exit 3), no output left" {
	# to_out.0 cut to 192 columns
	have_py_safetensors || skip "python safetensors not installed"
	python3 - "$M" "$BATS_TEST_TMPDIR/odd" <<'PY'
import json, os, sys
from safetensors.numpy import load_file, save_file
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
# read raw BF16 as uint16 through the header, since numpy has no bfloat16
import struct
raw = open(os.path.join(src, "diffusion_pytorch_model.safetensors"), "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
out = {}
for k, v in hdr.items():
    if k == "__metadata__":
        continue
    b, e = v["data_offsets"]
    a = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=np.uint16).reshape(v["shape"])
    if k == "transformer_blocks.0.attn.to_out.0.weight":
        a = a[:, :192].copy()
    out[k] = a
# write back as BF16 by patching the dtype in a hand-built header
names = sorted(out)
off = 0
meta = {}
for k in names:
    sz = out[k].nbytes
    meta[k] = {"dtype": "BF16", "shape": list(out[k].shape), "data_offsets": [off, off + sz]}
    off += sz
h = json.dumps(meta).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(os.path.join(dst, "diffusion_pytorch_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for k in names:
        f.write(out[k].tobytes())
cfg = json.load(open(os.path.join(src, "config.json")))
json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
PY
	run -3 --separate-stderr fx-quant --model "$BATS_TEST_TMPDIR/odd" --precision int4 -o "$BATS_TEST_TMPDIR/q.safetensors"
	[[ "$stderr" == *"to_out.0.weight"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/q.safetensors" ]
}

@test "a NaN weight stops with the tensor and index named (exit 3), no output left" {
	have_py_safetensors || skip "python safetensors not installed"
	python3 - "$M/diffusion_pytorch_model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
b, e = hdr["transformer_blocks.1.ff.net.2.weight"]["data_offsets"]
pos = 8 + n + b + 2 * 5          # element [0,5]
raw[pos:pos + 2] = b"\xc0\x7f"    # BF16 NaN
open(p, "wb").write(raw)
PY
	run -3 --separate-stderr fx-quant --model "$M" --precision fp4 -o "$BATS_TEST_TMPDIR/q.safetensors"
	[[ "$stderr" == *"transformer_blocks.1.ff.net.2.weight"* ]]
	[[ "$stderr" == *"NaN"* || "$stderr" == *"nan"* || "$stderr" == *"non-finite"* ]]
	[ -z "$(ls "$BATS_TEST_TMPDIR" | grep -E '^q\.safetensors')" ]
}

@test "streamed row blocks of any size give the bytes of one whole-layer pass (RTN and branch)" {
	W=$BATS_TEST_TMPDIR
	fx-synth -q -o "$W/m2" --cond "$W/cond.safetensors" --prompts 1 --txt-len 16
	fx-calib -q --model "$W/m2" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	fx-lowrank -q --model "$W/m2" --calib "$W/calib.safetensors" --rank 32 --precision fp4 --alpha-grid 2 --iters 0 -o "$W/branch.safetensors"
	for prec in fp4 int4; do
		for extra in "" "--branch $W/branch.safetensors"; do
			# shellcheck disable=SC2086
			fx-quant -q --model "$W/m2" $extra --precision "$prec" -o "$W/whole.safetensors"
			for rows in 1 7 50; do
				# shellcheck disable=SC2086
				FX_QUANT_ROWS=$rows fx-quant -q --model "$W/m2" $extra --precision "$prec" -o "$W/rows.safetensors"
				cmp "$W/whole.safetensors" "$W/rows.safetensors"
				rm -f "$W/rows.safetensors"
			done
			rm -f "$W/whole.safetensors"
		done
	done
}

@test "a residual that overflows is named by layer and weight row, whatever the row blocks (exit 3)" {
	W=$BATS_TEST_TMPDIR
	fx-synth -q -o "$W/m2" --cond "$W/cond.safetensors" --prompts 1 --txt-len 16
	fx-calib -q --model "$W/m2" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	fx-lowrank -q --model "$W/m2" --calib "$W/calib.safetensors" --rank 32 --precision fp4 --alpha-grid 2 --iters 0 -o "$W/branch.safetensors"
	# up[5,:] and down[0,:] = 3e38: R[5,c] = W s - up·down overflows to -inf;
	# the CRCs are updated so that only the values are wrong
	python3 - "$W/branch.safetensors" <<'PY'
import json, struct, sys, zlib
p = sys.argv[1]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
crcs = json.loads(hdr["__metadata__"]["fx.crc32"])
def patch(name, row):
    t = hdr[name]
    b, e = t["data_offsets"]
    cols = t["shape"][1]
    for c in range(cols):
        struct.pack_into("<f", raw, 8 + n + b + 4 * (row * cols + c), 3e38)
    crcs[name] = "%08x" % (zlib.crc32(raw[8 + n + b:8 + n + e]) & 0xffffffff)
patch("transformer_blocks.0.qkv_proj.up", 5)
patch("transformer_blocks.0.qkv_proj.down", 0)
hdr["__metadata__"]["fx.crc32"] = json.dumps(crcs, sort_keys=True, separators=(",", ":"))
text = json.dumps(hdr, separators=(",", ":")).encode()
assert len(text) <= n
raw[8:8 + n] = text + b" " * (n - len(text))
open(p, "wb").write(raw)
PY
	for rows in "" 2; do
		FX_QUANT_ROWS=$rows run -3 --separate-stderr fx-quant --model "$W/m2" --branch "$W/branch.safetensors" --precision fp4 -o "$W/q.safetensors"
		[[ "$stderr" == *"layer 'transformer_blocks.0.qkv_proj': non-finite weight at [5,0]"* ]]
		[ ! -e "$W/q.safetensors" ]
	done
}
