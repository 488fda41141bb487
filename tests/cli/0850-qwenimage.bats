#!/usr/bin/env bats
# Qwen-Image end to end: a synthetic Qwen-Image (and the diffusers-made tiny
# one) through pipelines/qwenimage-svdq.mk for fp4 and int4, rank 32 and
# 128: the file has exactly the tensors, shapes and dtypes of the runtime's
# module classes (nunchaku-qwenimage-zimage-format.md §1.3-1.4, §2.5), its
# metadata, fx-verify's numerics pass against the source, SVDQuant beats RTN
# on every layer, reruns are up to date.

load helper

setup() {
	export PYTHONPATH=$BATS_TEST_DIRNAME${PYTHONPATH:+:$PYTHONPATH}   # stconv
	MK=$BATS_TEST_DIRNAME/../../pipelines
	FIX=$BATS_TEST_DIRNAME/../fixtures
	M=$BATS_TEST_TMPDIR/qwen
	C=$BATS_TEST_TMPDIR/cond.safetensors
	O=$BATS_TEST_TMPDIR/out
	FX=$(dirname "$(command -v fx-calib)")
	fx-synth -q --family qwenimage --blocks 2 --hidden 256 --txt-dim 128 -o "$M" --cond "$C" \
		--prompts 2 --txt-len 16
	VARS=(MODEL="$M" COND="$C" OUT="$O" FX="$FX" PROMPTS=2 STEPS=2 RES=64x64 SAMPLES=64 GRID=3)
}

pipeline() {
	make -s -f "$MK/qwenimage-svdq.mk" "${VARS[@]}" "$@" > "$BATS_TEST_TMPDIR/make.log" 2>&1 || {
		cat "$BATS_TEST_TMPDIR/make.log"; return 1; }
}

