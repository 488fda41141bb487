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
	[[ "$stderr" == *"NaN at [0,5]"* ]]
	[ -z "$(ls "$BATS_TEST_TMPDIR" | grep -E '^q\.safetensors')" ]
}

@test "an Inf or -Inf weight stops with the tensor and its [row,column] named (exit 3), no output left" {
	have_py_safetensors || skip "python safetensors not installed"
	# row 3, column 7 of a (1024, 256) weight: a transposed or flat index would read otherwise
	for v in 807f:Inf 80ff:-Inf; do
		rm -rf "$M" && fx-synth -q -o "$M"
		python3 - "$M/diffusion_pytorch_model.safetensors" "${v%%:*}" <<'PY'
import json, struct, sys
p = sys.argv[1]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
t = hdr["transformer_blocks.0.ff_context.net.0.proj.weight"]
assert t["shape"] == [1024, 256], t
pos = 8 + n + t["data_offsets"][0] + 2 * (3 * 256 + 7)
raw[pos:pos + 2] = bytes.fromhex(sys.argv[2])    # BF16 +Inf 0x7f80 / -Inf 0xff80, little-endian
open(p, "wb").write(raw)
PY
		for prec in int4 fp4; do
			run -3 --separate-stderr fx-quant --model "$M" --precision $prec -o "$BATS_TEST_TMPDIR/q.safetensors"
			[[ "$stderr" == *"tensor 'transformer_blocks.0.ff_context.net.0.proj.weight' has ${v#*:} at [3,7]"* ]]
			[ -z "$(ls "$BATS_TEST_TMPDIR" | grep -E '^q\.safetensors')" ]
		done
	done
}

