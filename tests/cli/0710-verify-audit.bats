#!/usr/bin/env bats
# fx-verify on a good SVDQuant checkpoint and on broken copies: each defect
# is caught with its own message; provenance and numerics against the inputs.

load helper

setup_file() {
	export W=$BATS_FILE_TMPDIR
	fx-synth -q -o "$W/model" --cond "$W/cond.safetensors" --prompts 2 --txt-len 16
	fx-synth -q -o "$W/other" --seed 9
	fx-calib -q --model "$W/model" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	fx-lowrank -q --model "$W/model" --calib "$W/calib.safetensors" --rank 32 --precision int4 --alpha-grid 2 --iters 0 -o "$W/branch.safetensors"
	fx-quant -q --model "$W/model" --branch "$W/branch.safetensors" --precision int4 -o "$W/quant.safetensors"
	fx-pack -q --model "$W/model" --quant "$W/quant.safetensors" --branch "$W/branch.safetensors" -o "$W/good.safetensors"
	fx-meta -q --model "$W/model" "$W/good.safetensors"
}

# edit EXPR: python over the raw file: hdr (dict), data (bytearray of the data
# section), meta (dict or None); writes a new, structurally valid file
edit() {
	python3 - "$W/good.safetensors" "$BATS_TEST_TMPDIR/bad.safetensors" "$1" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
meta = hdr.pop("__metadata__", None)
data = bytearray(raw[8 + n:])
def tensor(name):
    b, e = hdr[name]["data_offsets"]
    return b, e
exec(sys.argv[3])
if meta is not None:
    hdr["__metadata__"] = meta
h = json.dumps(hdr, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + bytes(data))
PY
}

# drops tensors and compacts the data section
DROP='
def drop(names):
    global data
    keep = sorted((k for k in hdr if k not in names), key=lambda k: hdr[k]["data_offsets"][0])
    out = bytearray(); 
    for k in keep:
        b, e = hdr[k]["data_offsets"]; hdr[k]["data_offsets"] = [len(out), len(out) + e - b]; out += data[b:e]
    for k in names: del hdr[k]
    data[:] = out
'

@test "the good checkpoint passes, also against its inputs, with numerics" {
	run -0 fx-verify "$W/good.safetensors" --model "$W/model" --calib "$W/calib.safetensors" --branch "$W/branch.safetensors"
	assert_output --partial "30 of 30 modules complete, INT4, rank 32"
	assert_output --partial "[OK] provenance: model"
	assert_output --partial "[OK] provenance: branch"
	assert_output --partial "mean relative weight error"
	assert_output --partial "SNR"
	assert_output --partial "0 errors"
}

@test "--json follows the fx-verify/1 schema" {
	run -0 fx-verify --json "$W/good.safetensors" "$W/branch.safetensors"
	echo "$output" | python3 "$BATS_TEST_DIRNAME/check-verify-json.py"
}

@test "qkv_proj_context left in BF16 is an error naming the module" {
	edit "$DROP"'
drop([k for k in hdr if k.startswith("transformer_blocks.1.qkv_proj_context.")])
hdr["transformer_blocks.1.attn.add_q_proj.weight"] = {"dtype": "BF16", "shape": [256, 256], "data_offsets": [len(data), len(data) + 256 * 256 * 2]}
data += bytes(256 * 256 * 2)'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	assert_output --partial "[MISSING] qkv_proj_context (block 1): qweight"
	assert_output --partial "left in BF16 where a 4-bit module belongs"
}

@test "lora tensors of qkv_proj removed" {
	edit "$DROP"'
drop(["transformer_blocks.0.qkv_proj.lora_down", "transformer_blocks.0.qkv_proj.lora_up"])'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	assert_output --partial "[MISSING] qkv_proj (block 0): lora_down, lora_up"
}

@test "metadata stripped" {
	edit 'meta = {k: v for k, v in meta.items() if k.startswith("fx.")}'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	assert_output --partial "metadata 'quantization_config' missing"
	assert_output --partial "metadata 'comfy_config' missing"
}

@test "one byte flipped in a qweight fails its checksum" {
	edit 'b, e = tensor("transformer_blocks.0.mlp_fc1.qweight"); data[b + 17] ^= 0x10'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	assert_output --partial "'transformer_blocks.0.mlp_fc1.qweight' fails its checksum"
}

@test "a NaN scale is found" {
	edit 'b, e = tensor("single_transformer_blocks.0.out_proj.wscales"); data[b:b + 2] = b"\xc0\x7f"'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	assert_output --partial "single_transformer_blocks.0.out_proj.wscales: NaN or Inf"
}

