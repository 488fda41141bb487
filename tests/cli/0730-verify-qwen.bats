#!/usr/bin/env bats
# fx-verify and fx-meta on Qwen-Image checkpoints (nunchaku-qwenimage-zimage-
# format.md §1-§5): a file written by qwenpacked.py (independent of fx-pack,
# 2 blocks, hidden 256, rank 32, INT4 and NVFP4) and fx-pack's own output
# (fx-synth --family qwenimage, RTN); every broken copy is a finding (exit 1)
# naming the tensor or the metadata key.

load helper

setup_file() {
	export W=$BATS_FILE_TMPDIR
	python3 "$BATS_TEST_DIRNAME/qwenpacked.py" "$W/int4.safetensors"
	python3 "$BATS_TEST_DIRNAME/qwenpacked.py" --precision fp4 "$W/fp4.safetensors"
	fx-synth -q --family qwenimage -o "$W/model"
	fx-synth -q -o "$W/flux"
	fx-quant -q --model "$W/model" --precision int4 -o "$W/q.safetensors"
	fx-pack -q --model "$W/model" --quant "$W/q.safetensors" -o "$W/packed.safetensors"
}

# edit SRC EXPR: python over the raw file SRC: hdr (dict), data (bytearray of
# the data section), meta (dict or None), tensor(name) -> (begin, end),
# drop(names) compacts, add(name, dtype, shape, raw) appends, rename(a, b);
# writes $BATS_TEST_TMPDIR/bad.safetensors
edit() {
	python3 - "$1" "$BATS_TEST_TMPDIR/bad.safetensors" "$2" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
meta = hdr.pop("__metadata__", None)
data = bytearray(raw[8 + n:])
def tensor(name):
    return hdr[name]["data_offsets"]
def drop(names):
    global data
    keep = sorted((k for k in hdr if k not in names), key=lambda k: hdr[k]["data_offsets"][0])
    out = bytearray()
    for k in keep:
        b, e = hdr[k]["data_offsets"]
        hdr[k]["data_offsets"] = [len(out), len(out) + e - b]
        out += data[b:e]
    for k in names:
        del hdr[k]
    data = out
def add(name, dtype, shape, raw):
    global data
    hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
def rename(a, b):
    hdr[b] = hdr.pop(a)
exec(sys.argv[3])
if meta is not None:
    hdr["__metadata__"] = meta
h = json.dumps(hdr, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + bytes(data))
PY
}

bad=$BATS_TEST_TMPDIR/bad.safetensors

@test "a complete Qwen-Image checkpoint passes, INT4 and NVFP4, every module of every block" {
	for p in int4 fp4; do
		run -0 fx-verify "$W/$p.safetensors"
		assert_output --partial "20 of 20 modules complete"
		assert_output --partial "rank 32, 2 blocks (Qwen-Image)"
		assert_output --partial "[OK] attn.to_qkv (block 1): proj_down=[256,32] proj_up=[768,32]"
		assert_output --partial "[OK] img_mlp.net.2 (block 0): proj_down=[1024,32] proj_up=[256,32]"
		assert_output --partial "[OK] txt_mod.1 (block 1)"
		refute_output --partial "error:"
		run -0 fx-meta --check "$W/$p.safetensors"
	done
	run -0 fx-verify --json "$W/fp4.safetensors"
	[ "$(json_get - 'd["files"][0]["kind"]' <<<"$output")" = nunchaku ]
	[ "$(json_get - 'len(d["files"][0]["findings"])' <<<"$output")" = 0 ]
}

@test "a module missing in block 1 is named" {
	edit "$W/int4.safetensors" 'drop([k for k in hdr if k.startswith("transformer_blocks.1.attn.add_qkv_proj.")])'
	run -1 fx-verify "$bad"
	assert_output --partial "[MISSING] attn.add_qkv_proj (block 1): qweight, wscales, bias, smooth_factor, smooth_factor_orig, proj_down, proj_up"
	assert_output --partial "error: missing attn.add_qkv_proj (block 1)"
	assert_output --partial "19 of 20 modules complete"
	# one tensor of a module, and a block's norm
	edit "$W/int4.safetensors" 'drop(["transformer_blocks.1.txt_mlp.net.2.smooth_factor_orig", "transformer_blocks.1.attn.norm_added_k.weight"])'
	run -1 fx-verify "$bad"
	assert_output --partial "[MISSING] txt_mlp.net.2 (block 1): smooth_factor_orig"
	assert_output --partial "error: missing transformer_blocks.1.attn.norm_added_k.weight"
}

