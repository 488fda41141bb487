#!/usr/bin/env bats
# fx-calib: structure, reproducibility, caching, bad inputs.

load helper

setup() {
	M=$BATS_TEST_TMPDIR/model
	C=$BATS_TEST_TMPDIR/cond.safetensors
	fx-synth -q -o "$M" --cond "$C" --prompts 2 --txt-len 32
	ARGS=(--model "$M" --cond "$C" --steps 2 --res 128x128 --samples 48)
	# stread.load(path) -> (header, {name: float64 array}); BF16 widened
	cat >"$BATS_TEST_TMPDIR/stread.py" <<'PY'
import json, struct
import numpy as np
DT = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64}
def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        buf = raw[8 + n + b:8 + n + e]
        if v["dtype"] == "BF16":
            a = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, DT[v["dtype"]])
        out[k] = a.astype(np.float64).reshape(v["shape"])
    return hdr, out
def raw_tensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    return hdr, {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
                 for k, v in hdr.items() if k != "__metadata__"}
def bf16(a):  # f32 -> BF16 value, round to nearest even
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)
PY
}

# py SCRIPT-ARGS...: python3 on stdin with stread importable
py() {
	PYTHONPATH=$BATS_TEST_TMPDIR python3 - "$@"
}

@test "fx-calib --help lists every option" {
	run -0 fx-calib --help
	for o in --model --cond --prompts --steps --res --guidance --seed --samples --hessian --blocks --output; do
		assert_output --partial -- "$o"
	done
}

@test "every fused group of every block has absmax (K), samples (M,K) and with --hessian xtx (K,K), xsum (K) and nrows (1)" {
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
    assert hdr[g + ".xtx"]["shape"] == [k, k] and hdr[g + ".xtx"]["dtype"] == "F64", g
    assert hdr[g + ".xsum"]["shape"] == [k] and hdr[g + ".xsum"]["dtype"] == "F64", g
    assert hdr[g + ".nrows"]["shape"] == [1] and hdr[g + ".nrows"]["dtype"] == "I64", g
# image rows: 2 prompts x 2 steps x 64 tokens >= 48 -> a full reservoir
assert hdr["transformer_blocks.0.qkv_proj.samples"]["shape"][0] == 48
assert len([k for k in hdr if k != "__metadata__"]) == 5 * len(groups)
assert json.loads(hdr["__metadata__"]["fx.params"])["xtx"] == "F64"
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

@test "--gemm: only bf16 or f32; on the CPU (or a CUDA request that falls back) no effect, the recipe unchanged" {
	run -2 fx-calib "${ARGS[@]}" --gemm f16 -o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$output" == *"--gemm wants bf16 or f32"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/x.safetensors" ]
	c=$BATS_TEST_TMPDIR/c.safetensors
	run -0 fx-calib "${ARGS[@]}" -o "$c"
	for g in bf16 f32; do
		run -0 --separate-stderr fx-calib "${ARGS[@]}" --device cuda --gemm $g -o "$c"
		[[ "$stderr" == *"up to date"* ]]
		run -0 --separate-stderr fx-calib "${ARGS[@]}" --gemm $g -o "$c"
		[[ "$stderr" == *"up to date"* ]]
	done
	run -0 fx-verify --json "$c"
	[[ "$output" != *'"gemm"'* ]]
}

@test "recorded values: absmax bounds every sample, xtx is symmetric with a diagonal >= the samples' sums of squares" {
	have_py_safetensors || skip "python safetensors not installed"
	c=$BATS_TEST_TMPDIR/calib.safetensors
	run -0 fx-calib "${ARGS[@]}" --hessian -o "$c"
	py "$c" 48 <<'PY'
import sys
import numpy as np
from stread import load, bf16
hdr, t = load(sys.argv[1])
cap = int(sys.argv[2])
groups = sorted(k[:-7] for k in t if k.endswith(".absmax"))
assert len(groups) == 30, len(groups)
full = 0
for g in groups:
    a, s, x = t[g + ".absmax"], t[g + ".samples"], t[g + ".xtx"]
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(s)) and np.all(np.isfinite(x)), g
    # samples are BF16 of the rows, absmax f32 of the same rows: rounding is monotone
    mx = np.abs(s).max(axis=0)
    assert np.all(bf16(a) >= mx), (g, np.argmax(mx - bf16(a)))
    assert np.array_equal(x, x.T), g + ": xtx not symmetric"
    d = np.diag(x)
    assert np.all(d >= 0), g
    assert d.max() > 0, g
    ss = (s * s).sum(axis=0)
    # a subset of the rows (BF16, relative error <= 2^-9 each) sums to no more
    assert np.all(ss <= d * (1 + 2**-7) + 1e-37), (g, np.argmax(ss - d))
    n = t[g + ".nrows"]
    assert n.shape == (1,) and n[0] >= s.shape[0], g
    if s.shape[0] < cap:   # every row kept (adaLN: one row a forward, 2 prompts x 2 steps)
        full += 1
        assert s.shape[0] == 4 and n[0] == 4, (g, s.shape, n)
        # BF16 rows against the f64 column sums of the f32 rows
        assert np.all(np.abs(t[g + ".xsum"] - s.sum(axis=0)) <= 2**-8 * np.abs(s).sum(axis=0) + 1e-37), g
        assert np.array_equal(bf16(a), mx), g + ": absmax is not the max of the rows"
        sts = s.T @ s
        assert np.all(np.abs(x - sts) <= 2**-7 * (np.abs(s).T @ np.abs(s)) + 1e-37), g