@test "lora_up with its shape transposed" {
	edit 'hdr["transformer_blocks.0.out_proj.lora_up"]["shape"] = hdr["transformer_blocks.0.out_proj.lora_up"]["shape"][::-1]'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	assert_output --partial "transformer_blocks.0.out_proj.lora_up: is BF16 [32,256], expected BF16 [256,-1]"
}

@test "a branch file made with another rank is refused by fx-pack" {
	fx-lowrank -q --model "$W/model" --calib "$W/calib.safetensors" --rank 16 --precision int4 --alpha-grid 1 --iters 0 -o "$BATS_TEST_TMPDIR/b16.safetensors"
	run -3 --separate-stderr fx-pack --model "$W/model" --quant "$W/quant.safetensors" --branch "$BATS_TEST_TMPDIR/b16.safetensors" -o "$BATS_TEST_TMPDIR/p.safetensors"
	[[ "$stderr" == *"quantized with another branch file"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/p.safetensors" ]
}

@test "an intermediate made from another model is stale and names the stage to rerun" {
	run -1 fx-verify "$W/quant.safetensors" --model "$W/other"
	assert_output --partial "fx.quant was made from another model"
	assert_output --partial "rerun fx-quant"
	run -1 fx-verify "$W/branch.safetensors" --model "$W/other"
	assert_output --partial "rerun fx-lowrank"
	run -0 fx-verify "$W/quant.safetensors" --model "$W/model" --branch "$W/branch.safetensors"
}

@test "a layout error shows up in the numerics" {
	# swap two halves of a qweight: the structure stays valid, the weights do not
	edit 'b, e = tensor("transformer_blocks.1.mlp_fc1.qweight"); h = (e - b) // 2; data[b:e] = data[b + h:e] + data[b:b + h]
meta["fx.crc32"] = json.dumps({k: v for k, v in json.loads(meta["fx.crc32"]).items()}); import zlib
c = json.loads(meta["fx.crc32"]); c["transformer_blocks.1.mlp_fc1.qweight"] = "%08x" % zlib.crc32(data[b:e]); meta["fx.crc32"] = json.dumps(c, separators=(",", ":"), sort_keys=True)'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors" --model "$W/model"
	assert_output --partial "mlp_fc1 (block 1): does not reproduce the source layer"
}

# swap HALF of tensor T's data halves, CRC updated: structurally valid
swap_halves() {
	edit "b, e = tensor('$1'); h = (e - b) // 2; h -= h % 4; data[b:b + 2 * h] = data[b + h:b + 2 * h] + data[b:b + h]
import zlib
c = json.loads(meta['fx.crc32']); c['$1'] = '%08x' % zlib.crc32(data[b:e]); meta['fx.crc32'] = json.dumps(c, separators=(',', ':'), sort_keys=True)"
}

@test "half-swapped smoothing or group scales pass the weight bound but not the re-quantization check" {
	run -0 fx-verify "$W/good.safetensors" --model "$W/model"
	assert_output --partial "(requant "
	for t in transformer_blocks.0.qkv_proj.smooth transformer_blocks.1.mlp_fc1.wscales; do
		swap_halves "$t"
		run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors" --model "$W/model"
		refute_output --partial "does not reproduce the source layer"
		assert_output --regexp "error: numerics (qkv_proj \(block 0\)|mlp_fc1 \(block 1\)): relative weight error [0-9.]+, [0-9.]+x the [0-9.]+ of the same module re-quantized from its own smoothing and branch"
	done
}

@test "fx-eval: SVDQuant keeps the sampler closer to the source weights than plain RTN" {
	fx-quant -q --model "$W/model" --precision int4 -o "$BATS_TEST_TMPDIR/rq.safetensors"
	fx-pack -q --model "$W/model" --quant "$BATS_TEST_TMPDIR/rq.safetensors" -o "$BATS_TEST_TMPDIR/rtn.safetensors"
	run -0 --separate-stderr fx-eval --json --model "$W/model" --cond "$W/cond.safetensors" --steps 2 \
		--res 128x128 --plot "$BATS_TEST_TMPDIR/p.png" "$W/good.safetensors" "$BATS_TEST_TMPDIR/rtn.safetensors"
	echo "$output" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["schema"] == "fx-eval/1" and d["prompts"] == 2
svdq, rtn = d["checkpoints"]
print(svdq["mean_psnr"], rtn["mean_psnr"])
assert svdq["mean_psnr"] > rtn["mean_psnr"], (svdq, rtn)
assert 0.5 < svdq["mean_cosine"] <= 1.0
assert len(svdq["psnr"]) == 2
'
	[ "$(head -c 8 "$BATS_TEST_TMPDIR/p.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]
	run -3 --separate-stderr fx-eval --model "$W/model" --cond "$W/cond.safetensors" "$W/quant.safetensors"
	[[ "$stderr" == *"missing or misshapen"* ]]
}
