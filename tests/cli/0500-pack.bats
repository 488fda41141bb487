#!/usr/bin/env bats
# fx-pack and fx-meta: every expected key, the INT4 shift correction,
# metadata, provenance checks, interrupted runs.

load helper

setup() {
	M=$BATS_TEST_TMPDIR/model
	fx-synth -q -o "$M"
}

pack() {  # pack PRECISION OUT
	fx-quant -q --model "$M" --precision "$1" -o "$BATS_TEST_TMPDIR/q-$1.safetensors"
	fx-pack -q --model "$M" --quant "$BATS_TEST_TMPDIR/q-$1.safetensors" -o "$2"
}

@test "fx-pack --help lists every option" {
	run -0 fx-pack --help
	for o in --model --quant --branch --legacy --output --force --json; do
		assert_output --partial -- "$o"
	done
}

@test "every expected key of a 2-double/2-single checkpoint is present (int4 and fp4)" {
	have_py_safetensors || skip "python safetensors not installed"
	for prec in int4 fp4; do
		p=$BATS_TEST_TMPDIR/p-$prec.safetensors
		pack $prec "$p"
		python3 - "$p" $prec <<'PY'
import sys
from safetensors import safe_open
path, prec = sys.argv[1], sys.argv[2]
with safe_open(path, "np") as f:
    keys = set(f.keys())
w4 = ["qweight", "wscales", "bias", "smooth", "smooth_orig", "lora_down", "lora_up"]
want = []
for b in range(2):
    p = f"transformer_blocks.{b}."
    for m in ["qkv_proj", "qkv_proj_context", "out_proj", "out_proj_context", "mlp_fc1",
              "mlp_fc2", "mlp_context_fc1", "mlp_context_fc2"]:
        want += [p + m + "." + t for t in w4]
        if prec == "fp4":
            want.append(p + m + (".wcscales" if m.startswith("qkv") else ".wtscale"))
    for m in ["norm1.linear", "norm1_context.linear"]:
        want += [p + m + "." + t for t in ["qweight", "wscales", "wzeros", "bias"]]
    want += [p + n for n in ["norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight"]]
for b in range(2):
    p = f"single_transformer_blocks.{b}."
    for m in ["qkv_proj", "mlp_fc1", "mlp_fc2", "out_proj"]:
        want += [p + m + "." + t for t in w4]
        if prec == "fp4":
            want.append(p + m + (".wcscales" if m == "qkv_proj" else ".wtscale"))
    want += [p + "norm.linear." + t for t in ["qweight", "wscales", "wzeros", "bias"]]
    want += [p + "norm_q.weight", p + "norm_k.weight"]
want += ["x_embedder.weight", "x_embedder.bias", "context_embedder.weight", "context_embedder.bias",
         "norm_out.linear.weight", "norm_out.linear.bias", "proj_out.weight", "proj_out.bias"]
for e in ["timestep_embedder", "guidance_embedder", "text_embedder"]:
    for l in ["linear_1", "linear_2"]:
        want += [f"time_text_embed.{e}.{l}.weight", f"time_text_embed.{e}.{l}.bias"]
missing = [k for k in want if k not in keys]
assert not missing, missing
extra = [k for k in keys if k not in want]
assert not extra, extra
assert not [k for k in keys if ".attn.to_" in k or "add_q_proj" in k], "diffusers names left in blocks"
PY
	done
}

# Packed vector layout (spec §4.4) written out independently of the packer.
UNPACK_VEC='
def unpack_vec(v):
    out = [0.0] * len(v)
    for n in range(len(v)):
        tn, r = divmod(n, 128); a, r = divmod(r, 16); b, r = divmod(r, 8); c, d = divmod(r, 2)
        out[n] = v[tn * 128 + a * 16 + c * 4 + b * 2 + d]
    return out
'

@test "INT4 *_fc2 biases carry the shift correction, NVFP4 biases do not" {
	have_py_safetensors || skip "python safetensors not installed"
	pack int4 "$BATS_TEST_TMPDIR/i.safetensors"
	pack fp4 "$BATS_TEST_TMPDIR/f.safetensors"
	python3 - "$M/diffusion_pytorch_model.safetensors" "$BATS_TEST_TMPDIR/i.safetensors" "$BATS_TEST_TMPDIR/f.safetensors" <<PY
import json, struct, sys
import numpy as np
$UNPACK_VEC
def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    def get(k):
        b, e = hdr[k]["data_offsets"]
        u = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(hdr[k]["shape"])
    return get
src, i4, f4 = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
W = src("transformer_blocks.0.ff.net.2.weight").astype(np.float64)
b = src("transformer_blocks.0.ff.net.2.bias").astype(np.float64)
want = b - 0.171875 * W.sum(axis=1)          # no branch: R = W, s = 1
got_i = np.array(unpack_vec(list(i4("transformer_blocks.0.mlp_fc2.bias"))))
got_f = np.array(unpack_vec(list(f4("transformer_blocks.0.mlp_fc2.bias"))))
assert np.allclose(got_i, want, atol=1e-2 * (1 + abs(want).max())), abs(got_i - want).max()
assert not np.allclose(got_i, b, atol=1e-3), "int4 bias lacks the correction"
assert np.array_equal(got_f.astype(np.float32), b.astype(np.float32)), "fp4 bias must be the source bias"
# fc1 biases are never corrected
bi = np.array(unpack_vec(list(i4("transformer_blocks.0.mlp_fc1.bias"))))
assert np.array_equal(bi.astype(np.float32), src("transformer_blocks.0.ff.net.0.proj.bias"))
PY
}

