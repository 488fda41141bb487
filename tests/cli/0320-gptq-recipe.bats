#!/usr/bin/env bats
# fx-quant --gptq against an independent float64 GPTQ of the published
# SVDQuant recipe (tests/fixtures/recipe_ref.py --gptq: the recipe's branch,
# then GPTQ of its residual with the same Hessian and scale rules), both
# scored by the emulation of the runtime: the output SNR of every W4A4
# layer of a double and a single block, rank 32, on the calibration rows
# and on held-out rows (another fx-calib seed). The calibration holds more
# rows than *_fc2 has inputs in every stream (4 prompts of 256 tokens,
# 2 steps at 256x256: 2048 rows a layer, K = 1024): with fewer text rows
# than K (2 prompts of 32 tokens) GPTQ fitted the context layers' few rows
# and lost up to 19 dB on held-out ones, the recipe's GPTQ as well.
# fx-lowrank searches with --for-gptq, as the pipelines do with GPTQ.
# Checks (dB): fx+GPTQ − recipe+GPTQ on the calibration rows, mean
# >= MEAN and every layer class >= CLASS; fx+GPTQ − fx (no GPTQ, the same
# branch) on held-out rows >= GAIN in every class; fx-quant's GPTQ codes
# those of the reference's GPTQ of the same residual but for f32 rounding
# (<= 2 % of the codes, SNR within 0.05 dB a layer). Measured here (seed 1,
# search 5 --for-gptq): fp4 mean +0.16 dB, worst class fc1 +0.03, gains
# 2.60 to 2.68; int4 +0.74, worst class qkv +0.55, gains 5.79 to 10.51.
# Seeds 2 and 3 (the same blocks): fp4 +0.10 and +0.15 (worst class qkv
# -0.01), int4 +0.55 and +1.00 (worst class out +0.36). The search judged
# by RTN error (no --for-gptq) with GPTQ: fp4 -0.01, int4 -0.13 (int4 fc2
# -0.81); fx-quant(1) NUMERICS.
# Thresholds: MEAN +0.05, CLASS -0.05 (OpenBLAS kernels move near ties),
# GAIN 1.5 (fp4) and 4.0 (int4). Rank 128 (seed 1): fp4 +0.06 (worst class
# out -0.02), int4 +0.01 (out -0.09), gains >= 2.18 / 4.88: level, held
# to MEAN -0.05 and CLASS -0.25 (search 4, RTN-judged: fp4 +0.00, int4 -0.23
# with out -0.40 and fc2 -0.42).
# fx-quant's codes without --gptq give -1.4 / -4.7 dB and no gain.

load helper

setup_file() {
	python3 -c 'import numpy' 2>/dev/null || return 0
	D=$BATS_FILE_TMPDIR
	fx-synth -q -o "$D/m" --cond "$D/cond.safetensors" --prompts 4 --txt-len 256
	fx-calib -q --model "$D/m" --cond "$D/cond.safetensors" --steps 2 --res 256x256 \
		--samples 256 --seed 0 --hessian -o "$D/cal.safetensors"
	fx-calib -q --model "$D/m" --cond "$D/cond.safetensors" --steps 2 --res 256x256 \
		--samples 256 --seed 100 -o "$D/held.safetensors"
}

setup() {
	python3 -c 'import numpy' 2>/dev/null || skip "python3 numpy not installed"
	D=$BATS_FILE_TMPDIR
	REF=$BATS_TEST_DIRNAME/../fixtures/recipe_ref.py
}

# compare PREC [RANK]: fx-lowrank (--for-gptq, rank 32) and fx-quant with and
# without --gptq on blocks 1-2 (double block 1, single block 0: every layer
# class), then the reference; its JSON in $D/PREC.json ($D/PREC-rRANK.json)
compare() {
	local p=$1 r=${2:-32} w=$BATS_TEST_TMPDIR j=$D/$1.json
	[[ $r == 32 ]] || j=$D/$1-r$r.json
	fx-lowrank -q --model "$D/m" --calib "$D/cal.safetensors" --precision "$p" --blocks 1-2 \
		--rank "$r" --for-gptq -o "$w/b.safetensors"
	fx-quant -q --model "$D/m" --branch "$w/b.safetensors" --precision "$p" --blocks 1-2 \
		-o "$w/q.safetensors"
	fx-quant -q --model "$D/m" --branch "$w/b.safetensors" --calib "$D/cal.safetensors" --gptq \
		--precision "$p" --blocks 1-2 -o "$w/qg.safetensors"
	python3 "$REF" --model "$D/m" --calib "$D/cal.safetensors" --heldout "$D/held.safetensors" \
		--precision "$p" --rank "$r" --branch "$w/b.safetensors" --quant "$w/q.safetensors" \
		--gptq --quant-gptq "$w/qg.safetensors" -q \
		--layers '^(transformer_blocks\.1|single_transformer_blocks\.0)\.' --json "$j"
}

