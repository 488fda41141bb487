#!/usr/bin/env bats
# --lora FILE[:SCALE]: LoRAs merged as the model is read, by every stage.
# The merged values against diffusers are checked tensor by tensor in
# tests/unit/test-lora.c (fixtures from tests/fixtures/gen_lora_ref.py);
# here: the tools, the model identity, the pipelines and the refusals.
# LoRAs for the synthetic model come from mklora.py (numpy), which also
# merges them the slow way into a model written to disk.

load helper

setup() {
	MK=$BATS_TEST_DIRNAME/../../pipelines
	LORA_PY=$BATS_TEST_DIRNAME/mklora.py
	ST=$BATS_TEST_DIRNAME/stconv.py
	FIX=$BATS_TEST_DIRNAME/../fixtures
	T=$BATS_TEST_TMPDIR
	M=$T/model
	C=$T/cond.safetensors
	fx-synth -q -o "$M" --cond "$C" --prompts 1 --txt-len 16
	FX=$(dirname "$(command -v fx-calib)")
	VARS=(MODEL="$M" COND="$C" FX="$FX" PRECISION=int4 RANK=32 PROMPTS=1 STEPS=1
	      RES=128x128 SAMPLES=64 GRID=2 FXFLAGS=--json)
}

mklora() { python3 "$LORA_PY" "$@"; }

pipeline() {  # pipeline MAKEFILE VAR=... : the tools' JSON reports in $T/reports
	local mk=$1; shift
	make -s -f "$MK/$mk" "${VARS[@]}" "$@" > "$T/make.log" 2>&1 || { cat "$T/make.log"; return 1; }
	grep '^{"schema":"fx-stage/1"' "$T/make.log" > "$T/reports"
}

report() {  # report TOOL PY-EXPR over r (that tool's report)
	python3 - "$T/reports" "$1" "$2" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
r = [x for x in rs if x["tool"] == sys.argv[2]]
assert len(r) == 1, (sys.argv[2], rs)
r = r[0]
if not eval(sys.argv[3]):
    print(sys.argv[2], json.dumps(r)[:2000])
    sys.exit(1)
PY
}

same_tensors() {  # same_tensors A B: every tensor's dtype, shape and bytes
	run python3 "$ST" diff "$1" "$2"
	[ "$status" -eq 0 ] || { echo "tensors differ between $1 and $2:"; echo "$output" | head; return 1; }
}

@test "every tool that reads a model takes --lora and --lora-ignore-unknown" {
	for t in fx-calib fx-lowrank fx-quant fx-pack fx-meta fx-verify fx-eval; do
		run -0 "$t" --help
		assert_output --partial "--lora FILE[:SCALE]"
		assert_output --partial "--lora-ignore-unknown"
	done
	run -2 fx-quant --model "$M" --lora ":0.5" --precision int4 -o "$T/q.safetensors"
	assert_output --partial "FILE[:SCALE]"
	run -2 fx-verify --lora x.safetensors "$M"
	assert_output --partial "--lora needs --model"
}

@test "each naming and dtype of the fixtures reads against the tiny model, both layouts" {
	for f in peft peft-bias peft-noprefix-f16 peft-meta kohya kohya-bf16 kohya-fp8 xlabs comfyui-bf16; do
		for m in "$FIX/flux-tiny" "$FIX/flux-tiny-bfl.safetensors"; do
			run -0 fx-verify --model "$m" --lora "$FIX/lora/$f.safetensors:0.7" "$m"
			assert_output --partial "[OK] lora: '$FIX/lora/$f.safetensors'"
		done
	done
	run -0 fx-verify --model "$FIX/flux-tiny" --lora "$FIX/lora/kohya.safetensors" "$FIX/flux-tiny"
	assert_output --partial "(kohya naming"
	run -0 fx-verify --model "$FIX/flux-tiny" --lora "$FIX/lora/xlabs.safetensors" "$FIX/flux-tiny"
	assert_output --partial "(xlabs naming"
	run -0 fx-verify --model "$FIX/flux-tiny" --lora "$FIX/lora/comfyui-bf16.safetensors" "$FIX/flux-tiny"
	assert_output --partial "(bfl naming"
}

