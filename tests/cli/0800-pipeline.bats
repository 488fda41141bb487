#!/usr/bin/env bats
# The pipelines as users run them: the whole chain, reruns of one stage,
# block shards merged byte-identically.

load helper

setup() {
	MK=$BATS_TEST_DIRNAME/../../pipelines
	M=$BATS_TEST_TMPDIR/model
	C=$BATS_TEST_TMPDIR/cond.safetensors
	O=$BATS_TEST_TMPDIR/out
	fx-synth -q -o "$M" --cond "$C" --prompts 2 --txt-len 16
	FX=$(dirname "$(command -v fx-calib)")
	# one sampling step: the edit test below relies on earlier layers' inputs
	# not depending on later blocks (with more steps every activation changes)
	VARS=(MODEL="$M" COND="$C" OUT="$O" FX="$FX" PRECISION=int4 RANK=32 PROMPTS=2 STEPS=1
	      RES=128x128 SAMPLES=64 GRID=2 FXFLAGS=--json)
}

pipeline() {  # runs the SVDQ pipeline, keeps the tools' JSON reports in $BATS_TEST_TMPDIR/reports
	make -s -f "$MK/flux-svdq.mk" "${VARS[@]}" "$@" > "$BATS_TEST_TMPDIR/make.log" 2>&1 || {
		cat "$BATS_TEST_TMPDIR/make.log"; return 1; }
	grep '^{"schema":"fx-stage/1"' "$BATS_TEST_TMPDIR/make.log" > "$BATS_TEST_TMPDIR/reports"
}

report() {  # report TOOL PY-EXPR over r (that tool's report)
	python3 - "$BATS_TEST_TMPDIR/reports" "$1" "$2" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
r = [x for x in rs if x["tool"] == sys.argv[2]]
assert len(r) == 1, (sys.argv[2], rs)
r = r[0]
ok = eval(sys.argv[3])
if not ok:
    print(sys.argv[2], json.dumps(r)[:2000])
    sys.exit(1)
PY
}

snapshot() { (cd "$O" && sha256sum *.safetensors); }

@test "the pipeline writes a checkpoint that passes the audit" {
	pipeline
	f=$O/svdq-int4_r32-model.safetensors
	[ -s "$f" ]
	run -0 fx-verify "$f"
	assert_output --partial "of 30 modules complete, INT4, rank 32"
	run -0 fx-meta --check "$f"
	# GPTQ by default: fx-calib --hessian, fx-lowrank --for-gptq, fx-quant --gptq
	run -0 fx-verify "$O/calib.safetensors"
	assert_output --partial '"hessian":1'
	run -0 fx-verify "$O/branch-r32-int4.safetensors"
	assert_output --partial '"gptq_weight":0.05'
	run -0 fx-verify "$O/quant-r32-int4.safetensors"
	assert_output --partial '"gptq":1'
}

@test "rerun with nothing changed: every stage up to date, no file changes" {
	pipeline
	before=$(snapshot)
	pipeline
	for t in fx-calib fx-lowrank fx-quant fx-pack fx-meta; do
		report $t 'r["up_to_date"] is True'
	done
	[ "$(snapshot)" = "$before" ]
}

@test "changing RANK reruns everything after fx-calib, never fx-calib" {
	pipeline
	pipeline RANK=16
	report fx-calib 'r["up_to_date"] is True'
	report fx-lowrank 'not r["up_to_date"] and len(r["computed"]) == 24'
	report fx-quant 'not r["up_to_date"] and len(r["computed"]) == 30'
	report fx-pack 'not r["up_to_date"]'
	run -0 fx-verify "$O/svdq-int4_r16-model.safetensors"
	assert_output --partial "rank 16"
}