assert full == 6, full
PY
}

@test "with --samples at least the rows a layer sees, every layer keeps them all: absmax is their maximum, xtx their X^T X" {
	have_py_safetensors || skip "python safetensors not installed"
	c=$BATS_TEST_TMPDIR/calib.safetensors
	# single blocks see (64 image + 32 text tokens) x 2 steps x 2 prompts = 384 rows
	run -0 fx-calib --model "$M" --cond "$C" --steps 2 --res 128x128 --samples 384 --hessian -o "$c"
	py "$c" <<'PY'
import sys
import numpy as np
from stread import load, bf16
hdr, t = load(sys.argv[1])
want = {"norm1.linear": 4, "norm1_context.linear": 4, "norm.linear": 4,
        "qkv_proj_context": 128, "out_proj_context": 128, "mlp_context_fc1": 128, "mlp_context_fc2": 128}
for g in sorted(k[:-7] for k in t if k.endswith(".absmax")):
    a, s, x = t[g + ".absmax"], t[g + ".samples"], t[g + ".xtx"]
    f = g.split(".", 2)[2]
    rows = 384 if g.startswith("single") and f != "norm.linear" else want.get(f, 256)
    assert s.shape[0] == rows, (g, s.shape, rows)
    assert t[g + ".nrows"][0] == rows, (g, t[g + ".nrows"])
    assert np.array_equal(bf16(a), np.abs(s).max(axis=0)), g
    assert np.all(np.abs(t[g + ".xsum"] - s.sum(axis=0)) <= 2**-8 * np.abs(s).sum(axis=0) + 1e-37), g
    # BF16 samples against f32 sums of the f32 rows; products of GELU tails underflow f32
    bad = np.abs(x - s.T @ s) > 2**-7 * (np.abs(s).T @ np.abs(s)) + 1e-37
    assert not bad.any(), (g, np.argwhere(bad)[:3])
PY
}