@test "model + LoRAs through the pipeline = the merged model saved and quantized the slow way" {
	# kohya on the fused BFL layers (exact merge) then PEFT (not exact), two scales
	mklora make "$M" "$T/k.safetensors" kohya --exact
	mklora make "$M" "$T/p.safetensors" peft --seed 2
	mklora merge "$M" "$T/merged" "$T/k.safetensors:0.5" "$T/p.safetensors:0.8"
	pipeline flux-svdq.mk OUT="$T/a" LORA="$T/k.safetensors:0.5 $T/p.safetensors:0.8"
	pipeline flux-svdq.mk OUT="$T/b" MODEL="$T/merged" NAME=model
	for f in calib branch-r32-int4 quant-r32-int4 svdq-int4_r32-model; do
		same_tensors "$T/a/$f.safetensors" "$T/b/$f.safetensors"
	done
	# the identities differ: one model is the other plus LoRAs
	a=$(json_get - 'd["model"]' <<<"$(python3 -c 'import json,sys,struct; f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]; print(json.loads(f.read(n))["__metadata__"]["fx.inputs"])' "$T/a/quant-r32-int4.safetensors")")
	b=$(json_get - 'd["model"]' <<<"$(python3 -c 'import json,sys,struct; f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]; print(json.loads(f.read(n))["__metadata__"]["fx.inputs"])' "$T/b/quant-r32-int4.safetensors")")
	[ "$a" != "$b" ]
}

@test "the BFL layout with the same LoRAs gives the same quantized bytes" {
	fx-synth -q --layout bfl -o "$T/bfl.safetensors"
	mklora make "$M" "$T/k.safetensors" kohya
	mklora make "$M" "$T/x.safetensors" xlabs --seed 3
	for m in "$M" "$T/bfl.safetensors"; do
		fx-quant -q --model "$m" --lora "$T/k.safetensors:0.8" --lora "$T/x.safetensors:-0.5" \
			--precision fp4 -o "$T/q-$(basename "$m").safetensors"
	done
	same_tensors "$T/q-model.safetensors" "$T/q-bfl.safetensors.safetensors"
}

@test "block shards with LoRAs: the same checkpoint, the merged shard files keep fx.loras" {
	mklora make "$M" "$T/l.safetensors" kohya
	# round-to-nearest codes, one calibration: the branch shards share their
	# inputs, so fx-lowrank --merge joins them (GPTQ shards: 0800)
	pipeline flux-svdq.mk OUT="$T/a" LORA="$T/l.safetensors:0.5" GPTQ=0
	pipeline sharded.mk OUT="$T/b" LORA="$T/l.safetensors:0.5" SHARDS="0-1 2-3" GPTQ=0
	same_tensors "$T/a/svdq-int4_r32-model.safetensors" "$T/b/svdq-int4_r32-model.safetensors"
	fx-lowrank -q --merge -o "$T/q.safetensors" "$T"/b/branch-r32-int4.b*.safetensors
	run -0 fx-verify --model "$M" --lora "$T/l.safetensors:0.5" "$T/q.safetensors"
	assert_output --partial "loras: made with 1 LoRA merged: l.safetensors:0.5"
	assert_output --partial "[OK] provenance: model"
}