@test "editing one block's weights recomputes only that block's layers" {
	have_py_safetensors || skip "python safetensors not installed"
	pipeline
	# scale single block 1's proj_out (its out_proj and mlp_fc2 groups) by 2 in BF16
	python3 - "$M/diffusion_pytorch_model.safetensors" <<'PY'
import json, struct, sys
import numpy as np
p = sys.argv[1]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
b, e = hdr["single_transformer_blocks.1.proj_out.weight"]["data_offsets"]
a = np.frombuffer(bytes(raw[8 + n + b:8 + n + e]), dtype=np.uint16).copy()
f = (a.astype(np.uint32) << 16).view(np.float32) * 2      # exact in BF16
raw[8 + n + b:8 + n + e] = (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()
open(p, "wb").write(raw)
PY
	pipeline
	want='sorted(r["computed"]) == ["single_transformer_blocks.1.mlp_fc2", "single_transformer_blocks.1.out_proj"]'
	report fx-calib 'r["computed"] == [] and len(r["reused"]) == 30'
	report fx-lowrank "$want and len(r['reused']) == 22"
	report fx-quant "$want and len(r['reused']) == 28"
	run -0 fx-verify "$O/svdq-int4_r32-model.safetensors"
}

@test "deleting the branch file reruns fx-lowrank, which restores the same file" {
	pipeline
	b=$O/branch-r32-int4.safetensors
	sum=$(sha256sum < "$b")
	rm "$b"
	pipeline
	report fx-calib 'r["up_to_date"] is True'
	report fx-lowrank 'not r["up_to_date"] and len(r["computed"]) == 24'
	report fx-quant 'r["up_to_date"] is True'
	report fx-pack 'r["up_to_date"] is True'
	[ "$(sha256sum < "$b")" = "$sum" ]
}

@test "block shards run with make -j merge into a byte-identical checkpoint" {
	# GPTQ (default): each shard calibrates its blocks with --hessian
	pipeline
	run -0 make -s -j3 -f "$MK/sharded.mk" "${VARS[@]}" OUT="$BATS_TEST_TMPDIR/sh" SHARDS="0-0 1-2 3-3" FXFLAGS=
	cmp "$O/svdq-int4_r32-model.safetensors" "$BATS_TEST_TMPDIR/sh/svdq-int4_r32-model.safetensors"
	run -0 fx-verify "$BATS_TEST_TMPDIR/sh/quant-r32-int4.b1-2.safetensors"
	assert_output --partial '"gptq":1'
	run -0 fx-verify "$BATS_TEST_TMPDIR/sh/calib.b1-2.safetensors"
	assert_output --partial '"hessian":1'
	[ ! -e "$BATS_TEST_TMPDIR/sh/calib.safetensors" ]
	# GPTQ=0: one calibration, round-to-nearest codes
	pipeline GPTQ=0
	run -0 fx-verify "$O/quant-r32-int4.safetensors"
	refute_output --partial '"gptq"'
	run -0 make -s -j3 -f "$MK/sharded.mk" "${VARS[@]}" OUT="$BATS_TEST_TMPDIR/sh0" SHARDS="0-0 1-2 3-3" FXFLAGS= GPTQ=0
	cmp "$O/svdq-int4_r32-model.safetensors" "$BATS_TEST_TMPDIR/sh0/svdq-int4_r32-model.safetensors"
	run -2 make -s -f "$MK/sharded.mk" "${VARS[@]}" SHARDS=0-3 GPTQ=2
	assert_output --partial "GPTQ must be 0 or 1"
	run -2 make -s -f "$MK/flux-svdq.mk" "${VARS[@]}" GPTQ=yes
	assert_output --partial "GPTQ must be 0 or 1"
}

@test "shards that overlap or leave a gap are refused by fx-pack" {
	for r in 0-1 1-2 3-3; do
		fx-quant -q --model "$M" --precision int4 --blocks $r -o "$BATS_TEST_TMPDIR/q$r.safetensors"
	done
	run -3 --separate-stderr fx-pack --model "$M" --quant "$BATS_TEST_TMPDIR/q0-1.safetensors" \
		--quant "$BATS_TEST_TMPDIR/q1-2.safetensors" -o "$BATS_TEST_TMPDIR/p.safetensors"
	[[ "$stderr" == *"also in another shard"* ]]
	run -3 --separate-stderr fx-pack --model "$M" --quant "$BATS_TEST_TMPDIR/q0-1.safetensors" \
		--quant "$BATS_TEST_TMPDIR/q3-3.safetensors" -o "$BATS_TEST_TMPDIR/p.safetensors"
	[[ "$stderr" == *"single_transformer_blocks.0"*"missing"* ]]
}

@test "the RTN pipeline and the metadata repair example run" {
	run -0 make -s -f "$MK/flux-rtn.mk" MODEL="$M" OUT="$O" FX="$FX" PRECISION=fp4
	assert_output --partial "0 errors"
	f=$O/rtn-fp4-model.safetensors
	run -0 make -s -f "$MK/repair-meta.mk" FILE="$f" FX="$FX"
	assert_output --partial "0 errors"
}

@test "fx-lowrank --merge joins block shards into the file one run writes; overlaps and gaps are refused" {
	c=$BATS_TEST_TMPDIR/calib.safetensors
	fx-calib -q --model "$M" --cond "$C" --steps 1 --res 128x128 --samples 32 -o "$c"
	for r in 0-1 2-3 0-3 3-3; do
		fx-lowrank -q --model "$M" --calib "$c" --rank 16 --alpha-grid 1 --iters 0 --blocks $r \
			-o "$BATS_TEST_TMPDIR/b$r.safetensors"
	done
	run -0 fx-lowrank --merge -o "$BATS_TEST_TMPDIR/m.safetensors" "$BATS_TEST_TMPDIR/b2-3.safetensors" "$BATS_TEST_TMPDIR/b0-1.safetensors"
	cmp "$BATS_TEST_TMPDIR/m.safetensors" "$BATS_TEST_TMPDIR/b0-3.safetensors"
	run -3 --separate-stderr fx-lowrank --merge -o "$BATS_TEST_TMPDIR/x.safetensors" "$BATS_TEST_TMPDIR/b0-1.safetensors" "$BATS_TEST_TMPDIR/b0-3.safetensors"
	[[ "$stderr" == *"overlaps"* ]]
	run -3 --separate-stderr fx-lowrank --merge -o "$BATS_TEST_TMPDIR/x.safetensors" "$BATS_TEST_TMPDIR/b0-1.safetensors" "$BATS_TEST_TMPDIR/b3-3.safetensors"
	[[ "$stderr" == *"blocks 2-2 are in no shard"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/x.safetensors" ]
}

@test "compare: fx-eval of the checkpoint, the same branch without GPTQ and plain RTN, in one report" {
	pipeline compare EVAL_STEPS=2 EVAL_RES=64x64
	r=$O/compare-int4_r32-model.txt
	[ -s "$r" ]
	[ ! -e "$r.tmp" ]
	for f in svdq-int4_r32-model svdq-nogptq-int4_r32-model rtn-int4-model; do
		grep -q "^$O/$f.safetensors  *[0-9.-]* *[0-9.]*$" "$r" || { cat "$r"; return 1; }
	done
	# the extra checkpoint's codes are RTN's of the same branch
	run -0 fx-verify "$O/quant-r32-int4-nogptq.safetensors"
	assert_output --partial '"search":0}'
	refute_output --partial '"gptq"'
	# GPTQ=0: the checkpoint is the one without GPTQ; RTN beside it
	rm -rf "$O"
	pipeline compare GPTQ=0 EVAL_STEPS=2 EVAL_RES=64x64
	[ "$(grep -c '^/' "$r")" = 2 ]
	[ ! -e "$O/svdq-nogptq-int4_r32-model.safetensors" ]
	# shards are refused: compare needs the whole model
	run make -s -f "$MK/flux-svdq.mk" "${VARS[@]}" BLOCKS=0-1 compare
	assert_failure
	assert_output --partial "compare samples with the whole model"
}

@test "SCALE_SEARCH=1 searches the group scales with GPTQ" {
	pipeline SCALE_SEARCH=1
	run -0 fx-verify "$O/quant-r32-int4.safetensors"
	assert_output --partial '"gptq":1'
	assert_output --partial '"search":1'
	run -2 make -s -f "$MK/flux-svdq.mk" "${VARS[@]}" SCALE_SEARCH=yes
	assert_output --partial "SCALE_SEARCH must be 0 or 1"
}