# check JSON MEAN CLASS GAIN [worse]: the thresholds above; with "worse",
# fx-quant's codes without --gptq stand in for its GPTQ codes (they must fail)
check() {
	python3 - "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
gmean, gclass, gain = map(float, sys.argv[2:5])
L = d["layers"]
assert len(L) == 12, len(L)
if sys.argv[5:] == ["worse"]:
    for l in L:
        for r in ["cal", "held"]:
            l["fxg_" + r] = l["fx_" + r]
cls = ["qkv", "out", "fc1", "fc2"]
M = {}
for c in cls + ["all"]:
    rs = [l for l in L if c == "all" or l["cls"] == c]
    mean = lambda k: sum(l[k] for l in rs) / len(rs)  # noqa: E731
    M[c] = dict(gap=mean("fxg_cal") - mean("recipeg_cal"),
                gain=mean("fxg_held") - mean("fx_held"),
                gap_held=mean("fxg_held") - mean("recipeg_held"))
bad = []
for l in L:
    if sys.argv[5:] == ["worse"]:
        break
    # the same GPTQ as the reference's on fx's residual, but for f32 sums
    if l["fx_gptq_mismatch"] > 0.02:
        bad.append("%s: %.2e of the GPTQ codes differ from the reference's" %
                   (l["layer"], l["fx_gptq_mismatch"]))
    if abs(l["fxg_cal"] - l["fxrefg_cal"]) > 0.05:
        bad.append("%s: %.2f dB from the reference's GPTQ of the same residual" %
                   (l["layer"], l["fxg_cal"] - l["fxrefg_cal"]))
for c in cls:
    if not M[c]["gap"] >= gclass:
        bad.append("%s: %.3f dB from the recipe + GPTQ on the calibration rows" % (c, M[c]["gap"]))
    if not M[c]["gain"] >= gain:
        bad.append("%s: GPTQ gains %.3f dB over fx-quant without it on held-out rows" % (c, M[c]["gain"]))
if not M["all"]["gap"] >= gmean:
    bad.append("mean: %.3f dB from the recipe + GPTQ on the calibration rows" % M["all"]["gap"])
print("# fx+GPTQ - recipe+GPTQ: cal %+.3f dB (%s), held-out %+.3f; fx+GPTQ - fx held-out: %s" % (
    M["all"]["gap"], " ".join("%s %+.2f" % (c, M[c]["gap"]) for c in cls), M["all"]["gap_held"],
    " ".join("%s %+.2f" % (c, M[c]["gain"]) for c in cls)))
if bad:
    print("\n".join(bad))
    sys.exit(1)
PY
}

@test "fp4: fx-lowrank --for-gptq + fx-quant --gptq beat the recipe with GPTQ, and no GPTQ on held-out rows" {
	compare fp4
	check "$D/fp4.json" 0.05 -0.05 1.5
}

@test "int4: fx-lowrank --for-gptq + fx-quant --gptq beat the recipe with GPTQ, and no GPTQ on held-out rows" {
	compare int4
	check "$D/int4.json" 0.05 -0.05 4.0
}

@test "rank 128, fp4 and int4: level with the recipe with GPTQ, far above no GPTQ" {
	compare fp4 128
	check "$D/fp4-r128.json" -0.05 -0.25 1.5
	compare int4 128
	check "$D/int4-r128.json" -0.05 -0.25 4.0
}

@test "the thresholds fail fx-quant's codes without --gptq" {
	for p in fp4 int4; do
		[ -e "$D/$p.json" ] || skip "needs the fp4 and int4 comparisons above"
	done
	run check "$D/fp4.json" 0.05 -0.05 1.5 worse
	assert_failure
	assert_output --partial "from the recipe + GPTQ on the calibration rows"
	run check "$D/int4.json" 0.05 -0.05 4.0 worse
	assert_failure
	assert_output --partial "over fx-quant without it on held-out rows"
}
