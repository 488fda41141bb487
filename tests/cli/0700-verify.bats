#!/usr/bin/env bats
# fx-verify against the inputs of a chain (NVFP4 here; 0710 has the INT4
# broken copies): the chain's provenance, the groups of intermediates,
# numerics, the --json schema; fx-eval per step and per layer.

load helper

setup_file() {
	export W=$BATS_FILE_TMPDIR
	fx-synth -q -o "$W/model" --cond "$W/cond.safetensors" --prompts 2 --txt-len 16
	fx-synth -q -o "$W/other" --seed 9
	fx-synth -q -o "$W/big" --hidden 384
	fx-calib -q --model "$W/model" --cond "$W/cond.safetensors" --steps 2 --res 128x128 --samples 64 -o "$W/calib.safetensors"
	fx-calib -q --model "$W/model" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 64 -o "$W/calib2.safetensors"
	fx-lowrank -q --model "$W/model" --calib "$W/calib.safetensors" --rank 32 --precision fp4 --alpha-grid 2 --iters 0 -o "$W/branch.safetensors"
	fx-quant -q --model "$W/model" --branch "$W/branch.safetensors" --precision fp4 -o "$W/quant.safetensors"
	fx-pack -q --model "$W/model" --quant "$W/quant.safetensors" --branch "$W/branch.safetensors" -o "$W/good.safetensors"
	fx-meta -q --model "$W/model" "$W/good.safetensors"
	fx-quant -q --model "$W/model" --precision fp4 -o "$W/rq.safetensors"
	fx-pack -q --model "$W/model" --quant "$W/rq.safetensors" -o "$W/rtn.safetensors"
	fx-meta -q --model "$W/model" "$W/rtn.safetensors"
}

# edit SRC EXPR: python over the raw file SRC: hdr (dict), data (bytearray of
# the data section), meta (dict or None), tensor(name) -> (begin, end),
# drop(names) compacts; writes $BATS_TEST_TMPDIR/bad.safetensors
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
exec(sys.argv[3])
if meta is not None:
    hdr["__metadata__"] = meta
h = json.dumps(hdr, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + bytes(data))
PY
}

# validate SCHEMA < JSON: the subset of JSON Schema the schema uses (type,
# const, enum, required, properties, additionalProperties, items, oneOf,
# minimum, minLength, pattern); with the jsonschema package also through it
validate() {
	cat >"$BATS_TEST_TMPDIR/doc.json"
	python3 - "$1" "$BATS_TEST_TMPDIR/doc.json" <<'PY'
import json, re, sys
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
TYPES = {"object": dict, "array": list, "string": str, "null": type(None), "boolean": bool}
def is_type(v, t):
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, TYPES[t])
def check(v, s, at):
    errs = []
    if "type" in s:
        ts = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(is_type(v, t) for t in ts):
            return ["%s: %.60r is not %s" % (at, v, ts)]
    if "const" in s and v != s["const"]:
        errs.append("%s: %r is not %r" % (at, v, s["const"]))
    if "enum" in s and v not in s["enum"]:
        errs.append("%s: %r not in %s" % (at, v, s["enum"]))
    if isinstance(v, str):
        if len(v) < s.get("minLength", 0):
            errs.append("%s: too short" % at)
        if "pattern" in s and not re.search(s["pattern"], v):
            errs.append("%s: %r does not match %s" % (at, v, s["pattern"]))
    if is_type(v, "number") and "minimum" in s and v < s["minimum"]:
        errs.append("%s: %s < %s" % (at, v, s["minimum"]))
    if isinstance(v, dict):
        errs += ["%s: missing %r" % (at, k) for k in s.get("required", []) if k not in v]
        props, extra = s.get("properties", {}), s.get("additionalProperties", True)
        for k, x in v.items():
            if k in props:
                errs += check(x, props[k], at + "." + k)
            elif isinstance(extra, dict):
                errs += check(x, extra, at + "." + k)
            elif extra is False:
                errs.append("%s: unexpected %r" % (at, k))
    if isinstance(v, list) and "items" in s:
        for i, x in enumerate(v):
            errs += check(x, s["items"], "%s[%d]" % (at, i))
    if "oneOf" in s:
        ok = [o for o in s["oneOf"] if not check(v, o, at)]
        if len(ok) != 1:
            errs.append("%s: matches %d of oneOf" % (at, len(ok)))
    return errs
errs = check(doc, schema, "$")
try:
    import jsonschema
    jsonschema.validate(doc, schema)
except ImportError:
    pass
except jsonschema.ValidationError as e:
    errs.append("jsonschema: " + e.message)
print("\n".join(errs) or "valid")
sys.exit(1 if errs else 0)
PY
}