# A self-consistent model of hidden size 192 (3 heads of 64): every tensor of
# the 256-wide synthetic model cut to the new widths, config to match. fx-synth
# itself only writes multiples of 128.
mk_model_192() {  # mk_model_192 SRC DST
	python3 - "$1" "$2" <<'PY'
import json, os, struct, sys
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
raw = open(os.path.join(src, "diffusion_pytorch_model.safetensors"), "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
# dimensions that are not the hidden size or a multiple of it
fixed = {"context_embedder.weight": [1], "x_embedder.weight": [1], "proj_out.weight": [0],
         "proj_out.bias": [0]}
out = {}
for k, v in hdr.items():
    if k == "__metadata__":
        continue
    b, e = v["data_offsets"]
    a = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=np.uint16).reshape(v["shape"])
    if ".norm_" in k:                                   # per-head RMSNorm: head dim 128 -> 64
        shape = [64]
    else:
        keep = fixed.get(k, [])
        if k.startswith("time_text_embed.") and k.endswith("linear_1.weight"):
            keep = [1]                                  # sinusoid (256) and pooled (768) inputs
        shape = [d if i in keep else d * 3 // 4 for i, d in enumerate(v["shape"])]
    out[k] = np.ascontiguousarray(a[tuple(slice(0, s) for s in shape)])
names = sorted(out)
meta, off = {"__metadata__": {"format": "pt"}}, 0
for k in names:
    meta[k] = {"dtype": "BF16", "shape": list(out[k].shape), "data_offsets": [off, off + out[k].nbytes]}
    off += out[k].nbytes
h = json.dumps(meta).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(os.path.join(dst, "diffusion_pytorch_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for k in names:
        f.write(out[k].tobytes())
cfg = json.load(open(os.path.join(src, "config.json")))
cfg.update(num_attention_heads=3, attention_head_dim=64, axes_dims_rope=[8, 28, 28])
json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
PY
}

@test "a model whose hidden size is not a multiple of 128 is refused naming the layer and its shape (exit 3), fx-quant and fx-pack" {
	have_py_safetensors || skip "python safetensors not installed"
	W=$BATS_TEST_TMPDIR
	mk_model_192 "$M" "$W/m192"
	# the model itself is sound: it loads, verifies and runs a forward pass
	run -0 fx-verify "$W/m192"
	assert_output --partial "hidden 192 (3 heads)"
	fx-synth -q -o "$W/m2" --cond "$W/cond.safetensors" --prompts 1 --txt-len 16
	fx-calib -q --model "$W/m192" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	# a branch per precision (fx-quant refuses one made for the other)
	for prec in int4 fp4; do
		fx-lowrank -q --model "$W/m192" --calib "$W/calib.safetensors" --rank 32 --precision $prec --alpha-grid 2 --iters 0 -o "$W/branch-$prec.safetensors"
	done
	# fused QKV of the first block: N = 3*192 = 576, K = 192
	for prec in int4 fp4; do
		for extra in "" "--branch $W/branch-$prec.safetensors"; do
			# shellcheck disable=SC2086
			run -3 --separate-stderr fx-quant --model "$W/m192" $extra --precision $prec -o "$W/q.safetensors"
			[[ "$stderr" == *"layer 'transformer_blocks.0.qkv_proj' is 576x192"* ]]
			[[ "$stderr" == *"multiples of 128"* ]]
			[ -z "$(ls "$W" | grep -E '^q\.safetensors')" ]
		done
	done
	# fx-pack: a quant file of the 256-wide model relabelled as made from this
	# one (its model id taken from the calib file)
	fx-quant -q --model "$M" --precision int4 -o "$W/q256.safetensors"
	python3 - "$W/q256.safetensors" "$W/calib.safetensors" "$W/qx.safetensors" <<'PY'
import json, struct, sys
def load(p):
    raw = open(p, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw, n, json.loads(raw[8:8 + n])
raw, n, h = load(sys.argv[1])
model = json.loads(load(sys.argv[2])[2]["__metadata__"]["fx.inputs"])["model"]
h["__metadata__"]["fx.inputs"] = json.dumps({"model": model}, separators=(",", ":"))
t = json.dumps(h, separators=(",", ":")).encode()
t += b" " * ((8 - len(t) % 8) % 8)
open(sys.argv[3], "wb").write(struct.pack("<Q", len(t)) + t + raw[8 + n:])
PY
	# (fx-pack audits its inputs as fx-verify does: the relabelled header is
	# caught before any layer is read)
	run -3 --separate-stderr fx-pack --model "$W/m192" --quant "$W/qx.safetensors" -o "$W/p.safetensors"
	[[ "$stderr" == *"'$W/qx.safetensors'"* ]]
	[[ "$stderr" == *"the header was edited"* ]]
	[ -z "$(ls "$W" | grep -E '^p\.safetensors')" ]
}

@test "a branch file made from another model is refused naming the file (exit 3), no output left" {
	W=$BATS_TEST_TMPDIR
	fx-synth -q -o "$W/other" --seed 7 --cond "$W/cond.safetensors" --prompts 1 --txt-len 16
	fx-calib -q --model "$W/other" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	fx-lowrank -q --model "$W/other" --calib "$W/calib.safetensors" --rank 32 --precision int4 --alpha-grid 2 --iters 0 -o "$W/other-branch.safetensors"
	# the same branch is accepted with the model it was made from
	run -0 fx-quant -q --model "$W/other" --branch "$W/other-branch.safetensors" --precision int4 -o "$W/ok.safetensors"
	for prec in int4 fp4; do
		run -3 --separate-stderr fx-quant --model "$M" --branch "$W/other-branch.safetensors" --precision $prec -o "$W/q.safetensors"
		[[ "$stderr" == *"'$W/other-branch.safetensors'"* ]]
		[[ "$stderr" == *"another model"* ]]
		[ -z "$(ls "$W" | grep -E '^q\.safetensors')" ]
	done
}

@test "--search --calib with a branch: a different result, recorded in the parameters, that packs and verifies" {
	W=$BATS_TEST_TMPDIR
	fx-synth -q -o "$W/m2" --cond "$W/cond.safetensors" --prompts 1 --txt-len 16
	fx-calib -q --model "$W/m2" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	fx-lowrank -q --model "$W/m2" --calib "$W/calib.safetensors" --rank 32 --precision int4 --alpha-grid 2 --iters 0 -o "$W/branch.safetensors"
	run -0 fx-quant --model "$W/m2" --branch "$W/branch.safetensors" --calib "$W/calib.safetensors" --precision int4 --search -o "$W/qs.safetensors" --json
	[[ "$output" == *'"up_to_date":false'* ]]
	fx-quant -q --model "$W/m2" --branch "$W/branch.safetensors" --precision int4 -o "$W/qn.safetensors"
	# the searched scales differ from plain RTN scales in the tensors, not only in the metadata
	python3 - "$W/qs.safetensors" "$W/qn.safetensors" <<'PY'
import json, struct, sys
def load(p):
    raw = open(p, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8:8 + n])
    m = h.pop("__metadata__")
    return {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}, m
s, ms = load(sys.argv[1])
r, mr = load(sys.argv[2])
assert sorted(s) == sorted(r)
assert json.loads(ms["fx.params"])["search"] == 1, ms["fx.params"]
assert json.loads(mr["fx.params"])["search"] == 0, mr["fx.params"]
assert "calib" in json.loads(ms["fx.inputs"]), ms["fx.inputs"]
assert "calib" not in json.loads(mr["fx.inputs"]), mr["fx.inputs"]
diff = [k for k in s if k.endswith(".scales") and s[k] != r[k]]
assert len(diff) >= 10, diff
PY
	# the packed result is whole and matches the source layers
	fx-pack -q --model "$W/m2" --quant "$W/qs.safetensors" --branch "$W/branch.safetensors" -o "$W/p.safetensors"
	fx-meta -q --model "$W/m2" "$W/p.safetensors"
	run -0 fx-verify "$W/p.safetensors" --model "$W/m2" --branch "$W/branch.safetensors" --calib "$W/calib.safetensors"
	assert_output --partial "30 of 30 modules complete, INT4, rank 32"
	# the search is part of the recipe: a rerun without it recomputes, to the RTN bytes
	run -0 --separate-stderr fx-quant --model "$W/m2" --branch "$W/branch.safetensors" --calib "$W/calib.safetensors" --precision int4 -o "$W/qs.safetensors" --json
	[[ "$output" == *'"up_to_date":false'* ]]
	[[ "$stderr" != *"up to date"* ]]
	cmp "$W/qs.safetensors" "$W/qn.safetensors"
}

@test "streamed row blocks of any size give the bytes of one whole-layer pass (RTN and branch)" {
	W=$BATS_TEST_TMPDIR
	fx-synth -q -o "$W/m2" --cond "$W/cond.safetensors" --prompts 1 --txt-len 16
	fx-calib -q --model "$W/m2" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	for prec in fp4 int4; do
		fx-lowrank -q --model "$W/m2" --calib "$W/calib.safetensors" --rank 32 --precision $prec --alpha-grid 2 --iters 0 -o "$W/branch-$prec.safetensors"
	done
	for prec in fp4 int4; do
		for extra in "" "--branch $W/branch-$prec.safetensors"; do
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