@test "NaN in prompt_embeds stops the run naming block, layer, step and prompt (exit 3); no output" {
	have_py_safetensors || skip "python safetensors not installed"
	d=$BATS_TEST_TMPDIR/out
	mkdir "$d"
	py "$C" "$BATS_TEST_TMPDIR/nan.safetensors" prompt_embeds 7fc0 <<'PY'
import json, struct, sys
src, dst, name, bits = sys.argv[1:5]
raw = bytearray(open(src, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
assert hdr[name]["dtype"] == "BF16"
P, L, D = hdr["prompt_embeds"]["shape"]
b, e = hdr[name]["data_offsets"]
# prompt 1, token 5, channel 10 (pooled: prompt 1, channel 10)
i = ((1 * L + 5) * D + 10) if name == "prompt_embeds" else (hdr[name]["shape"][1] + 10)
raw[8 + n + b + 2 * i:8 + n + b + 2 * i + 2] = struct.pack("<H", int(bits, 16))
open(dst, "wb").write(raw)
PY
	run -3 --separate-stderr fx-calib --model "$M" --cond "$BATS_TEST_TMPDIR/nan.safetensors" --steps 2 --res 64x64 -o "$d/x.safetensors"
	[[ "$stderr" == *"non-finite activation"* ]]
	[[ "$stderr" == *"qkv_proj_context"* ]]
	[[ "$stderr" == *"block 0"* ]]
	[[ "$stderr" == *"step 0"* ]]
	[[ "$stderr" == *"prompt 1, token 5"* ]]
	[ -z "$(ls -A "$d" | grep -v '^\.fx-hash-cache$')" ]   # no output, no temporary
	# +Inf in the pooled embedding reaches the adaLN input first
	py "$C" "$BATS_TEST_TMPDIR/inf.safetensors" pooled_prompt_embeds 7f80 <<'PY'
import json, struct, sys
src, dst, name, bits = sys.argv[1:5]
raw = bytearray(open(src, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
b, e = hdr[name]["data_offsets"]
i = hdr[name]["shape"][1] + 10
raw[8 + n + b + 2 * i:8 + n + b + 2 * i + 2] = struct.pack("<H", int(bits, 16))
open(dst, "wb").write(raw)
PY
	run --separate-stderr fx-calib --model "$M" --cond "$BATS_TEST_TMPDIR/inf.safetensors" --steps 2 --res 64x64 -o "$d/x.safetensors"
	# say what it printed when it fails (UBSan once flagged exp of NaN here)
	[ "$status" -eq 3 ] || { printf 'status %s\n%s\n' "$status" "$stderr"; false; }
	[[ "$stderr" == *"norm1.linear"* ]]
	[[ "$stderr" == *"block 0"* ]]
	[[ "$stderr" == *"step 0"* ]]
	[[ "$stderr" == *"prompt 1"* ]]
	[ -z "$(ls -A "$d" | grep -v '^\.fx-hash-cache$')" ]   # no output, no temporary
}

@test "schnell (no guidance embedder): default 4 steps, guidance recorded as 0, --guidance ignored, a valid file" {
	have_py_safetensors || skip "python safetensors not installed"
	S=$BATS_TEST_TMPDIR/schnell
	fx-synth -q -o "$S" --schnell
	py "$S/diffusion_pytorch_model.safetensors" <<'PY'
import sys
from stread import load
hdr, _ = load(sys.argv[1])
assert not [k for k in hdr if "guidance" in k], "the schnell model has a guidance embedder"
PY
	run -0 fx-calib --model "$S" --cond "$C" --res 64x64 --samples 16 -o "$BATS_TEST_TMPDIR/a.safetensors"
	run -0 fx-calib --model "$S" --cond "$C" --res 64x64 --samples 16 --guidance 7 -o "$BATS_TEST_TMPDIR/b.safetensors"
	cmp "$BATS_TEST_TMPDIR/a.safetensors" "$BATS_TEST_TMPDIR/b.safetensors"
	py "$BATS_TEST_TMPDIR/a.safetensors" <<'PY'
import json, sys
import numpy as np
from stread import load
hdr, t = load(sys.argv[1])
p = json.loads(hdr["__metadata__"]["fx.params"])
assert p["steps"] == 4 and p["guidance"] == 0, p
assert len([k for k in t if k.endswith(".samples")]) == 30
for k, v in t.items():
    assert np.all(np.isfinite(v)), k
    if k.endswith(".absmax"):
        assert v.max() > 0, k
PY
	run -0 fx-verify "$BATS_TEST_TMPDIR/a.safetensors"
	# on dev the guidance does change the statistics
	run -0 fx-calib --model "$M" --cond "$C" --steps 1 --res 64x64 --samples 16 -o "$BATS_TEST_TMPDIR/c.safetensors"
	run -0 fx-calib --model "$M" --cond "$C" --steps 1 --res 64x64 --samples 16 --guidance 7 -o "$BATS_TEST_TMPDIR/d.safetensors"
	! cmp -s "$BATS_TEST_TMPDIR/c.safetensors" "$BATS_TEST_TMPDIR/d.safetensors"
}

@test "--blocks A-B keeps only those blocks' groups, byte-identical to the same groups of a full run" {
	have_py_safetensors || skip "python safetensors not installed"
	run -0 fx-calib "${ARGS[@]}" --hessian -o "$BATS_TEST_TMPDIR/full.safetensors"
	# blocks 1-2: double block 1 and single block 0 (2 double + 2 single)
	run -0 fx-calib "${ARGS[@]}" --hessian --blocks 1-2 -o "$BATS_TEST_TMPDIR/part.safetensors"
	run -0 fx-calib "${ARGS[@]}" --hessian --blocks 3 -o "$BATS_TEST_TMPDIR/last.safetensors"
	py "$BATS_TEST_TMPDIR/full.safetensors" "$BATS_TEST_TMPDIR/part.safetensors" "$BATS_TEST_TMPDIR/last.safetensors" <<'PY'
import json, sys
from stread import raw_tensors
fh, full = raw_tensors(sys.argv[1])
for path, prefixes in [(sys.argv[2], ("transformer_blocks.1.", "single_transformer_blocks.0.")),
                       (sys.argv[3], ("single_transformer_blocks.1.",))]:
    h, part = raw_tensors(path)
    want = sorted(k for k in full if k.startswith(prefixes))
    assert sorted(part) == want, (path, sorted(set(part) ^ set(want))[:3])
    for k in want:
        assert part[k] == full[k], (path, k)
    crc, fcrc = json.loads(h["__metadata__"]["fx.crc32"]), json.loads(fh["__metadata__"]["fx.crc32"])
    assert sorted(crc) == want and all(crc[k] == fcrc[k] for k in want), path
assert len(raw_tensors(sys.argv[2])[1]) == 5 * (10 + 5)
assert len(raw_tensors(sys.argv[3])[1]) == 5 * 5
PY
	run -2 --separate-stderr fx-calib "${ARGS[@]}" --blocks 4 -o "$BATS_TEST_TMPDIR/x.safetensors"
	[ ! -e "$BATS_TEST_TMPDIR/x.safetensors" ]
}

@test "--prompts beyond the conditioning file is a usage error (exit 2); a missing conditioning tensor exits 3 naming it" {
	run -2 --separate-stderr fx-calib "${ARGS[@]}" --prompts 3 -o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"--prompts 3"* ]]
	[[ "$stderr" == *"holds 2"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/x.safetensors" ]
	run -0 fx-calib "${ARGS[@]}" --prompts 2 -o "$BATS_TEST_TMPDIR/x.safetensors"
	rm "$BATS_TEST_TMPDIR/x.safetensors"
	have_py_safetensors || skip "python safetensors not installed"
	for t in pooled_prompt_embeds prompt_embeds; do
		# rename the tensor in place (same length, offsets stay valid)
		py "$C" "$BATS_TEST_TMPDIR/c-$t.safetensors" "$t" <<'PY'
import sys
src, dst, name = sys.argv[1:4]
raw = open(src, "rb").read()
new = name[:-1] + "X"
assert raw.count(b'"%s"' % name.encode()) == 1
open(dst, "wb").write(raw.replace(b'"%s"' % name.encode(), b'"%s"' % new.encode(), 1))
PY
		run -3 --separate-stderr fx-calib --model "$M" --cond "$BATS_TEST_TMPDIR/c-$t.safetensors" --steps 1 --res 64x64 -o "$BATS_TEST_TMPDIR/x.safetensors"
		[[ "$stderr" == *"'$t' missing"* ]]
		[ ! -e "$BATS_TEST_TMPDIR/x.safetensors" ]
	done
}

@test "--hessian statistics that cannot fit in memory are refused before sampling (exit 4), naming --hessian-mem and --blocks" {
	o=$BATS_TEST_TMPDIR/h.safetensors
	FX_MEM_BYTES=20000000 run -4 --separate-stderr fx-calib "${ARGS[@]}" --hessian -o "$o"
	[[ "$stderr" == *"more than 80% of this machine's"* ]]
	[[ "$stderr" == *"--hessian-mem"* ]]
	[[ "$stderr" == *"--blocks"* ]]
	[ ! -e "$o" ]
	[ -z "$(ls "$BATS_TEST_TMPDIR" | grep '\.tmp')" ]
	# the same limit: without XᵀX, or one single block with it, fits
	FX_MEM_BYTES=20000000 run -0 fx-calib "${ARGS[@]}" -o "$o"
	FX_MEM_BYTES=20000000 run -0 fx-calib "${ARGS[@]}" --hessian --blocks 3 -o "$BATS_TEST_TMPDIR/b3.safetensors"
	# and so do all blocks in passes of 12 MiB (one *_fc2 each)
	FX_MEM_BYTES=20000000 run -0 fx-calib "${ARGS[@]}" --hessian --hessian-mem 12M -o "$BATS_TEST_TMPDIR/p.safetensors"
}

@test "--hessian-mem splits the layers into sampling passes (3 or more here) that write the bytes of one pass" {
	d=$BATS_TEST_TMPDIR
	run -0 --separate-stderr fx-calib -v "${ARGS[@]}" --hessian -o "$d/one.safetensors"
	[[ "$stderr" != *"pass 1/"* ]]
	# an fc2 (K=1024) needs 8.1 MiB: 12 MiB holds one of them and some K=256 layers
	run -0 --separate-stderr fx-calib -v "${ARGS[@]}" --hessian --hessian-mem 12M -o "$d/passes.safetensors"
	n=$(grep -c ': pass [0-9]*/[0-9]*: ' <<<"$stderr")
	echo "# $n passes" >&3
	((n >= 3))
	grep -q ": pass $n/$n: " <<<"$stderr"
	! grep -q ": pass $((n + 1))/" <<<"$stderr"
	cmp "$d/one.safetensors" "$d/passes.safetensors"
	# the budget is not part of the recipe: another one is up to date
	run -0 --separate-stderr fx-calib --json "${ARGS[@]}" --hessian --hessian-mem 9M -o "$d/passes.safetensors"
	[ "$(json_get - 'd["up_to_date"]' <<<"$output")" = True ]
	# a block range in passes is that range of the whole run (sizes: powers of 1024)
	run -0 fx-calib "${ARGS[@]}" --hessian --blocks 1-2 -o "$d/b12.safetensors"
	run -0 --separate-stderr fx-calib -v "${ARGS[@]}" --hessian --blocks 1-2 --hessian-mem 9437184 -o "$d/b12p.safetensors"
	(($(grep -c ': pass [0-9]*/[0-9]*: ' <<<"$stderr") >= 3))
	cmp "$d/b12.safetensors" "$d/b12p.safetensors"
	run -0 fx-calib "${ARGS[@]}" --hessian --blocks 1-2 --hessian-mem 9216KiB -o "$d/b12p.safetensors"
	cmp "$d/b12.safetensors" "$d/b12p.safetensors"
}

@test "a layer larger than --hessian-mem is a usage error naming it and its size (exit 2), before sampling; bad sizes are refused" {
	o=$BATS_TEST_TMPDIR/x.safetensors
	run -2 --separate-stderr fx-calib "${ARGS[@]}" --hessian --hessian-mem 8M -o "$o"
	[[ "$stderr" == *"--hessian-mem 8.0 MiB is less than layer 'transformer_blocks.0.mlp_fc2' needs: 8.1 MiB"* ]]
	[ ! -e "$o" ]
	[ -z "$(ls "$BATS_TEST_TMPDIR" | grep '\.tmp')" ]
	# 9 MiB holds any one layer
	run -0 fx-calib "${ARGS[@]}" --hessian --blocks 3 --hessian-mem 9M -o "$o"
	for bad in 0 -1 12X 1.5G G 4GB 99999999999999999999 ""; do
		run -2 --separate-stderr fx-calib "${ARGS[@]}" --hessian --hessian-mem "$bad" -o "$BATS_TEST_TMPDIR/y.safetensors"
		[[ "$stderr" == *"--hessian-mem wants a size such as 4G"* ]] || { echo "$bad: $stderr"; return 1; }
	done
	[ ! -e "$BATS_TEST_TMPDIR/y.safetensors" ]
}

@test "peak memory with --hessian-mem stays below the budget plus a layer (and the writer's 32 MiB); one pass takes all" {
	if ldd "$(command -v fx-calib)" | grep -q libasan; then
		skip "sanitizer build: ASan's quarantine and shadow memory are in the peak RSS"
	fi
	d=$BATS_TEST_TMPDIR
	# hidden 512: the fc2 layers (K=2048) hold 32 MiB of XᵀX each, 240 MiB in all
	fx-synth -q -o "$d/wide" --hidden 512 --cond "$d/wide-cond.safetensors" --prompts 1 --txt-len 16
	W=(--model "$d/wide" --cond "$d/wide-cond.safetensors" --steps 1 --res 64x64 --samples 32 --threads 1)
	cat >"$d/peak.py" <<'PY'
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024 if r.returncode == 0 else -1)
PY
	base=$(python3 "$d/peak.py" fx-calib -q "${W[@]}" -o "$d/w0.safetensors")
	budget=$(python3 "$d/peak.py" fx-calib -q "${W[@]}" --hessian --hessian-mem 48M -o "$d/w1.safetensors")
	one=$(python3 "$d/peak.py" fx-calib -q "${W[@]}" --hessian -o "$d/w2.safetensors")
	# the largest layer: 2048^2 f64 + Σx + 32 samples + absmax
	layer=$(( (2048 * 2048 * 8 + 2048 * 12 + 32 * 2048 * 2) / 1048576 + 1 ))
	echo "# peak RSS MiB: without XᵀX $base, --hessian-mem 48M $budget, one pass $one (a layer $layer)" >&3
	((base > 0 && budget > 0 && one > 0))
	((budget - base <= 48 + layer + 32))
	((one - base > 48 + layer + 32))
	cmp "$d/w1.safetensors" "$d/w2.safetensors"
}

# fxref.py: the sampler and the row sampling as fx-calib(1) spells them
# out, in plain Python (no numpy), to check the page against the tool.
write_fxref() {
	cat >"$BATS_TEST_TMPDIR/fxref.py" <<'PY'
import array, json, math, struct
M64 = (1 << 64) - 1
class Tensors(dict):  # name -> (shape, [float]), BF16/F32 decoded when first read
    def __init__(self, raw, base, hdr):
        super().__init__()
        self.raw, self.base, self.hdr = raw, base, hdr
    def __missing__(self, k):
        v = self.hdr[k]
        b, e = v["data_offsets"]
        buf = self.raw[self.base + b:self.base + e]
        if v["dtype"] == "BF16":   # the high half of an f32
            w = bytearray(2 * len(buf))
            w[2::4], w[3::4] = buf[0::2], buf[1::2]
            buf = bytes(w)
        assert v["dtype"] in ("BF16", "F32"), k
        self[k] = (v["shape"], list(array.array("f", buf)))
        return self[k]
    def names(self):
        return [k for k in self.hdr if k != "__metadata__"]
def load(path):  # (metadata, Tensors)
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    return hdr.get("__metadata__", {}), Tensors(raw, 8 + n, hdr)
def rows(t):
    (m, k), a = t
    return [a[i * k:(i + 1) * k] for i in range(m)]
def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]
def bf16(x):  # f32 -> nearest BF16, ties to even
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    u = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) << 16
    return struct.unpack("<f", struct.pack("<I", u & 0xffffffff))[0]
def sigmas(n, ni, dynamic):  # Sampling 1-2 (without the final 0)
    m = (1.15 - 0.5) / (4096.0 - 256.0)
    e = f32(math.exp(ni * m + (0.5 - 256.0 * m)))
    step = (1.0 / n - 1.0) / (n - 1) if n > 1 else 0.0
    u = [f32(1.0 / n) if i == n - 1 else f32(i * step + 1.0) for i in range(n)]
    return [f32(e / f32(e + f32(f32(1.0 / x) - 1.0))) if dynamic else x for x in u]
def timestep(s):  # Sampling 3
    return bf16(f32(bf16(f32(bf16(f32(s * 1000.0)) / 1000.0)) * 1000.0))
def guidance(g):  # Sampling 4
    return bf16(f32(bf16(f32(g)) * 1000.0))
class SplitMix:  # Noise
    def __init__(self, seed):
        self.s = seed & M64
    def u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)
    def uniform(self):
        return ((self.u64() >> 11) + 0.5) * 2.0 ** -53
def noise(seed, in_channels, width, height):  # packed (Ni, in_channels), flattened
    g, c, h, w = SplitMix(seed), in_channels // 4, height // 8, width // 8
    vals = []
    while len(vals) < c * h * w:
        u1, u2 = g.uniform(), g.uniform()
        r, a = math.sqrt(-2.0 * math.log(u1)), 2.0 * math.pi * u2
        vals += [f32(r * math.cos(a)), f32(r * math.sin(a))]
    out, k = [0.0] * (c * h * w), 0
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                out[((y // 2) * (w // 2) + x // 2) * 4 * c + ch * 4 + (y % 2) * 2 + x % 2] = vals[k]
                k += 1
    return out
def E(t, d):  # Forward: the sinusoid
    k, c = d // 2, f32(-math.log(10000.0))
    a = [f32(t * f32(math.exp(f32(f32(c * i) / k)))) for i in range(k)]
    return [math.cos(x) for x in a] + [math.sin(x) for x in a]
def linear(T, name, x):
    (n, k), w = T[name + ".weight"]
    b = T[name + ".bias"][1]
    return [sum(w[r * k + j] * x[j] for j in range(k)) + b[r] for r in range(n)]
def silu(v):
    return [x / (1.0 + math.exp(-x)) for x in v]
_mlp = {}
def mlp(T, name, u):  # cached: the text and guidance parts repeat every step
    key = (id(T), name, tuple(u))
    if key not in _mlp:
        _mlp[key] = linear(T, name + ".linear_2", silu(linear(T, name + ".linear_1", u)))
    return _mlp[key]
def adaln_input(T, pooled, t, g):  # SiLU(temb)
    P = "time_text_embed."
    d = T[P + "timestep_embedder.linear_1.weight"][0][1]
    parts = [mlp(T, P + "timestep_embedder", E(t, d)), mlp(T, P + "text_embedder", pooled)]
    if g is not None:
        parts.append(mlp(T, P + "guidance_embedder", E(g, d)))
    return silu([sum(v) for v in zip(*parts)])
def modulated_ln(x, shift, scale):
    n = len(x)
    mu = sum(x) / n
    r = 1.0 / math.sqrt(sum((v - mu) ** 2 for v in x) / n + 1e-6)
    return [(v - mu) * r * (1.0 + sc) + sh for v, sh, sc in zip(x, shift, scale)]
def close(row, ref):  # a BF16 sample against the f64 reference: 1.5 BF16 steps
    return all(abs(a - b) <= 1.5 * 2.0 ** -8 * max(abs(b), 1e-3) for a, b in zip(row, ref))
def fnv_calib(name):  # Statistics: FNV-1a with fx-calib's starting value
    h = 1469598103934665603
    for c in name.encode():
        h = ((h ^ c) * 1099511628211) & M64
    return h
PY
}

@test "--seed takes 0 to 2^64-1: 2^31 and 2^64-1 give different outputs, recorded faithfully; 2^64, -1 and junk are refused naming the range" {
	x=$BATS_TEST_TMPDIR/x.safetensors
	for s in 18446744073709551616 99999999999999999999 -1 +1 ' 1' 1e3 0x10 ''; do
		run -2 --separate-stderr fx-calib "${ARGS[@]}" --seed "$s" -o "$x"
		[[ "$stderr" == *"--seed wants an integer from 0 to 18446744073709551615 (2^64-1), not '$s'"* ]]
	done
	[ ! -e "$x" ]
	a=$BATS_TEST_TMPDIR/a.safetensors b=$BATS_TEST_TMPDIR/b.safetensors
	run -0 fx-calib "${ARGS[@]}" --seed 2147483648 -o "$a"
	run -0 fx-calib "${ARGS[@]}" --seed 18446744073709551615 -o "$b"
	! cmp -s "$a" "$b"
	# seeds from 2^63 on are recorded as seed - 2^64 (fx-calib(1), FILES)
	python3 - "$a" "$b" <<'PY'
import json, struct, sys
def meta(p):
    raw = open(p, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n])["__metadata__"]
assert json.loads(meta(sys.argv[1])["fx.params"])["seed"] == 2147483648
assert json.loads(meta(sys.argv[2])["fx.params"])["seed"] == -1
assert meta(sys.argv[1])["fx.layers"] != meta(sys.argv[2])["fx.layers"]
PY
	run -0 fx-verify "$b"
	run -0 --separate-stderr fx-calib "${ARGS[@]}" --seed 18446744073709551615 -o "$b"
	[[ "$stderr" == *"up to date"* ]]
	run -0 --separate-stderr fx-calib "${ARGS[@]}" --seed 9223372036854775807 -o "$b"
	[[ "$stderr" != *"up to date"* ]]
}

@test "a small seed is recorded as before the 64-bit seeds, so earlier outputs keep their recipe" {
	c=$BATS_TEST_TMPDIR/c.safetensors
	run -0 fx-calib "${ARGS[@]}" --seed 7 -o "$c"
	python3 - "$c" <<'PY'
import hashlib, json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
md = json.loads(raw[8:8 + n])["__metadata__"]
# the exact bytes fx-calib wrote for --seed 7 before seeds became 64-bit
params = '{"blocks":"0-3","guidance":3.5,"hessian":0,"prompts":2,"res":"128x128","samples":48,"seed":7,"steps":2}'
assert md["fx.params"] == params, md["fx.params"]
# fx-formats(5): the recipe hashes {format, inputs, params, version}, keys sorted, compact
canon = '{"format":"fx.calib","inputs":%s,"params":%s,"version":%s}' % (md["fx.inputs"], params, md["fx.version"])
assert hashlib.sha256(canon.encode()).hexdigest() == md["fx.recipe"]
PY
}

@test "fx-synth and fx-eval parse --seed as fx-calib does (one parser, one message)" {
	for t in fx-synth fx-eval; do
		for s in 18446744073709551616 -1; do
			run -2 --separate-stderr "$t" --seed "$s" -o "$BATS_TEST_TMPDIR/x"
			[[ "$stderr" == *"$t: error: --seed wants an integer from 0 to 18446744073709551615 (2^64-1), not '$s'"* ]]
		done
	done
	run -0 fx-synth -q --seed 18446744073709551615 -o "$BATS_TEST_TMPDIR/m1"
	run -0 fx-synth -q --seed 9223372036854775808 -o "$BATS_TEST_TMPDIR/m2"
	! cmp -s "$BATS_TEST_TMPDIR/m1/diffusion_pytorch_model.safetensors" "$BATS_TEST_TMPDIR/m2/diffusion_pytorch_model.safetensors"
	# a valid seed gets past option parsing to the next complaint
	run -2 --separate-stderr fx-eval --seed 18446744073709551615
	[[ "$stderr" == *"error: --model and --cond are required"* ]]
}

@test "sampling follows fx-calib(1): sigma schedule, BF16 timestep and guidance, noise of in_channels/4 channels, seed N+p mod 2^64" {
	write_fxref
	# 16x16 is one image token; 12 steps reach sigma_11, whose timestep is
	# 126 only through the middle BF16 rounding (bf16(1000 sigma) is 125.5);
	# in_channels 128: 32 latent channels
	m=$BATS_TEST_TMPDIR/m128
	fx-synth -q --in-channels 128 -o "$m"
	c=$BATS_TEST_TMPDIR/c.safetensors
	run -0 fx-calib --model "$m" --cond "$C" --steps 12 --res 16x16 --guidance 4.25 --samples 64 \
		--seed 18446744073709551615 -o "$c"
	py "$m/diffusion_pytorch_model.safetensors" "$C" "$c" <<'PY'
import sys
from fxref import *
_, T = load(sys.argv[1])
_, C = load(sys.argv[2])
_, S = load(sys.argv[3])
sig = sigmas(12, 1, True)
ts = [timestep(s) for s in sig]
assert ts[11] == 126.0 and bf16(f32(sig[11] * 1000.0)) == 125.5, ts
assert guidance(4.25) == 4256.0 and guidance(3.5) == 3504.0
D = T["x_embedder.weight"][0][0]
ada = rows(S["transformer_blocks.0.norm1.linear.samples"])
qkv = rows(S["transformer_blocks.0.qkv_proj.samples"])
assert len(ada) == 24 and len(qkv) == 24   # 2 prompts x 12 steps, one row each
pooled = C["pooled_prompt_embeds"][1]
for p, seed in [(0, 2**64 - 1), (1, 0)]:   # prompt 1's seed wraps to 0
    pp = pooled[p * 768:(p + 1) * 768]
    for i in range(12):
        assert close(ada[12 * p + i], adaln_input(T, pp, ts[i], guidance(4.25))), (p, i)
    # the rounding is what makes it match
    assert not close(ada[12 * p + 11], adaln_input(T, pp, bf16(f32(sig[11] * 1000.0)), guidance(4.25)))
    assert not close(ada[12 * p], adaln_input(T, pp, ts[0], 4250.0))
    # step 0 of block 0's qkv_proj: the modulated LayerNorm of x_embedder(noise)
    mod = linear(T, "transformer_blocks.0.norm1.linear", adaln_input(T, pp, ts[0], guidance(4.25)))
    def qkv_in(z):
        return modulated_ln(linear(T, "x_embedder", z), mod[0:D], mod[D:2 * D])
    assert close(qkv[12 * p], qkv_in(noise(seed, 128, 16, 16))), p
    assert not close(qkv[12 * p], qkv_in(noise(seed + 1, 128, 16, 16))), p
    assert not close(qkv[12 * p], qkv_in(noise(seed, 64, 16, 16) + [0.0] * 64)), p   # not 16 channels
PY
	# schnell: no shift (sigma 1, 2/3, 1/3), no guidance
	s=$BATS_TEST_TMPDIR/schnell
	fx-synth -q --schnell -o "$s"
	run -0 fx-calib --model "$s" --cond "$C" --prompts 1 --steps 3 --res 16x16 --samples 8 -o "$BATS_TEST_TMPDIR/s.safetensors"
	py "$s/diffusion_pytorch_model.safetensors" "$C" "$BATS_TEST_TMPDIR/s.safetensors" <<'PY'
import sys
from fxref import *
_, T = load(sys.argv[1])
_, C = load(sys.argv[2])
_, S = load(sys.argv[3])
ts = [timestep(s) for s in sigmas(3, 1, False)]
assert ts == [1000.0, 668.0, 334.0], ts
ada = rows(S["single_transformer_blocks.1.norm.linear.samples"])
assert len(ada) == 3
for i in range(3):
    assert close(ada[i], adaln_input(T, C["pooled_prompt_embeds"][1][:768], ts[i], None)), i
PY
}

@test "the row sample follows fx-calib(1): reservoir with a generator per layer from N XOR the name's hash" {
	write_fxref
	A=(--model "$M" --cond "$C" --steps 3 --res 32x32 --seed 18446744073709551615)
	run -0 fx-calib "${A[@]}" --samples 100000 -o "$BATS_TEST_TMPDIR/all.safetensors"
	run -0 fx-calib "${A[@]}" --samples 5 -o "$BATS_TEST_TMPDIR/few.safetensors"
	py "$BATS_TEST_TMPDIR/all.safetensors" "$BATS_TEST_TMPDIR/few.safetensors" 5 <<'PY'
import sys
from fxref import *
_, every = load(sys.argv[1])
_, few = load(sys.argv[2])
cap, n = int(sys.argv[3]), 0
for k in every.names():
    if not k.endswith(".samples"):
        continue
    t = every[k]
    g = SplitMix((2**64 - 1) ^ fnv_calib(k[:-len(".samples")]))
    kept = []
    for r, row in enumerate(rows(t)):   # every row, in order
        if len(kept) < cap:
            kept.append(row)
        else:
            j = g.u64() % (r + 1)
            if j < cap:
                kept[j] = row
    assert rows(few[k]) == kept, k
    n += 1
assert n == 30, n
PY
}