@test "FLUX names in a Qwen-Image file are findings naming the tensor" {
	edit "$W/int4.safetensors" 'rename("transformer_blocks.0.attn.to_qkv.proj_down", "transformer_blocks.0.attn.to_qkv.lora_down")'
	run -1 fx-verify "$bad"
	assert_output --partial "[MISSING] attn.to_qkv (block 0): proj_down"
	assert_output --partial "error: family transformer_blocks.0.attn.to_qkv.lora_down: a FLUX name in a Qwen-Image checkpoint"
	edit "$W/int4.safetensors" 'add("transformer_blocks.1.qkv_proj.smooth", "BF16", [256], bytes(512))'
	run -1 fx-verify "$bad"
	assert_output --partial "error: family transformer_blocks.1.qkv_proj.smooth: a FLUX name in a Qwen-Image checkpoint"
	# the other way round: a Qwen-Image name in a FLUX file (fx-pack's FLUX output)
	fx-quant -q --model "$W/flux" --precision int4 -o "$BATS_TEST_TMPDIR/fq.safetensors"
	fx-pack -q --model "$W/flux" --quant "$BATS_TEST_TMPDIR/fq.safetensors" -o "$BATS_TEST_TMPDIR/fp.safetensors"
	fx-meta -q --model "$W/flux" "$BATS_TEST_TMPDIR/fp.safetensors"
	run -0 fx-verify "$BATS_TEST_TMPDIR/fp.safetensors"
	edit "$BATS_TEST_TMPDIR/fp.safetensors" 'rename("transformer_blocks.0.qkv_proj.lora_up", "transformer_blocks.0.qkv_proj.proj_up"); meta.pop("fx.crc32")'
	run -1 fx-verify "$bad"
	assert_output --partial "error: family transformer_blocks.0.qkv_proj.proj_up: a Qwen-Image name in a FLUX checkpoint"
}

@test "an unquantized layer left in BF16 and any other key a strict load refuses" {
	edit "$W/int4.safetensors" 'add("transformer_blocks.0.attn.to_q.weight", "BF16", [256, 256], bytes(256 * 256 * 2)); add("transformer_blocks.1.img_mlp.extra", "BF16", [4], bytes(8))'
	run -1 fx-verify "$bad"
	assert_output --partial "error: bf16 transformer_blocks.0.attn.to_q.weight: left in BF16"
	assert_output --partial "error: unexpected transformer_blocks.1.img_mlp.extra: not a tensor of a Qwen-Image checkpoint"
}

@test "a wrong dtype is named with the dtype and shape expected" {
	edit "$W/int4.safetensors" 'hdr["transformer_blocks.1.img_mlp.net.0.proj.proj_up"]["dtype"] = "F16"'
	run -1 fx-verify "$bad"
	assert_output --partial "error: shape transformer_blocks.1.img_mlp.net.0.proj.proj_up: is F16 [1024,32], expected BF16"
	# NVFP4 scales in an INT4 file: the wscales' dtype decides the precision
	edit "$W/int4.safetensors" 'hdr["transformer_blocks.0.img_mod.1.wscales"]["dtype"] = "F16"'
	run -1 fx-verify "$bad"
	assert_output --partial "error: shape transformer_blocks.0.img_mod.1.wscales: is F16"
}