# check_file FILE PRECISION RANK BLOCKS HIDDEN TXT: every key, shape, dtype
check_file() {
	python3 - "$@" <<'PY'
import json, struct, sys
path, prec, r, nb, D, T = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
meta = h.pop("__metadata__")
want = {}
def lin(name, n, k):
    want[name + ".weight"] = ("BF16", [n, k]); want[name + ".bias"] = ("BF16", [n])
lin("img_in", D, 64); want["txt_norm.weight"] = ("BF16", [T]); lin("txt_in", D, T)
lin("time_text_embed.timestep_embedder.linear_1", D, 256)
lin("time_text_embed.timestep_embedder.linear_2", D, D)
lin("norm_out.linear", 2 * D, D); lin("proj_out", 64, D)
w4a4 = {"attn.to_qkv": (3 * D, D), "attn.add_qkv_proj": (3 * D, D), "attn.to_out.0": (D, D),
        "attn.to_add_out": (D, D), "img_mlp.net.0.proj": (4 * D, D), "img_mlp.net.2": (D, 4 * D),
        "txt_mlp.net.0.proj": (4 * D, D), "txt_mlp.net.2": (D, 4 * D)}
for b in range(nb):
    p = "transformer_blocks.%d." % b
    for m, (N, K) in w4a4.items():
        q = p + m + "."
        want[q + "qweight"] = ("I8", [N, K // 2])
        want[q + "wscales"] = ("F8_E4M3", [K // 16, N]) if prec == "fp4" else ("BF16", [K // 64, N])
        want[q + "bias"] = ("BF16", [N])
        for s in ("smooth_factor", "smooth_factor_orig"):
            want[q + s] = ("BF16", [K])
        want[q + "proj_down"] = ("BF16", [K, r]); want[q + "proj_up"] = ("BF16", [N, r])
        if prec == "fp4":
            if m in ("attn.to_qkv", "attn.add_qkv_proj"):
                want[q + "wcscales"] = ("BF16", [N])
            else:
                want[q + "wtscale"] = ("BF16", [1])
    for m in ("img_mod.1", "txt_mod.1"):
        q = p + m + "."
        want[q + "qweight"] = ("I32", [6 * D // 4, D // 2])
        want[q + "wscales"] = ("BF16", [D // 64, 6 * D]); want[q + "wzeros"] = ("BF16", [D // 64, 6 * D])
        want[q + "bias"] = ("BF16", [6 * D])
    for nm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
        want[p + "attn." + nm + ".weight"] = ("BF16", [128])
got = {k: (v["dtype"], v["shape"]) for k, v in h.items()}
bad = [k for k in want if got.get(k) != want[k]] + [k for k in got if k not in want]
for k in bad[:20]:
    print("key", k, "file", got.get(k), "want", want.get(k))
assert not bad, "%d keys differ" % len(bad)
assert meta["model_class"] == "NunchakuQwenImageTransformer2DModel", meta.get("model_class")
cfg = json.loads(meta["config"])
assert cfg["_class_name"] == "QwenImageTransformer2DModel" and cfg["num_layers"] == nb, cfg
qc = json.loads(meta["quantization_config"])
assert qc["rank"] == r, qc
wd = {"fp4": ("fp4_e2m1_all", 16), "int4": ("int4", 64)}[prec]
assert (qc["weight"]["dtype"], qc["weight"]["group_size"]) == wd, qc
assert "comfy_config" not in meta
print("%d tensors as the runtime's modules declare them" % len(got))
PY
}

# every W4A4 layer: SVDQuant's emulated output error below plain RTN's
# (fx.branch stats: [alpha, beta, err_rtn, err_final, ...])
svdq_beats_rtn() {
	python3 - "$1" <<'PY'
import sys, numpy as np, stconv
t, _ = stconv.load(sys.argv[1])
st = {k[:-6]: np.frombuffer(v[2], "<f4") for k, v in t.items() if k.endswith(".stats")}
assert len(st) == 16, sorted(st)
for k, v in sorted(st.items()):
    assert v[3] < v[2], (k, v[2], v[3])
print("min gain %.1f dB" % min(10 * __import__("math").log10(v[2] / v[3]) for v in st.values()))
PY
}

@test "a Qwen-Image loads in every form: diffusers folder, pipeline folder, ComfyUI single file" {
	run fx-verify "$M"
	assert_success
	# the pipeline folder (transformer/ inside) and a model.diffusion_model. file
	mkdir -p "$BATS_TEST_TMPDIR/pipe"
	cp -r "$M" "$BATS_TEST_TMPDIR/pipe/transformer"
	python3 - "$M/diffusion_pytorch_model.safetensors" "$BATS_TEST_TMPDIR/comfy.safetensors" <<'PY'
import sys, stconv
t, meta = stconv.load(sys.argv[1])
stconv.save(sys.argv[2], {"model.diffusion_model." + k: v for k, v in t.items()}, meta)
PY
	for form in "$M" "$BATS_TEST_TMPDIR/pipe" "$BATS_TEST_TMPDIR/comfy.safetensors"; do
		fx-calib -q --model "$form" --cond "$C" --prompts 1 --steps 2 --res 64x64 --samples 32 \
			-o "$BATS_TEST_TMPDIR/c.safetensors" --force
		python3 -c 'import sys, hashlib, stconv; t, m = stconv.load(sys.argv[1]); print(sorted((k, hashlib.sha256(v[2]).hexdigest()) for k, v in t.items()))' \
			"$BATS_TEST_TMPDIR/c.safetensors" > "$BATS_TEST_TMPDIR/form-$(basename "$form").txt"
	done
	cmp "$BATS_TEST_TMPDIR/form-qwen.txt" "$BATS_TEST_TMPDIR/form-pipe.txt"
	cmp "$BATS_TEST_TMPDIR/form-qwen.txt" "$BATS_TEST_TMPDIR/form-comfy.safetensors.txt"
	# the diffusers-made model of the forward's fixture is a Qwen-Image too
	run fx-verify "$FIX/qwenimage-tiny"
	assert_success
	# a FLUX tensor in a Qwen-Image is named
	python3 - "$M/diffusion_pytorch_model.safetensors" "$BATS_TEST_TMPDIR/odd.safetensors" <<'PY'
import sys, stconv
t, meta = stconv.load(sys.argv[1])
t["single_transformer_blocks.0.proj_mlp.weight"] = t["img_in.weight"]
stconv.save(sys.argv[2], t, meta)
PY
	run fx-calib --model "$BATS_TEST_TMPDIR/odd.safetensors" --cond "$C" -o "$BATS_TEST_TMPDIR/x.safetensors"
	assert_failure 3
	assert_output --partial "single_transformer_blocks.0.proj_mlp.weight"
	assert_output --partial "Qwen-Image"
}

@test "fp4 and int4, rank 32 and 128: the runtime's tensors, metadata, numerics, SVDQuant ahead of RTN" {
	for prec in fp4 int4; do
		for r in 32 128; do
			pipeline PRECISION=$prec RANK=$r
			F=$O/svdq-${prec}_r$r-qwen.safetensors
			check_file "$F" "$prec" "$r" 2 256 128
			svdq_beats_rtn "$O/branch-r$r-$prec.safetensors"
			# every module unpacked and compared with its source layer
			run fx-verify --model "$M" "$F"
			assert_success
		done
	done
	# fx-eval samples with the emulated runtime modules of each checkpoint
	make -s -f "$MK/flux-rtn.mk" MODEL="$M" OUT="$O" FX="$FX" PRECISION=int4 > /dev/null
	run fx-eval --model "$M" --cond "$C" --prompts 1 --steps 2 --res 64x64 \
		"$O/svdq-int4_r32-qwen.safetensors" "$O/rtn-int4-qwen.safetensors"
	assert_success
	assert_output --partial "worst layers (output SNR dB): "
	[ "$(grep -c 'PSNR after each step' <<<"$output")" -eq 2 ]
	# a second run does nothing
	pipeline PRECISION=int4 RANK=32
	grep -c 'up to date' "$BATS_TEST_TMPDIR/make.log"
	[ "$(grep -c 'up to date' "$BATS_TEST_TMPDIR/make.log")" -ge 4 ]
}

@test "Qwen-Image calibration records both passes of true CFG; without a negative prompt it runs one" {
	fx-calib -q --model "$M" --cond "$C" --prompts 1 --steps 2 --res 64x64 --samples 4096 \
		-o "$BATS_TEST_TMPDIR/cfg.safetensors"
	python3 - "$C" "$BATS_TEST_TMPDIR/nocfg.safetensors" <<'PY'
import sys, stconv
t, meta = stconv.load(sys.argv[1])
stconv.save(sys.argv[2], {k: v for k, v in t.items() if not k.startswith("negative")}, meta)
PY
	fx-calib -q --model "$M" --cond "$BATS_TEST_TMPDIR/nocfg.safetensors" --prompts 1 --steps 2 \
		--res 64x64 --samples 4096 -o "$BATS_TEST_TMPDIR/one.safetensors"
	# image rows: 2 steps x 16 tokens per pass; text rows: prompt 0 has 16
	# tokens, the negative prompt 4
	python3 - "$BATS_TEST_TMPDIR/cfg.safetensors" "$BATS_TEST_TMPDIR/one.safetensors" <<'PY'
import sys, stconv
a, _ = stconv.load(sys.argv[1]); b, _ = stconv.load(sys.argv[2])
p = "transformer_blocks.0."
rows = lambda t, n: t[p + n + ".samples"][1][0]
assert rows(a, "attn.to_qkv") == 64 and rows(b, "attn.to_qkv") == 32, (rows(a, "attn.to_qkv"), rows(b, "attn.to_qkv"))
assert rows(a, "attn.add_qkv_proj") == 2 * (16 + 4) and rows(b, "attn.add_qkv_proj") == 2 * 16
assert rows(a, "img_mod.1") == 4 and rows(b, "img_mod.1") == 2
PY
	# the scale is a recorded parameter
	run fx-verify "$BATS_TEST_TMPDIR/cfg.safetensors"
	assert_output --partial '"true_cfg":4.0'
}

@test "a diffusers/PEFT LoRA merges into a Qwen-Image as into the weights merged beforehand" {
	# dyadic values: every product and sum of the merge is exact in f32
	python3 - "$M" "$BATS_TEST_TMPDIR/lora.safetensors" "$BATS_TEST_TMPDIR/merged" <<'PY'
import os, shutil, sys, numpy as np, stconv
m, out, mdir = sys.argv[1:]
rng = np.random.RandomState(5)
r = 4
mods = {"transformer_blocks.0.attn.to_q": (256, 256), "transformer_blocks.1.img_mlp.net.2": (256, 1024),
        "transformer_blocks.0.txt_mod.1": (1536, 256)}
lora, t = {}, None
t, meta = stconv.load(os.path.join(m, "diffusion_pytorch_model.safetensors"))
for mod, (n, k) in mods.items():
    a = rng.randint(-4, 5, size=(r, k)).astype("<f4") / 64
    b = rng.randint(-4, 5, size=(n, r)).astype("<f4") / 64
    lora["transformer." + mod + ".lora_A.weight"] = ("F32", [r, k], a.tobytes())
    lora["transformer." + mod + ".lora_B.weight"] = ("F32", [n, r], b.tobytes())
    dt, shape, raw = t[mod + ".weight"]
    w = stconv.to_f64(dt, shape, raw).astype("<f4").reshape(n, k)
    acc = np.zeros((n, k), "<f4")
    for j in range(r):
        acc += np.outer(b[:, j], a[j]).astype("<f4")
    t[mod + ".weight"] = ("F32", [n, k], (w + acc).astype("<f4").tobytes())
stconv.save(out, lora)
os.makedirs(mdir)
shutil.copy(os.path.join(m, "config.json"), mdir)
stconv.save(os.path.join(mdir, "diffusion_pytorch_model.safetensors"), t, meta)
PY
	fx-calib -q --model "$M" --lora "$BATS_TEST_TMPDIR/lora.safetensors" --cond "$C" --prompts 1 \
		--steps 2 --res 64x64 --samples 32 -o "$BATS_TEST_TMPDIR/a.safetensors"
	fx-calib -q --model "$BATS_TEST_TMPDIR/merged" --cond "$C" --prompts 1 --steps 2 --res 64x64 \
		--samples 32 -o "$BATS_TEST_TMPDIR/b.safetensors"
	fx-calib -q --model "$M" --cond "$C" --prompts 1 --steps 2 --res 64x64 --samples 32 \
		-o "$BATS_TEST_TMPDIR/c.safetensors"
	python3 - "$BATS_TEST_TMPDIR"/{a,b,c}.safetensors <<'PY'
import sys, stconv
a, _ = stconv.load(sys.argv[1]); b, _ = stconv.load(sys.argv[2]); c, _ = stconv.load(sys.argv[3])
assert sorted(a) == sorted(b)
same = [k for k in a if a[k][2] == b[k][2]]
assert len(same) == len(a), sorted(set(a) - set(same))[:5]
assert any(a[k][2] != c[k][2] for k in a), "the LoRA changed nothing"
PY
}