@test "the good NVFP4 checkpoint passes against the whole chain" {
	run -0 fx-verify "$W/good.safetensors" --model "$W/model" --calib "$W/calib.safetensors" --branch "$W/branch.safetensors"
	assert_output --partial "30 of 30 modules complete, NVFP4, rank 32"
	assert_output --partial "[OK] provenance: model"
	assert_output --partial "[OK] provenance: the branch file '$W/branch.safetensors' was made from the given inputs"
	assert_output --partial "[OK] provenance: the calib file '$W/calib.safetensors' was made from the given inputs"
	assert_output --partial "[NUM] qkv_proj (block 0)"
	assert_output --partial "summary: 1 file, 0 errors, 0 warnings"
	# every W4A4 layer has an output SNR; worst weight error first
	[ "$(grep -c '^  \[NUM\] .* SNR .* dB$' <<<"$output")" -eq 24 ]
	grep '^  \[NUM\]' <<<"$output" | awk '{ for (i = 1; i < NF; i++) if ($i == "weight") print $(i + 1) }' | sort -c -r -g
}

@test "intermediates given with --model hold every group of their blocks" {
	run -0 fx-verify "$W/calib.safetensors" "$W/branch.safetensors" "$W/quant.safetensors" --model "$W/model"
	assert_output --partial "[OK] groups: 30 of 30 fused groups of blocks 0-3 present for '$W/model'"
	assert_output --partial "[OK] groups: 24 of 24 fused groups of blocks 0-3"
	fx-quant -q --model "$W/model" --precision fp4 --blocks 2-3 -o "$BATS_TEST_TMPDIR/q23.safetensors"
	run -0 fx-verify "$BATS_TEST_TMPDIR/q23.safetensors" --model "$W/model"
	assert_output --partial "[OK] groups: 10 of 10 fused groups of blocks 2-3"
}

@test "a quant file missing a group names it and the stage to rerun" {
	edit "$W/quant.safetensors" 'drop([k for k in hdr if k.startswith("transformer_blocks.1.mlp_fc2.")])'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors" --model "$W/model"
	assert_output --partial "codes, scales, tscale of mlp_fc2 (block 1) missing from the fx.quant file: rerun fx-quant"
	assert_output --partial "[MISSING] groups: 29 of 30"
}

@test "an intermediate made for a model of another size: shapes named, the rest counted" {
	run -1 fx-verify "$W/branch.safetensors" --model "$W/big"
	assert_output --partial "fx.branch was made from another model"
	assert_output --partial "the model's qkv_proj (block 0) wants F32 [384]"
	assert_output --partial "was made for another model or is damaged, rerun fx-lowrank"
	assert_output --partial "8 more groups missing or misshapen (24 of 24 in all)"
}

@test "a branch made from another calib than the one given is stale: rerun fx-lowrank" {
	run -1 fx-verify "$W/good.safetensors" --model "$W/model" --calib "$W/calib2.safetensors" --branch "$W/branch.safetensors"
	assert_output --partial "error: stale branch: the branch file '$W/branch.safetensors' (fx.branch) was made from another calib than '$W/calib2.safetensors': rerun fx-lowrank, then the stages after it"
	run -1 fx-verify "$W/branch.safetensors" --model "$W/model" --calib "$W/calib2.safetensors"
	assert_output --partial "fx.branch was made from another calib than"
	assert_output --partial "rerun fx-lowrank"
}

@test "a calib file from another model beside the checkpoint: rerun fx-calib" {
	fx-calib -q --model "$W/other" --cond "$W/cond.safetensors" --steps 1 --res 128x128 --samples 16 -o "$BATS_TEST_TMPDIR/oc.safetensors"
	run -1 fx-verify "$W/good.safetensors" --model "$W/model" --calib "$BATS_TEST_TMPDIR/oc.safetensors"
	assert_output --partial "the calib file '$BATS_TEST_TMPDIR/oc.safetensors' (fx.calib) was made from another model than '$W/model': rerun fx-calib"
}

@test "NVFP4 broken copies: a NaN E4M3 scale, transposed lora_up, swapped lora_up halves" {
	edit "$W/good.safetensors" 'b, e = tensor("transformer_blocks.0.qkv_proj.wscales"); data[b + 3] = 0x7f'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	assert_output --partial "transformer_blocks.0.qkv_proj.wscales: NaN e4m3 scale"
	assert_output --partial "'transformer_blocks.0.qkv_proj.wscales' fails its checksum"
	edit "$W/good.safetensors" 'hdr["single_transformer_blocks.1.mlp_fc2.lora_up"]["shape"] = hdr["single_transformer_blocks.1.mlp_fc2.lora_up"]["shape"][::-1]'
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	assert_output --partial "single_transformer_blocks.1.mlp_fc2.lora_up: is BF16 [32,256]"
	# swapped halves of lora_up, CRC made to match: only the numerics see it
	edit "$W/good.safetensors" 'import zlib
n = "transformer_blocks.1.out_proj.lora_up"; b, e = tensor(n); h = (e - b) // 2; data[b:e] = data[b + h:e] + data[b:b + h]
c = json.loads(meta["fx.crc32"]); c[n] = "%08x" % zlib.crc32(data[b:e]); meta["fx.crc32"] = json.dumps(c, separators=(",", ":"), sort_keys=True)'
	run -0 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors"
	run -1 fx-verify "$BATS_TEST_TMPDIR/bad.safetensors" --model "$W/model" --calib "$W/calib.safetensors"
	assert_output --partial "out_proj (block 1): does not reproduce the source layer"
	assert_line --regexp '^  \[NUM\] out_proj \(block 1\) +weight [1-9][0-9.]* .* SNR -?[0-9.]+ dB$'
}