@test "a rank mismatch: between modules, and against quantization_config" {
	# attn.to_out.0 of block 1 at rank 16: proj_down (256,16), proj_up (256,16)
	edit "$W/int4.safetensors" '
for s in ("proj_down", "proj_up"):
    k = "transformer_blocks.1.attn.to_out.0." + s
    b, e = tensor(k)
    hdr[k]["shape"][1] = 16
    hdr[k]["data_offsets"] = [b, b + (e - b) // 2]
drop([])'
	run -1 fx-verify "$bad"
	assert_output --partial "error: rank attn.to_out.0 (block 1): rank 16 differs from the other modules (32)"
	edit "$W/int4.safetensors" 'q = json.loads(meta["quantization_config"]); q["rank"] = 64; meta["quantization_config"] = json.dumps(q)'
	run -1 fx-verify "$bad"
	assert_output --partial "error: metadata quantization_config: rank is 64 but proj_down tensors have rank 32"
	run -1 fx-meta --check "$bad"
	assert_output --partial "$bad: error: rank is 64 but proj_down tensors have rank 32"
}

@test "an INT4 file with wtscale or wcscales: the strict load refuses them" {
	edit "$W/int4.safetensors" 'add("transformer_blocks.0.attn.to_out.0.wtscale", "BF16", [1], b"\x80\x3f"); add("transformer_blocks.1.attn.to_qkv.wcscales", "BF16", [768], b"\x80\x3f" * 768)'
	run -1 fx-verify "$bad"
	assert_output --partial "error: unexpected transformer_blocks.0.attn.to_out.0.wtscale: an NVFP4 tensor scale in an INT4 file"
	assert_output --partial "error: unexpected transformer_blocks.1.attn.to_qkv.wcscales: an NVFP4 tensor scale in an INT4 file"
	assert_output --partial "[BAD] attn.to_out.0 (block 0)"
	# NVFP4: both optional (missing: ones and 1.0)
	edit "$W/fp4.safetensors" 'drop([k for k in hdr if k.endswith(".wtscale") or k.endswith(".wcscales")])'
	run -0 fx-verify "$bad"
}

@test "metadata: quantization_config required, config valid with the Qwen-Image class, no comfy_config needed" {
	edit "$W/int4.safetensors" 'del meta["quantization_config"]'
	run -1 fx-verify "$bad"
	assert_output --partial "error: metadata quantization_config: metadata 'quantization_config' missing"
	run -1 fx-meta --check "$bad"
	refute_output --partial comfy_config
	edit "$W/int4.safetensors" 'c = json.loads(meta["config"]); c["_class_name"] = "FluxTransformer2DModel"; meta["config"] = json.dumps(c)'
	run -1 fx-meta --check "$bad"
	assert_output --partial "error: config _class_name is 'FluxTransformer2DModel', expected 'QwenImageTransformer2DModel'"
	edit "$W/int4.safetensors" 'meta["config"] = "{not json"'
	run -1 fx-meta --check "$bad"
	assert_output --partial "error: metadata 'config' is not a JSON object"
	edit "$W/int4.safetensors" 'q = json.loads(meta["quantization_config"]); q["weight"]["dtype"] = "fp4_e2m1_all"; meta["quantization_config"] = json.dumps(q)'
	run -1 fx-meta --check "$bad"
	assert_output --partial "error: weight.dtype is 'fp4_e2m1_all' but the tensors are int4"
	# the loaders ignore the config beyond parsing it: a wrong size only warns
	edit "$W/int4.safetensors" 'c = json.loads(meta["config"]); c["num_layers"] = 60; meta["config"] = json.dumps(c)'
	run -0 fx-meta --check "$bad"
	assert_output --partial "warning: config num_layers 60, file has 2 blocks"
	run -1 fx-verify --strict "$bad"
	# model_class is not read by the Qwen-Image loaders: a warning
	edit "$W/int4.safetensors" 'del meta["model_class"]'
	run -0 fx-verify "$bad"
	assert_output --partial "warning: metadata model_class"
}

@test "fx-meta repairs a stripped Qwen-Image file: config, quantization_config, model_class, no comfy_config" {
	edit "$W/fp4.safetensors" 'meta = None'
	run -1 fx-meta --check "$bad"
	assert_output --partial "metadata 'config' missing"
	assert_output --partial "metadata 'quantization_config' missing"
	refute_output --partial comfy_config
	run -0 fx-meta "$bad"
	run -0 fx-meta --check "$bad"
	assert_output "$bad: metadata ok"
	python3 - "$bad" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb")
meta = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"]
assert "comfy_config" not in meta, meta
assert meta["model_class"] == "NunchakuQwenImageTransformer2DModel"
assert meta["quantization_config"] == '{"method": "svdquant", "weight": {"dtype": "fp4_e2m1_all", "scale_dtype": [null, "fp8_e4m3_nan"], "group_size": 16}, "activation": {"dtype": "fp4_e2m1_all", "scale_dtype": "fp8_e4m3_nan", "group_size": 16}, "rank": 32}', meta
c = json.loads(meta["config"])
assert c["_class_name"] == "QwenImageTransformer2DModel" and c["num_layers"] == 2, c
assert c["num_attention_heads"] * c["attention_head_dim"] == 256 and c["joint_attention_dim"] == 128, c
PY
	run -0 fx-verify "$bad"
}

@test "fx-pack's Qwen-Image checkpoint: fx-meta writes the model's config.json, fx-verify passes with and without --model" {
	p=$BATS_TEST_TMPDIR/p.safetensors
	cp "$W/packed.safetensors" "$p"
	run -1 fx-verify "$p"
	assert_output --partial "metadata 'config' missing"
	run -0 fx-meta --model "$W/model" "$p"
	python3 - "$p" "$W/model/config.json" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb")
meta = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"]
assert meta["config"] == open(sys.argv[2]).read(), "config is not the model's config.json"
assert "comfy_config" not in meta and json.loads(meta["fx.model"])["family"] == "qwenimage"
PY
	run -0 fx-verify "$p"
	assert_output --partial "20 of 20 modules complete, INT4, rank 0, 2 blocks (Qwen-Image)"
	run -0 fx-verify --model "$W/model" "$p"
	assert_output --partial "20 of 20 modules complete"
	assert_output --partial "numerics against"
	# a model of the other family: refused by fx-meta, a finding of fx-verify
	run -3 fx-meta --model "$W/flux" "$p"
	assert_output --partial "is a Qwen-Image checkpoint, the model given is FLUX"
	run -1 fx-verify --model "$W/flux" "$p"
	assert_output --partial "error: family: the file is a Qwen-Image checkpoint, the model given is FLUX"
	# an intermediate: its groups against the model, its family against another
	run -0 fx-verify --model "$W/model" "$W/q.safetensors"
	assert_output --partial "[OK] groups: 20 of 20 fused groups of blocks 0-1 present"
	run -1 fx-verify --model "$W/flux" "$W/q.safetensors"
	assert_output --partial "error: family: the fx.quant file was made for a Qwen-Image model, '$W/flux' is FLUX"
	# the model summary of a Qwen-Image model
	run -0 fx-verify "$W/model"
	assert_output --partial "Qwen-Image, diffusers layout, hidden 256 (2 heads), 2 blocks"
}
