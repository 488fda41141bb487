#!/usr/bin/env bats
# First contact: the set-up script, every model form a user has (pipeline
# folder, transformer folder, index, one shard, single file), FP8/F16 and
# ComfyUI all-in-one fine-tunes.
load helper

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
CONV="$BATS_TEST_DIRNAME/stconv.py"
export PYTHONPATH=$BATS_TEST_DIRNAME

# ---- .ci/deps with stubbed dpkg-query / apt-get / id / sudo ---------------

# stubs INSTALLED UID SUDO_OK: dpkg-query knows the packages listed in
# $S/installed; apt-get logs its arguments to $S/apt.log and "installs".
stubs() {
	S=$BATS_TEST_TMPDIR/stub
	mkdir -p "$S"
	printf '%s\n' $1 >"$S/installed"
	cat >"$S/dpkg-query" <<EOF
#!/bin/bash
p=\${@: -1}
grep -qx "\$p" "$S/installed" && { printf 'install ok installed'; exit 0; }
echo "dpkg-query: no packages found matching \$p" >&2; exit 1
EOF
	cat >"$S/apt-get" <<EOF
#!/bin/bash
echo "apt-get \$* (DEBIAN_FRONTEND=\$DEBIAN_FRONTEND)" >>"$S/apt.log"
[ -e "$S/apt-fails" ] && exit 100
exit 0
EOF
	cat >"$S/id" <<EOF
#!/bin/bash
[ "\$1" = -u ] && { echo $2; exit 0; }
exec /usr/bin/id "\$@"
EOF
	if [ "$3" = yes ]; then
		printf '#!/bin/bash\n[ "$1" = -n ] && shift\n[ "$1" = true ] && exit 0\necho "sudo $*" >>"%s/apt.log"\nexec "$@"\n' "$S" >"$S/sudo"
	else
		printf '#!/bin/bash\necho "sudo: a password is required" >&2\nexit 1\n' >"$S/sudo"
	fi
	chmod +x "$S"/*
}

@test "deps: nothing missing: no apt-get, exit 0" {
	stubs "$(bash "$REPO/.ci/deps" test --list)" 0 no
	PATH=$S:$PATH run bash "$REPO/.ci/deps" test
	assert_success
	[ ! -e "$S/apt.log" ]
}

@test "deps: as root the missing packages are installed with apt-get" {
	stubs "build-essential libopenblas-dev zlib1g-dev" 0 no
	PATH=$S:$PATH run bash "$REPO/.ci/deps" build
	assert_success
	assert_output --partial "installing missing packages: liblapacke-dev libjansson-dev libssl-dev libisal-dev libxxhash-dev"
	grep -q "^apt-get update" "$S/apt.log"
	grep -q "^apt-get install -y -qq liblapacke-dev libjansson-dev libssl-dev libisal-dev libxxhash-dev (DEBIAN_FRONTEND=noninteractive)$" "$S/apt.log"
	! grep -q "build-essential" "$S/apt.log"
}

@test "deps: with password-less sudo apt-get runs through sudo" {
	stubs "$(bash "$REPO/.ci/deps" build --list)" 1000 yes
	PATH=$S:$PATH run bash "$REPO/.ci/deps" test
	assert_success
	grep -q "^sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcmocka-dev bats" "$S/apt.log"
}

@test "deps: no root, no sudo: stops with the one apt-get line, installs nothing" {
	stubs "build-essential" 1000 no
	PATH=$S:$PATH run bash "$REPO/.ci/deps" build
	assert_failure 1
	assert_output --partial "sudo apt-get install -y libopenblas-dev liblapacke-dev zlib1g-dev libjansson-dev libssl-dev libisal-dev libxxhash-dev"
	[ ! -e "$S/apt.log" ]
}

@test "deps: a failing apt-get stops with the line to run" {
	stubs "" 0 no
	touch "$S/apt-fails"
	PATH=$S:$PATH run bash "$REPO/.ci/deps" build
	assert_failure 1
	assert_output --partial "apt-get failed; run by hand: sudo apt-get install -y build-essential"
}

@test "deps: make stops before compiling anything when packages are missing" {
	stubs "build-essential" 1000 no
	PATH=$S:$PATH run env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES make -C "$REPO" --no-print-directory B="$BATS_TEST_TMPDIR/b" all
	assert_failure
	assert_output --partial "sudo apt-get install -y libopenblas-dev"
	[ ! -e "$BATS_TEST_TMPDIR/b" ]
	PATH=$S:$PATH run env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES make -C "$REPO" --no-print-directory B="$BATS_TEST_TMPDIR/b" check
	assert_failure
	assert_output --partial "libcmocka-dev"
	[ ! -e "$BATS_TEST_TMPDIR/b" ]
}

@test "deps: .ci/run uses the same list" {
	grep -q "\.ci/deps test" "$REPO/.ci/run"
	! grep -q "libopenblas-dev" "$REPO/.ci/run"
}

# ---- model forms ----------------------------------------------------------

# A folder laid out like the FLUX.1-dev download: model_index.json,
# transformer/ (3 shards + index), the encoders', tokenizers' and VAE's
# folders, and flux1-dev.safetensors + ae.safetensors at the root.
mk_pipeline() {
	local P=$1
	mkdir -p "$P"
	fx-synth -q -o "$P/transformer" --shards 3 --cond "$BATS_TEST_TMPDIR/cond.safetensors" \
		--prompts 2 --txt-len 16
	fx-synth -q --layout bfl -o "$P/flux1-dev.safetensors"
	cat >"$P/model_index.json" <<'EOF'
{ "_class_name": "FluxPipeline", "_diffusers_version": "0.30.0",
  "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
  "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"] }
EOF
	mkdir -p "$P/text_encoder" "$P/text_encoder_2" "$P/tokenizer" "$P/tokenizer_2" "$P/vae" \
		"$P/scheduler"
	echo '{"_class_name": "AutoencoderKL"}' >"$P/vae/config.json"
	echo '{"architectures": ["CLIPTextModel"]}' >"$P/text_encoder/config.json"
	echo '{"architectures": ["T5EncoderModel"]}' >"$P/text_encoder_2/config.json"
	echo '{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}' >"$P/scheduler/scheduler_config.json"
	python3 - "$P" <<'PY'
import sys
from stconv import save
import numpy as np
P = sys.argv[1]
t = {"decoder.conv_in.weight": ("F32", [2, 2], np.ones(4, "<f4").tobytes())}
save(P + "/vae/diffusion_pytorch_model.safetensors", t)
save(P + "/ae.safetensors", t)
save(P + "/text_encoder/model.safetensors", {"text_model.embeddings.position_ids": ("I64", [1, 2], np.arange(2, dtype="<i8").tobytes())})
save(P + "/text_encoder_2/model-00001-of-00002.safetensors", t)
save(P + "/text_encoder_2/model-00002-of-00002.safetensors", {"x": ("F32", [1], np.ones(1, "<f4").tobytes())})
PY
	echo '{"metadata": {}, "weight_map": {"decoder.conv_in.weight": "model-00001-of-00002.safetensors", "x": "model-00002-of-00002.safetensors"}}' \
		>"$P/text_encoder_2/model.safetensors.index.json"
	echo '{}' >"$P/tokenizer/vocab.json"
	echo '{}' >"$P/tokenizer_2/tokenizer.json"
}

# The five forms of one transformer.
forms() {
	local P=$1
	FORMS=("$P" "$P/transformer" "$P/transformer/diffusion_pytorch_model.safetensors.index.json"
		"$P/transformer/diffusion_pytorch_model-00002-of-00003.safetensors" "$BATS_TEST_TMPDIR/one.safetensors")
	# the single-file form of the same weights: the shards merged
	python3 - "$P/transformer" "$BATS_TEST_TMPDIR/one.safetensors" <<'PY'
import glob, sys
from stconv import load, save
out = {}
for f in sorted(glob.glob(sys.argv[1] + "/*-of-*.safetensors")):
    out.update(load(f)[0])
save(sys.argv[2], dict(sorted(out.items())))
PY
}

# tensors IN: the names and bytes of every tensor (no header metadata)
tensor_digest() {
	python3 - "$1" <<'PY'
import hashlib, sys
from stconv import load
t, _ = load(sys.argv[1])
h = hashlib.sha256()
for n in sorted(t):
    dt, sh, raw = t[n]
    h.update(f"{n}|{dt}|{sh}|".encode()); h.update(raw)
print(h.hexdigest())
PY
}

inputs_model() {  # the model identity a file records
	python3 - "$1" <<'PY'
import json, sys
from stconv import load
_, meta = load(sys.argv[1])
print(json.loads(meta["fx.inputs"])["model"])
PY
}

@test "every stage accepts the pipeline folder, the transformer folder, its index, one shard and a single file" {
	P=$BATS_TEST_TMPDIR/FLUX.1-dev
	mk_pipeline "$P"
	forms "$P"
	C=$BATS_TEST_TMPDIR/cond.safetensors
	local i=0 ref_q="" ref_c="" ref_p="" ref_id=""
	for m in "${FORMS[@]}"; do
		i=$((i + 1))
		W=$BATS_TEST_TMPDIR/f$i
		mkdir -p "$W"
		run fx-calib -q --model "$m" --cond "$C" --prompts 1 --steps 1 --res 64x64 --samples 16 -o "$W/calib.st"
		assert_success
		run fx-lowrank -q --model "$m" --calib "$W/calib.st" --rank 16 --alpha-grid 2 -o "$W/branch.st"
		assert_success
		run fx-quant -q --model "$m" --branch "$W/branch.st" --precision fp4 -o "$W/quant.st"
		assert_success
		run fx-pack -q --model "$m" --quant "$W/quant.st" --branch "$W/branch.st" -o "$W/svdq.st"
		assert_success
		run fx-meta -q --model "$m" "$W/svdq.st"
		assert_success
		run fx-verify --model "$m" --calib "$W/calib.st" --branch "$W/branch.st" "$W/svdq.st"
		assert_success
		run fx-verify "$m"
		assert_success
		run fx-eval -q --model "$m" --cond "$C" --prompts 1 --steps 1 --res 64x64 "$W/svdq.st"
		assert_success
		# the same weights in every form: the same tensors and the same identity
		id=$(inputs_model "$W/quant.st")
		c=$(tensor_digest "$W/calib.st")
		q=$(tensor_digest "$W/quant.st")
		p=$(tensor_digest "$W/svdq.st")
		if [ -z "$ref_q" ]; then
			ref_q=$q ref_c=$c ref_p=$p ref_id=$id
		else
			[ "$q" = "$ref_q" ] || { echo "form $m: other quant tensors"; false; }
			[ "$c" = "$ref_c" ] || { echo "form $m: other calib tensors"; false; }
			[ "$p" = "$ref_p" ] || { echo "form $m: other checkpoint tensors"; false; }
		fi
		# folder, index and shard are one set; the merged file is another file
		if [ $i -le 4 ]; then
			[ "$id" = "$ref_id" ] || { echo "form $m: identity $id, not $ref_id"; false; }
		fi
	done
}

@test "the quickstart pipeline runs on a FLUX.1-dev-like download folder" {
	P=$BATS_TEST_TMPDIR/FLUX.1-dev
	mk_pipeline "$P"
	run make --no-print-directory -f "$REPO/pipelines/flux-svdq.mk" FX="$(dirname "$(command -v fx-calib)")" \
		MODEL="$P" COND="$BATS_TEST_TMPDIR/cond.safetensors" OUT="$BATS_TEST_TMPDIR/out" \
		PRECISION=fp4 RANK=16 PROMPTS=1 STEPS=1 RES=64x64 SAMPLES=16 GRID=2
	assert_success
	[ -s "$BATS_TEST_TMPDIR/out/svdq-fp4_r16-flux.1-dev.safetensors" ]
	assert_output --partial "0 errors"
	# a second run does no work
	run make --no-print-directory -f "$REPO/pipelines/flux-svdq.mk" FX="$(dirname "$(command -v fx-calib)")" \
		MODEL="$P" COND="$BATS_TEST_TMPDIR/cond.safetensors" OUT="$BATS_TEST_TMPDIR/out" \
		PRECISION=fp4 RANK=16 PROMPTS=1 STEPS=1 RES=64x64 SAMPLES=16 GRID=2
	assert_success
	assert_output --partial "up to date"
	refute_output --partial "layers quantized"
}

@test "a shard of a set without its index is read alone and named" {
	fx-synth -q -o "$BATS_TEST_TMPDIR/m" --shards 2
	rm "$BATS_TEST_TMPDIR/m/diffusion_pytorch_model.safetensors.index.json"
	run fx-quant -q --precision fp4 --model "$BATS_TEST_TMPDIR/m/diffusion_pytorch_model-00001-of-00002.safetensors" -o "$BATS_TEST_TMPDIR/q.st"
	assert_failure 3
	assert_output --partial "missing tensor"
}

# ---- FP8, F16, all-in-one ---------------------------------------------------

# same_checkpoint ORIG VARIANT: RTN fp4 and int4 quant + pack of both give
# the same tensors
same_checkpoint() {
	local a=$1 b=$2 p
	for p in fp4 int4; do
		fx-quant -q --model "$a" --precision $p -o "$BATS_TEST_TMPDIR/a.q" --force
		fx-quant -q --model "$b" --precision $p -o "$BATS_TEST_TMPDIR/b.q" --force
		fx-pack -q --model "$a" --quant "$BATS_TEST_TMPDIR/a.q" -o "$BATS_TEST_TMPDIR/a.p" --force
		fx-pack -q --model "$b" --quant "$BATS_TEST_TMPDIR/b.q" -o "$BATS_TEST_TMPDIR/b.p" --force
		run python3 "$CONV" diff "$BATS_TEST_TMPDIR/a.q" "$BATS_TEST_TMPDIR/b.q"
		assert_success
		run python3 "$CONV" diff "$BATS_TEST_TMPDIR/a.p" "$BATS_TEST_TMPDIR/b.p"
		assert_success
	done
}

@test "FP8 E4M3 and E5M2 files, with and without scale tensors, quantize like the BF16 original" {
	T=$BATS_TEST_TMPDIR
	fx-synth -q --layout bfl -o "$T/src.safetensors"
	for fmt in e4m3 e5m2; do
		# the BF16 original holds values exact in the FP8 format (times 2^-4)
		python3 "$CONV" grid "$T/src.safetensors" "$T/g-$fmt.safetensors" $fmt 0.0625
		python3 "$CONV" fp8 "$T/g-$fmt.safetensors" "$T/s-$fmt.safetensors" $fmt 0.0625
		run fx-verify "$T/s-$fmt.safetensors"
		assert_success
		same_checkpoint "$T/g-$fmt.safetensors" "$T/s-$fmt.safetensors"
		# without a scale: every tensor (norms and biases too) as FP8 codes
		python3 "$CONV" grid "$T/src.safetensors" "$T/u-$fmt.safetensors" $fmt 1
		python3 "$CONV" fp8all "$T/u-$fmt.safetensors" "$T/v-$fmt.safetensors" $fmt
		same_checkpoint "$T/u-$fmt.safetensors" "$T/v-$fmt.safetensors"
	done
	# the scale really is applied: dropping it changes the result
	python3 - "$T/s-e4m3.safetensors" "$T/noscale.safetensors" <<'PY'
import sys
from stconv import load, save
t, m = load(sys.argv[1])
save(sys.argv[2], {n: v for n, v in t.items() if not n.endswith(".scale_weight")}, m)
PY
	fx-quant -q --model "$T/noscale.safetensors" --precision int4 -o "$T/n.q"
	fx-quant -q --model "$T/g-e4m3.safetensors" --precision int4 -o "$T/g.q"
	run python3 "$CONV" diff "$T/n.q" "$T/g.q"
	assert_failure
}

@test "F16 files quantize like the BF16 original" {
	T=$BATS_TEST_TMPDIR
	fx-synth -q -o "$T/m"
	python3 "$CONV" grid "$T/m/diffusion_pytorch_model.safetensors" "$T/g.safetensors" e4m3 0.0625
	python3 "$CONV" f16 "$T/g.safetensors" "$T/h.safetensors"
	same_checkpoint "$T/g.safetensors" "$T/h.safetensors"
}

@test "ComfyUI all-in-one and model.diffusion_model.-prefixed files quantize like the original" {
	T=$BATS_TEST_TMPDIR
	fx-synth -q --layout bfl -o "$T/src.safetensors"
	python3 "$CONV" grid "$T/src.safetensors" "$T/g.safetensors" e4m3 0.0625
	python3 "$CONV" fp8 "$T/g.safetensors" "$T/s.safetensors" e4m3 0.0625
	python3 "$CONV" allinone "$T/s.safetensors" "$T/aio.safetensors" model.diffusion_model.+marker
	python3 - "$T/g.safetensors" "$T/pre.safetensors" <<'PY'
import sys
from stconv import load, save
t, m = load(sys.argv[1])
save(sys.argv[2], {"model.diffusion_model." + n: v for n, v in t.items()}, m)
PY
	same_checkpoint "$T/g.safetensors" "$T/pre.safetensors"
	same_checkpoint "$T/g.safetensors" "$T/aio.safetensors"
	run fx-quant --precision fp4 --model "$T/aio.safetensors" -o "$T/x.q"
	assert_success
	assert_output --partial "4 tensors outside the transformer ignored (text_encoders.* 2, vae.* 2)"
	assert_output --partial "FP8 activation scales and markers ignored"
	# the diffusers naming inside an all-in-one file too
	fx-synth -q -o "$T/d"
	python3 "$CONV" allinone "$T/d/diffusion_pytorch_model.safetensors" "$T/daio.safetensors" model.diffusion_model.
	same_checkpoint "$T/d" "$T/daio.safetensors"
}

@test "all-in-one: an unexpected tensor under the transformer's prefix is still an error" {
	T=$BATS_TEST_TMPDIR
	fx-synth -q --layout bfl -o "$T/src.safetensors"
	python3 "$CONV" allinone "$T/src.safetensors" "$T/aio.safetensors" model.diffusion_model.
	python3 - "$T/aio.safetensors" <<'PY'
import sys
from stconv import load, save
t, m = load(sys.argv[1])
t["model.diffusion_model.double_blocks.0.img_attn.extra.weight"] = ("BF16", [2], b"\0\0\0\0")
save(sys.argv[1], t, m)
PY
	run fx-quant --precision fp4 --model "$T/aio.safetensors" -o "$T/x.q"
	assert_failure 3
	assert_output --partial "unexpected tensor 'model.diffusion_model.double_blocks.0.img_attn.extra.weight'"
}

@test "FP8: a NaN code, a bad scale tensor and an overflowing scale are named" {
	T=$BATS_TEST_TMPDIR
	fx-synth -q --layout bfl -o "$T/src.safetensors"
	python3 "$CONV" fp8 "$T/src.safetensors" "$T/s.safetensors" e4m3 0.0625
	edit() {  # edit IN OUT PYTHON (t: the tensors)
		python3 - "$1" "$2" "$3" <<'PY'
import sys
from stconv import load, save
import numpy as np
t, m = load(sys.argv[1])
exec(sys.argv[3])
save(sys.argv[2], t, m)
PY
	}
	W=double_blocks.1.img_mlp.0
	edit "$T/s.safetensors" "$T/nan.safetensors" "d,s,r=t['$W.weight']; r=bytearray(r); r[5]=0x7f; t['$W.weight']=(d,s,bytes(r))"
	run fx-quant --precision fp4 --model "$T/nan.safetensors" -o "$T/x.q"
	assert_failure 3
	assert_output --partial "tensor '$W.weight' has NaN at [0,5]"
	edit "$T/s.safetensors" "$T/sh.safetensors" "t['$W.scale_weight']=('F32',[2],np.ones(2,'<f4').tobytes())"
	run fx-quant --precision fp4 --model "$T/sh.safetensors" -o "$T/x.q"
	assert_failure 3
	assert_output --partial "tensor '$W.scale_weight' (the scale of '$W.weight') is F32 of 2 elements"
	edit "$T/s.safetensors" "$T/inf.safetensors" "t['$W.scale_weight']=('F32',[],np.float32(np.inf).tobytes())"
	run fx-quant --precision fp4 --model "$T/inf.safetensors" -o "$T/x.q"
	assert_failure 3
	assert_output --partial "tensor '$W.scale_weight' (the scale of '$W.weight') is inf"
	edit "$T/s.safetensors" "$T/big.safetensors" "t['$W.scale_weight']=('F32',[],np.float32(1e37).tobytes())"
	run fx-quant --precision fp4 --model "$T/big.safetensors" -o "$T/x.q"
	assert_failure 3
	assert_output --regexp "tensor '$W.weight' has -?Inf at \[[0-9]+,[0-9]+\] after its scale 1e\+37"
}