@test "--json validates against fx-verify.schema.json, also with findings and unreadable inputs" {
	S=$BATS_TEST_DIRNAME/fx-verify.schema.json
	run -0 --separate-stderr fx-verify --json "$W/good.safetensors" --model "$W/model" --calib "$W/calib.safetensors" --branch "$W/branch.safetensors"
	validate "$S" <<<"$output"
	json_get - 'd["status"] == "ok" and any(l.startswith("[NUM] ") for l in d["files"][0]["layers"])' <<<"$output" | grep -qx True
	run -0 --separate-stderr fx-verify --json "$W/model" "$W/calib.safetensors" "$W/branch.safetensors" "$W/quant.safetensors"
	validate "$S" <<<"$output"
	edit "$W/good.safetensors" 'meta = {k: v for k, v in meta.items() if k.startswith("fx.")}'
	run -1 --separate-stderr fx-verify --json "$BATS_TEST_TMPDIR/bad.safetensors" "$W/quant.safetensors" --model "$W/other"
	validate "$S" <<<"$output"
	json_get - 'd["status"] == "findings" and d["errors"] >= 3' <<<"$output" | grep -qx True
	run -3 --separate-stderr fx-verify --json "$W/good.safetensors" "$BATS_TEST_TMPDIR/none.safetensors"
	validate "$S" <<<"$output"
	json_get - 'd["status"] == "unreadable" and "error" in d["files"][1]' <<<"$output" | grep -qx True
	# the validator does reject what breaks the schema
	run -1 validate "$S" <<<'{"schema": "fx-verify/1", "files": [{"path": "x"}], "errors": 0, "warnings": 0, "status": "ok"}'
	run -1 validate "$S" <<<'{"schema": "fx-verify/2", "files": [], "errors": -1, "warnings": 0, "status": "fine"}'
}

@test "fx-eval: per-step and per-layer comparison, SVDQuant ahead of RTN, the PNG decodes" {
	run -0 --separate-stderr fx-eval --json --model "$W/model" --cond "$W/cond.safetensors" --steps 3 \
		--res 128x128 --plot "$BATS_TEST_TMPDIR/p.png" "$W/good.safetensors" "$W/rtn.safetensors"
	echo "$output" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["schema"] == "fx-eval/1" and d["prompts"] == 2 and d["steps"] == 3
svdq, rtn = d["checkpoints"]
for c in (svdq, rtn):
    assert len(c["psnr"]) == 2 and len(c["mean_step_psnr"]) == 3
    assert len(c["step_psnr"]) == 2 and all(len(s) == 3 for s in c["step_psnr"])
    assert all(abs(s[-1] - p) < 1e-9 for s, p in zip(c["step_psnr"], c["psnr"]))
    assert len(c["layers"]) == 30 and c["layers"][0]["layer"] == "norm1.linear (block 0)"
w = [sum(l["snr"] for l in c["layers"] if "norm" not in l["layer"]) / 24 for c in (svdq, rtn)]
print("PSNR svdq %.2f rtn %.2f; W4A4 layer SNR svdq %.1f rtn %.1f" % (svdq["mean_psnr"], rtn["mean_psnr"], w[0], w[1]))
assert svdq["mean_psnr"] > rtn["mean_psnr"], (svdq["mean_psnr"], rtn["mean_psnr"])
assert svdq["mean_cosine"] > rtn["mean_cosine"]
assert w[0] > w[1] + 5, w
'
	python3 - "$BATS_TEST_TMPDIR/p.png" <<'PY'
import struct, sys, zlib
raw = open(sys.argv[1], "rb").read()
assert raw[:8] == b"\x89PNG\r\n\x1a\n"
at, chunks = 8, {}
while at < len(raw):
    n, t = struct.unpack(">I4s", raw[at:at + 8])
    body = raw[at + 8:at + 8 + n]
    assert struct.unpack(">I", raw[at + 8 + n:at + 12 + n])[0] == zlib.crc32(t + body)
    chunks[t] = chunks.get(t, b"") + body
    at += 12 + n
w, h, depth, ctype = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
assert (w, h, depth, ctype) == (960, 600, 8, 2)
px = zlib.decompress(chunks[b"IDAT"])
assert len(px) == h * (3 * w + 1)
assert bytes([31, 119, 180]) in px and bytes([255, 127, 14]) in px
PY
	run -0 --separate-stderr fx-eval --model "$W/model" --cond "$W/cond.safetensors" --steps 2 --res 128x128 --prompts 1 "$W/rtn.safetensors"
	assert_output --partial "PSNR after each step:"
	assert_output --partial "worst layers (output SNR dB):"
}