@test "a scale change reruns every stage from fx-calib on; unchanged, nothing" {
	mklora make "$M" "$T/l.safetensors" peft --seed 5
	pipeline flux-svdq.mk OUT="$T/o" LORA="$T/l.safetensors:0.5"
	pipeline flux-svdq.mk OUT="$T/o" LORA="$T/l.safetensors:0.5"
	for t in fx-calib fx-lowrank fx-quant fx-pack fx-meta; do
		report $t 'r["up_to_date"] is True'
	done
	pipeline flux-svdq.mk OUT="$T/o" LORA="$T/l.safetensors:0.25"
	report fx-calib 'r["up_to_date"] is False and len(r["computed"]) > 0'
	report fx-lowrank 'r["up_to_date"] is False and len(r["computed"]) == 24'
	report fx-quant 'r["up_to_date"] is False and len(r["computed"]) == 30'
	report fx-pack 'r["up_to_date"] is False'
	report fx-meta 'r["up_to_date"] is False'
	run -0 fx-verify "$T/o/svdq-int4_r32-model.safetensors"
	assert_output --partial "loras: made with 1 LoRA merged: l.safetensors:0.25 (sha256 "
	# the same value spelt otherwise is the same scale
	pipeline flux-svdq.mk OUT="$T/o" LORA="$T/l.safetensors:.250"
	report fx-calib 'r["up_to_date"] is True'
}

@test "without calibration (RTN) only the layers a LoRA touches are redone" {
	mklora make "$M" "$T/l.safetensors" kohya --only double_blocks_0_img_attn_qkv
	pipeline flux-rtn.mk OUT="$T/o" LORA="$T/l.safetensors:0.5"
	pipeline flux-rtn.mk OUT="$T/o" LORA="$T/l.safetensors:0.75"
	report fx-quant 'r["computed"] == ["transformer_blocks.0.qkv_proj"] and len(r["reused"]) == 29'
	pipeline flux-rtn.mk OUT="$T/o"
	report fx-quant 'r["computed"] == ["transformer_blocks.0.qkv_proj"] and len(r["reused"]) == 29'
	# no LoRA: the same bytes as a model that never had one
	fx-quant -q --model "$M" --precision int4 -o "$T/plain.safetensors"
	same_tensors "$T/o/quant-rtn-int4.safetensors" "$T/plain.safetensors"
}

@test "the order of the LoRAs is part of the model identity" {
	mklora make "$M" "$T/a.safetensors" peft --seed 1
	mklora make "$M" "$T/b.safetensors" peft --seed 2
	fx-quant -q --json --model "$M" --lora "$T/a.safetensors" --lora "$T/b.safetensors" \
		--precision int4 -o "$T/ab.safetensors" > /dev/null
	run -1 fx-verify --model "$M" --lora "$T/b.safetensors" --lora "$T/a.safetensors" "$T/ab.safetensors"
	assert_output --partial "with the given LoRAs"
	run -0 fx-verify --model "$M" --lora "$T/a.safetensors" --lora "$T/b.safetensors:1.0" "$T/ab.safetensors"
	assert_output --partial "[OK] provenance: model"
	run -1 fx-verify --model "$M" "$T/ab.safetensors"
	assert_output --partial "give the LoRAs it records (fx.loras) with --lora"
	# the next stage checks the same identity
	run -3 fx-pack --model "$M" --lora "$T/a.safetensors" --quant "$T/ab.safetensors" -o "$T/p.safetensors"
	assert_output --partial "made from another model"
}