@test "fx-meta writes metadata that agrees with the tensors; --check catches stripped metadata" {
	p=$BATS_TEST_TMPDIR/p.safetensors
	pack fp4 "$p"
	run -1 fx-meta --check "$p"
	assert_output --partial "quantization_config"
	run -0 fx-meta --model "$M" "$p"
	run -0 fx-meta --check "$p"
	run -0 fx-verify "$p"
	if have_py_safetensors; then
		python3 - "$p" <<'PY'
import json, sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    m = f.metadata()
q = json.loads(m["quantization_config"])
assert q["weight"]["dtype"] == "fp4_e2m1_all" and q["weight"]["group_size"] == 16, q
assert q["rank"] == 0, q
c = json.loads(m["config"])
assert c["num_layers"] == 2 and c["num_single_layers"] == 2 and c["guidance_embeds"] is True, c
cc = json.loads(m["comfy_config"])
assert cc["model_class"] == "Flux" and cc["model_config"]["depth"] == 2, cc
assert m["model_class"] == "NunchakuFluxTransformer2dModel"
assert m["quantization_config"].startswith('{"method": "svdquant", "weight": {"dtype"'), m["quantization_config"]
PY
	fi
}

@test "fx-meta repairs a checkpoint written without metadata by another tool" {
	have_py_safetensors || skip "python safetensors not installed"
	p=$BATS_TEST_TMPDIR/p.safetensors
	pack int4 "$p"
	# a foreign file: same tensors, no __metadata__ at all, no spare header room
	python3 - "$p" "$BATS_TEST_TMPDIR/foreign.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n]); hdr.pop("__metadata__")
h = json.dumps(hdr, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n:])
PY
	f=$BATS_TEST_TMPDIR/foreign.safetensors
	run -1 fx-verify "$f"
	assert_output --partial "metadata 'config' missing"
	run -0 --separate-stderr fx-meta "$f"
	[[ "$stderr" == *"rewritten"* ]]
	run -0 fx-meta --check "$f"
	run -0 fx-verify "$f"
	python3 -c "
from safetensors import safe_open
import json
with safe_open('$f', 'np') as s:
    m = s.metadata(); json.loads(m['config']); json.loads(m['comfy_config'])
    assert json.loads(m['quantization_config'])['weight']['dtype'] == 'int4'
    assert len(list(s.keys())) > 200
"
}

@test "--legacy writes the two-file folder with config.json and comfy_config.json" {
	q=$BATS_TEST_TMPDIR/q.safetensors
	fx-quant -q --model "$M" --precision int4 -o "$q"
	run -0 fx-pack --model "$M" --quant "$q" -o "$BATS_TEST_TMPDIR/p.safetensors" --legacy "$BATS_TEST_TMPDIR/legacy"
	for f in transformer_blocks.safetensors unquantized_layers.safetensors config.json comfy_config.json; do
		[ -s "$BATS_TEST_TMPDIR/legacy/$f" ]
	done
	run -0 fx-verify --json "$BATS_TEST_TMPDIR/legacy/unquantized_layers.safetensors"
	run -0 fx-verify "$BATS_TEST_TMPDIR/legacy"
	assert_output --partial "30 of 30 modules complete, INT4"
	assert_output --partial "legacy two-file form"
	rm "$BATS_TEST_TMPDIR/legacy/config.json"
	run -1 fx-verify "$BATS_TEST_TMPDIR/legacy"
	assert_output --partial "no config.json"
	python3 -c "import json; json.load(open('$BATS_TEST_TMPDIR/legacy/comfy_config.json'))['model_config']"
}

@test "a quant file made from another model is refused (exit 3)" {
	fx-synth -q -o "$BATS_TEST_TMPDIR/other" --seed 7
	fx-quant -q --model "$BATS_TEST_TMPDIR/other" --precision int4 -o "$BATS_TEST_TMPDIR/q.safetensors"
	run -3 --separate-stderr fx-pack --model "$M" --quant "$BATS_TEST_TMPDIR/q.safetensors" -o "$BATS_TEST_TMPDIR/p.safetensors"
	[[ "$stderr" == *"another model"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/p.safetensors" ]
}

@test "a failing write leaves no output and no temporary file (exit 4)" {
	q=$BATS_TEST_TMPDIR/q.safetensors
	fx-quant -q --model "$M" --precision int4 -o "$q"
	FX_FAULT_IO=5 run -4 --separate-stderr fx-pack --model "$M" --quant "$q" -o "$BATS_TEST_TMPDIR/p.safetensors"
	[[ "$stderr" == *"No space left"* ]]
	[ -z "$(ls "$BATS_TEST_TMPDIR" | grep '^p\.safetensors')" ]
}
