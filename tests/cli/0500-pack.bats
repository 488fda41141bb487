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
		# dtypes and shapes (spec §2.2, §2.4), read from the header: without a
		# branch the lora tensors are present with rank 0
		python3 - "$p" $prec "$M/diffusion_pytorch_model.safetensors" <<'PY'
import json, struct, sys
path, prec, src = sys.argv[1], sys.argv[2], sys.argv[3]
def header(p):
    raw = open(p, "rb").read(8)
    n = struct.unpack("<Q", raw)[0]
    with open(p, "rb") as f:
        f.seek(8)
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in h.items()}
h, sh = header(path), header(src)
D, F = 256, 1024
w4a4 = {"qkv_proj": (3 * D, D), "qkv_proj_context": (3 * D, D), "out_proj": (D, D),
        "out_proj_context": (D, D), "mlp_fc1": (F, D), "mlp_fc2": (D, F),
        "mlp_context_fc1": (F, D), "mlp_context_fc2": (D, F)}
single = {"qkv_proj": (3 * D, D), "mlp_fc1": (F, D), "out_proj": (D, D), "mlp_fc2": (D, F)}
want = {}
def module(p, m, N, K):
    want[p + m + ".qweight"] = ("I8", (N, K // 2))
    want[p + m + ".wscales"] = ("F8_E4M3", (K // 16, N)) if prec == "fp4" else ("BF16", (K // 64, N))
    for t, shp in [("bias", (N,)), ("smooth", (K,)), ("smooth_orig", (K,)),
                   ("lora_down", (K, 0)), ("lora_up", (N, 0))]:
        want[p + m + "." + t] = ("BF16", shp)
    if prec == "fp4":
        if m.startswith("qkv"):
            want[p + m + ".wcscales"] = ("BF16", (N,))
        else:
            want[p + m + ".wtscale"] = ("BF16", (1,))
def adaln(p, m, N, K):
    want[p + m + ".qweight"] = ("I32", (N // 4, K // 2))
    want[p + m + ".wscales"] = ("BF16", (K // 64, N))
    want[p + m + ".wzeros"] = ("BF16", (K // 64, N))
    want[p + m + ".bias"] = ("BF16", (N,))
for b in range(2):
    p = f"transformer_blocks.{b}."
    for m, (N, K) in w4a4.items():
        module(p, m, N, K)
    adaln(p, "norm1.linear", 6 * D, D)
    adaln(p, "norm1_context.linear", 6 * D, D)
    for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"]:
        want[p + n + ".weight"] = ("BF16", (128,))
    p = f"single_transformer_blocks.{b}."
    for m, (N, K) in single.items():
        module(p, m, N, K)
    adaln(p, "norm.linear", 3 * D, D)
    for n in ["norm_q", "norm_k"]:
        want[p + n + ".weight"] = ("BF16", (128,))
# unquantized layers: BF16 in the source shape
for k, v in sh.items():
    if not k.startswith(("transformer_blocks.", "single_transformer_blocks.")):
        want[k] = ("BF16", v[1])
assert set(h) == set(want), (set(h) ^ set(want))
bad = {k: (h[k], want[k]) for k in want if h[k] != want[k]}
assert not bad, bad
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
D = 256
# every *_fc2: (packed module, source weight, source bias); the single block's
# mlp_fc2 is the MLP part of proj_out (columns D..5D) and carries its bias
fc2 = []
for blk in range(2):
    for m, s in [("mlp_fc2", "ff.net.2"), ("mlp_context_fc2", "ff_context.net.2")]:
        fc2.append((f"transformer_blocks.{blk}.{m}", src(f"transformer_blocks.{blk}.{s}.weight"),
                    src(f"transformer_blocks.{blk}.{s}.bias")))
    p = f"single_transformer_blocks.{blk}."
    fc2.append((p + "mlp_fc2", src(p + "proj_out.weight")[:, D:], src(p + "proj_out.bias")))
for name, W, b in fc2:
    W, b = W.astype(np.float64), b.astype(np.float64)
    want = b - 0.171875 * W.sum(axis=1)          # no branch: R = W, s = 1
    got_i = np.array(unpack_vec(list(i4(name + ".bias"))))
    got_f = np.array(unpack_vec(list(f4(name + ".bias"))))
    # one BF16 rounding of the exact value: at most half an ulp, 2^-8 relative
    assert np.all(abs(got_i - want) <= 2.0 ** -8 * abs(want) + 1e-6), (name, abs(got_i - want).max())
    assert not np.allclose(got_i, b, atol=1e-3), name + ": int4 bias lacks the correction"
    assert np.array_equal(got_f.astype(np.float32), b.astype(np.float32)), name + ": fp4 bias must be the source bias"
# fc1 biases are never corrected, nor the single block's out_proj (all zero)
bi = np.array(unpack_vec(list(i4("transformer_blocks.0.mlp_fc1.bias"))))
assert np.array_equal(bi.astype(np.float32), src("transformer_blocks.0.ff.net.0.proj.bias"))
bi = np.array(unpack_vec(list(i4("transformer_blocks.1.mlp_context_fc1.bias"))))
assert np.array_equal(bi.astype(np.float32), src("transformer_blocks.1.ff_context.net.0.proj.bias"))
assert not i4("single_transformer_blocks.0.out_proj.bias").any()
PY
}

@test "with a branch the INT4 shift correction of every *_fc2 is b - c*W*1 + c*Lu*Ld*1 (spec 2.3.3)" {
	have_py_safetensors || skip "python safetensors not installed"
	W=$BATS_TEST_TMPDIR
	fx-synth -q -o "$W/m2" --cond "$W/cond.safetensors" --prompts 1 --txt-len 16
	fx-calib -q --model "$W/m2" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	fx-lowrank -q --model "$W/m2" --calib "$W/calib.safetensors" --rank 32 --precision int4 --alpha-grid 2 --iters 0 -o "$W/branch.safetensors"
	fx-quant -q --model "$W/m2" --branch "$W/branch.safetensors" --precision int4 -o "$W/q.safetensors"
	fx-pack -q --model "$W/m2" --quant "$W/q.safetensors" --branch "$W/branch.safetensors" -o "$W/p.safetensors"
	# The expected value is the upstream (middle) form of spec 2.3.3, computed in
	# f64 from the source weight W and bias b (BF16, exact in f64) and the F32
	# branch: Ld = down/s (K, r), Lu = up (N, r). The packer stores one BF16
	# rounding of an f32: within half a BF16 ulp, 2^-8 of the value (plus 2^-24
	# from the f32 step and ~1e-12 from a different summation order: 1e-6 covers
	# both). The same check is run with the branch term dropped and with Ld not
	# divided by s: both must fail it, so the test tells those mistakes apart.
	python3 - "$W/m2/diffusion_pytorch_model.safetensors" "$W/p.safetensors" "$W/branch.safetensors" <<PY
import json, struct, sys
import numpy as np
from safetensors.numpy import load_file
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
src, pk = load(sys.argv[1]), load(sys.argv[2])
br = load_file(sys.argv[3])
c, D = 0.171875, 256
fc2 = []
for blk in range(2):
    for m, s in [("mlp_fc2", "ff.net.2"), ("mlp_context_fc2", "ff_context.net.2")]:
        fc2.append((f"transformer_blocks.{blk}.{m}", src(f"transformer_blocks.{blk}.{s}.weight"),
                    src(f"transformer_blocks.{blk}.{s}.bias")))
    p = f"single_transformer_blocks.{blk}."
    fc2.append((p + "mlp_fc2", src(p + "proj_out.weight")[:, D:], src(p + "proj_out.bias")))
def ok(got, want):
    return np.all(abs(got - want) <= 2.0 ** -8 * abs(want) + 1e-6)
for name, Wt, b in fc2:
    Wt, b = Wt.astype(np.float64), b.astype(np.float64)
    s = br[name + ".smooth"].astype(np.float64)
    down = br[name + ".down"].astype(np.float64)
    up = br[name + ".up"].astype(np.float64)
    assert down.shape == (32, Wt.shape[1]) and up.shape == (Wt.shape[0], 32)
    assert abs(s - 1).max() > 0.1, name + ": smoothing is trivial, the test would not see it"
    Ld = (down / s).T
    ones = np.ones(Wt.shape[1])
    want = b - c * (Wt @ ones) + c * (up @ (Ld.T @ ones))
    got = np.array(unpack_vec(list(pk(name + ".bias"))))
    assert ok(got, want), (name, abs(got - want).max())
    assert not ok(got, b - c * (Wt @ ones)), name + ": the branch term is too small to check"
    assert not ok(got, b - c * (Wt @ ones) + c * (up @ down.sum(axis=1))), name + ": s is not seen"
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