@test "fx-meta keeps fx.loras, refuses other LoRAs on an fx checkpoint, records them on a foreign one" {
	mklora make "$M" "$T/l.safetensors" peft
	mklora make "$M" "$T/o.safetensors" peft --seed 9
	pipeline flux-rtn.mk OUT="$T/o" LORA="$T/l.safetensors:0.5"
	f=$T/o/rtn-int4-model.safetensors
	run -0 fx-meta --check "$f"
	assert_output --partial "made with 1 LoRA merged"
	run -3 fx-meta --model "$M" --lora "$T/o.safetensors:0.5" "$f"
	assert_output --partial "not the LoRAs given"
	run -0 fx-meta --model "$M" --lora "$T/l.safetensors:0.5" "$f"
	# another tool's checkpoint: no fx.* keys; the LoRAs given are recorded
	python3 - "$f" "$T/foreign.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["__metadata__"] = {k: v for k, v in h["__metadata__"].items() if not k.startswith("fx.")}
hb = json.dumps(h).encode()
hb += b" " * (-len(hb) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
PY
	run -0 fx-meta --model "$M" --lora "$T/o.safetensors:0.5" "$T/foreign.safetensors"
	run -0 fx-verify "$T/foreign.safetensors"
	assert_output --partial "loras: made with 1 LoRA merged: o.safetensors:0.5"
}

@test "fx-eval compares against the source with the LoRAs merged" {
	# a strong LoRA: each layer's runtime output is far nearer the merged
	# layer than the bare one (the final latents of this random model say little)
	mklora make "$M" "$T/l.safetensors" peft
	pipeline flux-rtn.mk OUT="$T/o" LORA="$T/l.safetensors:3"
	f=$T/o/rtn-int4-model.safetensors
	snr='sum(x["snr"] for x in d["checkpoints"][0]["layers"]) / len(d["checkpoints"][0]["layers"])'
	run -0 fx-eval --json --model "$M" --lora "$T/l.safetensors:3" --cond "$C" --steps 1 \
		--res 128x128 "$f"
	with=$(json_get - "$snr" <<<"$output")
	run -0 fx-eval --json --model "$M" --cond "$C" --steps 1 --res 128x128 "$f"
	without=$(json_get - "$snr" <<<"$output")
	python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(0 if a > b + 1 else 1)" "$with" "$without"
}

@test "bad LoRAs are refused naming the key" {
	q() { fx-quant --model "$M" --lora "$1" --precision int4 -o "$T/q.safetensors" "${@:2}"; }
	mklora bad "$M" "$T/shape.safetensors" shape
	run -3 q "$T/shape.safetensors"
	assert_output --partial "LoRA layer 'transformer.transformer_blocks.0.attn.to_q' has down [2,255], but 'transformer_blocks.0.attn.to_q' takes 256 inputs"
	mklora bad "$M" "$T/unknown.safetensors" unknown
	run -3 q "$T/unknown.safetensors"
	assert_output --partial "LoRA key 'transformer.transformer_blocks.0.attn.to_z' is for 'transformer_blocks.0.attn.to_z', which the model"
	mklora bad "$M" "$T/sdxl.safetensors" sdxl
	run -3 q "$T/sdxl.safetensors"
	assert_output --partial "LoRA key 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight' matches no layer of a FLUX transformer"
	mklora bad "$M" "$T/nan.safetensors" nan
	run -3 q "$T/nan.safetensors"
	assert_output --partial "LoRA tensor 'transformer.transformer_blocks.0.attn.to_q.lora_B.weight' has NaN at [3,1]"
	mklora bad "$M" "$T/dora.safetensors" dora
	run -3 q "$T/dora.safetensors"
	assert_output --partial "'transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector' is a DoRA magnitude"
	mklora bad "$M" "$T/orphan.safetensors" orphan
	run -3 q "$T/orphan.safetensors"
	assert_output --partial "LoRA layer 'transformer.transformer_blocks.0.attn.to_q' has no up"
	mklora bad "$M" "$T/te.safetensors" te
	run -3 q "$T/te.safetensors"
	assert_output --partial "'lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight' is for a text encoder"
	run -0 q "$T/te.safetensors" --lora-ignore-unknown
	assert_output --partial "2 text-encoder keys ignored"
	# another model's shapes: a LoRA for a wider FLUX
	fx-synth -q -o "$T/wide" --hidden 384
	mklora make "$T/wide" "$T/wide.safetensors" kohya
	run -3 q "$T/wide.safetensors"
	assert_output --partial "lora_unet_double_blocks_0_img_attn_qkv' has 1152 outputs, a FLUX transformer of hidden size 256 has 768"
	run -4 q "$T/missing.safetensors"
	assert_output --partial "missing.safetensors"
}
