#!/usr/bin/env bats
# fx-quant --gptq: codes against the calib file's XᵀX with the RTN scales
# fixed (kernels/cpu/gptq.c is unit-tested in tests/unit/test-gptq.c).
load helper

export PYTHONPATH=$BATS_TEST_DIRNAME

setup() {
	T=$BATS_TEST_TMPDIR
	fx-synth -q -o "$T/m" --cond "$T/cond.st" --prompts 1 --txt-len 16
	# 512x512: 2048 image rows per layer, more than the K = 1024 of *_fc2.
	# At 128x128 (160 rows) the exact shifted XᵀX of INT4 fc2 (positive
	# semidefinite, 1% damping; the samples' approximation it replaced was
	# indefinite, and its failed factorizations raised the damping) let
	# GPTQ take single block 1's fc2 to a weight error of 0.71, above
	# fx-verify's 0.5; here every layer stays below 0.4
	fx-calib -q --model "$T/m" --cond "$T/cond.st" --steps 2 --res 512x512 --samples 64 --hessian -o "$T/calib.st"
}

@test "--gptq needs a calib file with XᵀX" {
	run fx-quant --model "$T/m" --precision fp4 --gptq -o "$T/q.st"
	assert_failure 2
	assert_output --partial "--gptq needs --calib"
	run fx-quant --model "$T/m" --precision fp4 --gptq-damp 0.1 -o "$T/q.st"
	assert_failure 2
	run fx-quant --model "$T/m" --precision fp4 --gptq-thin-damp 0.5 -o "$T/q.st"
	assert_failure 2
	run fx-quant --model "$T/m" --calib "$T/calib.st" --precision fp4 --gptq --gptq-thin-damp 0 -o "$T/q.st"
	assert_failure 2
	assert_output --partial "--gptq-thin-damp wants a number in (0, 10]"
	fx-calib -q --model "$T/m" --cond "$T/cond.st" --steps 1 --res 64x64 --samples 16 -o "$T/plain.st"
	run fx-quant --model "$T/m" --calib "$T/plain.st" --precision fp4 --gptq -o "$T/q.st"
	assert_failure 3
	assert_output --partial "needs a calib file made with fx-calib --hessian"
	[ ! -e "$T/q.st" ]
}

@test "GPTQ checkpoints pack, verify, record their parameters and beat RTN on held-out noise and steps" {
	for p in fp4 int4; do
		fx-lowrank -q --model "$T/m" --calib "$T/calib.st" --rank 16 --alpha-grid 3 --precision $p -o "$T/b-$p.st"
		fx-quant -q --model "$T/m" --branch "$T/b-$p.st" --calib "$T/calib.st" --precision $p --gptq -o "$T/qg-$p.st"
		fx-quant -q --model "$T/m" --branch "$T/b-$p.st" --precision $p -o "$T/q-$p.st"
		fx-pack -q --model "$T/m" --quant "$T/qg-$p.st" --branch "$T/b-$p.st" -o "$T/pg-$p.st"
		fx-pack -q --model "$T/m" --quant "$T/q-$p.st" --branch "$T/b-$p.st" -o "$T/p-$p.st"
		fx-meta -q "$T/pg-$p.st"
		run fx-verify --model "$T/m" "$T/pg-$p.st"
		assert_success
		assert_output --partial "0 errors"
		run fx-verify "$T/qg-$p.st"
		assert_success
		assert_output --partial '"gptq":1'
		assert_output --partial '"gptq_block":128'
		# another seed and another step count than the calibration's
		run --separate-stderr fx-eval --json --model "$T/m" --cond "$T/cond.st" --steps 4 --res 128x128 --seed 77 \
			"$T/pg-$p.st" "$T/p-$p.st"
		assert_success
		g=$(json_get - 'd["checkpoints"][0]["mean_psnr"]' <<<"$output")
		r=$(json_get - 'd["checkpoints"][1]["mean_psnr"]' <<<"$output")
		echo "# $p: GPTQ $g dB, RTN codes $r dB" >&3
		python3 -c "import sys; sys.exit(0 if $g > $r + 3 else 1)"
	done
}

@test "GPTQ bytes do not depend on the thread count; reruns are up to date; a damping change recomputes" {
	fx-quant -q --model "$T/m" --calib "$T/calib.st" --precision int4 --gptq --threads 1 -o "$T/a.st"
	fx-quant -q --model "$T/m" --calib "$T/calib.st" --precision int4 --gptq --threads 2 -o "$T/b.st"
	FX_QUANT_ROWS=7 fx-quant -q --model "$T/m" --calib "$T/calib.st" --precision int4 --gptq -o "$T/c.st"
	cmp "$T/a.st" "$T/b.st"
	cmp "$T/a.st" "$T/c.st"
	run --separate-stderr fx-quant --json --model "$T/m" --calib "$T/calib.st" --precision int4 --gptq -o "$T/a.st"
	assert_success
	assert_output --partial '"up_to_date":true'
	run --separate-stderr fx-quant --json --model "$T/m" --calib "$T/calib.st" --precision int4 --gptq --gptq-damp 0.1 -o "$T/a.st"
	assert_success
	# the 8 context-stream layers (32 rows for 256 or 1024 inputs) keep their
	# thin-layer damping, 1 > 0.1: reused
	[ "$(json_get - 'len(d["computed"])' <<<"$output")" = 22 ]
	[ "$(json_get - 'len(d["reused"])' <<<"$output")" = 8 ]
	# without --gptq the codes are RTN's and differ
	fx-quant -q --model "$T/m" --calib "$T/calib.st" --precision int4 -o "$T/r.st"
	run python3 "$BATS_TEST_DIRNAME/stconv.py" diff "$T/b.st" "$T/r.st"
	assert_failure
	assert_output --partial ".codes"
}

# calibedit.py IN OUT OP: an fx.calib file rewritten with a valid layout and
# CRCs: strip (no xsum/nrows), f32 (xtx F32 and no sums: an earlier
# fx-calib's layout), exact (xtx, xsum, nrows of the BF16 samples
# themselves: every row must have been kept), zerosum (xsum 0), xsum32
# (xsum F32), nosum (nrows without xsum), norows0 (nrows 0)
write_calibedit() {
	cat >"$T/calibedit.py" <<'PY'
import json, struct, sys, zlib
import numpy as np
SZ = {"F64": 8, "I64": 8, "F32": 4, "BF16": 2}
src, dst, op = sys.argv[1:4]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
meta = hdr.pop("__metadata__")
t = {k: [v["dtype"], v["shape"], raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]]
     for k, v in hdr.items()}
for g in sorted(k[:-4] for k in list(t) if k.endswith(".xtx")):
    if op in ("strip", "f32"):
        del t[g + ".xsum"], t[g + ".nrows"]
    if op == "f32":
        t[g + ".xtx"][0] = "F32"
        t[g + ".xtx"][2] = np.frombuffer(t[g + ".xtx"][2], np.float64).astype(np.float32).tobytes()
    if op == "exact":
        u = np.frombuffer(t[g + ".samples"][2], np.uint16).astype(np.uint32) << 16
        s = u.view(np.float32).astype(np.float64).reshape(t[g + ".samples"][1])
        acc = np.zeros(s.shape[1])
        for row in s:  # in row order, as fx-quant sums the samples
            acc += row
        t[g + ".xtx"][2] = (s.T @ s).tobytes()
        t[g + ".xsum"][2] = acc.tobytes()
        t[g + ".nrows"][2] = np.array([s.shape[0]], np.int64).tobytes()
    if op == "zerosum":
        t[g + ".xsum"][2] = bytes(len(t[g + ".xsum"][2]))
    if op == "xsum32" and g.endswith("fc2"):
        t[g + ".xsum"][0] = "F32"
        t[g + ".xsum"][2] = np.frombuffer(t[g + ".xsum"][2], np.float64).astype(np.float32).tobytes()
    if op == "nosum" and g.endswith("fc2"):
        del t[g + ".xsum"]
    if op == "norows0" and g.endswith("fc2"):
        t[g + ".nrows"][2] = bytes(8)
names = sorted(t, key=lambda k: (-SZ[t[k][0]], k))
meta["fx.crc32"] = json.dumps({k: "%08x" % zlib.crc32(t[k][2]) for k in sorted(t)}, separators=(",", ":"))
out, off = {"__metadata__": meta}, 0
for k in names:
    out[k] = {"dtype": t[k][0], "shape": t[k][1], "data_offsets": [off, off + len(t[k][2])]}
    off += len(t[k][2])
h = json.dumps(out, separators=(",", ":")).encode()
h += b" " * (-(8 + len(h)) % 64)
open(dst, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(t[k][2] for k in names))
PY
}

@test "INT4 *_fc2: the shift's moments from the sums equal the samples' when the samples are every row; only fc2 codes use xsum" {
	write_calibedit
	# 1 step at 64x64: at most 32 rows a layer, all kept
	fx-calib -q --model "$T/m" --cond "$T/cond.st" --steps 1 --res 64x64 --samples 64 --hessian -o "$T/c.st"
	python3 "$T/calibedit.py" "$T/c.st" "$T/exact.st" exact
	python3 "$T/calibedit.py" "$T/exact.st" "$T/samples.st" strip
	python3 "$T/calibedit.py" "$T/exact.st" "$T/zero.st" zerosum
	# one damping for all: a file without nrows has no thin layers
	for c in exact samples zero; do
		fx-quant -q --model "$T/m" --calib "$T/$c.st" --precision int4 --gptq --gptq-thin-damp 0.01 \
			-o "$T/q-$c.st" 2>/dev/null
	done
	# the same rows: X^T X/n + c(μ_a + μ_b) + c^2 either way, the same codes
	run -0 python3 "$BATS_TEST_DIRNAME/stconv.py" diff "$T/q-exact.st" "$T/q-samples.st"
	# xsum counts: without it the shift's mean is lost, in the fc2 codes alone
	run -1 python3 "$BATS_TEST_DIRNAME/stconv.py" diff "$T/q-exact.st" "$T/q-zero.st"
	[ -n "$output" ]
	while read -r name; do
		[[ $name == *fc2.codes ]] || { echo "unexpected difference in $name"; return 1; }
	done <<<"$output"
	# fp4 has no shift: xsum changes nothing
	fx-quant -q --model "$T/m" --calib "$T/exact.st" --precision fp4 --gptq -o "$T/f-exact.st"
	fx-quant -q --model "$T/m" --calib "$T/zero.st" --precision fp4 --gptq -o "$T/f-zero.st"
	run -0 python3 "$BATS_TEST_DIRNAME/stconv.py" diff "$T/f-exact.st" "$T/f-zero.st"
}

@test "a calib file of an earlier fx-calib (F32 xtx, no xsum or nrows) is still read; a malformed xsum or nrows exits 3 naming it" {
	write_calibedit
	python3 "$T/calibedit.py" "$T/calib.st" "$T/old.st" f32
	run -0 fx-verify "$T/old.st"
	assert_output --partial "0 errors"
	fx-quant -q --model "$T/m" --calib "$T/old.st" --precision int4 --gptq -o "$T/q-old.st"
	run -0 fx-verify --model "$T/m" --calib "$T/old.st" "$T/q-old.st"
	for op in xsum32 nosum norows0; do
		python3 "$T/calibedit.py" "$T/calib.st" "$T/bad.st" $op
		run -3 --separate-stderr fx-quant --model "$T/m" --calib "$T/bad.st" --precision int4 --gptq -o "$T/q-bad.st"
		case $op in
		xsum32) want="mlp_fc2.xsum: is F32 [1024], the model's mlp_fc2 (block 0) wants F64 [1024]" ;;
		nosum) want="mlp_fc2.xsum' missing (xsum and nrows come together" ;;
		norows0) want="mlp_fc2.nrows' is 0, not a row count" ;;
		esac
		[[ "$stderr" == *"$want"* ]] || { echo "$op: $stderr"; return 1; }
		[ ! -e "$T/q-bad.st" ]
	done
}

@test "block shards of a --hessian calibration (one in passes) give fx-lowrank and fx-quant --gptq shards equal to the whole file's; fx-pack joins them" {
	A=(--model "$T/m" --cond "$T/cond.st" --steps 1 --res 128x128 --samples 32 --hessian)
	fx-calib -q "${A[@]}" -o "$T/all.st"
	fx-calib -q "${A[@]}" --blocks 0-1 --hessian-mem 10M -o "$T/c01.st"
	fx-calib -q "${A[@]}" --blocks 2-3 -o "$T/c23.st"
	for r in 0-1 2-3; do
		s=${r/-/}
		for c in all c$s; do
			fx-lowrank -q --model "$T/m" --calib "$T/$c.st" --rank 16 --alpha-grid 2 --precision int4 --blocks $r -o "$T/b$s-$c.st"
			fx-quant -q --model "$T/m" --branch "$T/b$s-$c.st" --calib "$T/$c.st" --precision int4 --gptq --blocks $r -o "$T/q$s-$c.st"
		done
		run -0 python3 "$BATS_TEST_DIRNAME/stconv.py" diff "$T/b$s-all.st" "$T/b$s-c$s.st"
		run -0 python3 "$BATS_TEST_DIRNAME/stconv.py" diff "$T/q$s-all.st" "$T/q$s-c$s.st"
	done
	fx-pack -q --model "$T/m" --quant "$T/q01-c01.st" --branch "$T/b01-c01.st" --quant "$T/q23-c23.st" --branch "$T/b23-c23.st" -o "$T/p-shards.st"
	fx-pack -q --model "$T/m" --quant "$T/q01-all.st" --branch "$T/b01-all.st" --quant "$T/q23-all.st" --branch "$T/b23-all.st" -o "$T/p-all.st"
	run -0 python3 "$BATS_TEST_DIRNAME/stconv.py" diff "$T/p-all.st" "$T/p-shards.st"
}

@test "fx-verify judges a GPTQ module whose weight error is high by its output on the calibration rows; a scrambled one still fails" {
	# 128x128: few rows, so GPTQ may move much weight error into inputs the
	# calibration rarely opens (INT4 fc2)
	fx-calib -q --model "$T/m" --cond "$T/cond.st" --steps 2 --res 128x128 --samples 64 --hessian -o "$T/c128.st"
	fx-lowrank -q --model "$T/m" --calib "$T/c128.st" --precision int4 --rank 32 -o "$T/b.st"
	fx-quant -q --model "$T/m" --branch "$T/b.st" --calib "$T/c128.st" --gptq --precision int4 -o "$T/q.st"
	fx-pack -q --model "$T/m" --quant "$T/q.st" --branch "$T/b.st" -o "$T/p.st"
	fx-meta -q --model "$T/m" "$T/p.st"
	run -0 fx-verify --model "$T/m" --calib "$T/c128.st" "$T/p.st"
	assert_output --partial "0 errors"
	# the same layer with its lora_up halves swapped (checksum made to match)
	python3 - "$T/p.st" "$T/bad.st" <<'PY'
import json, sys, zlib, stconv
t, meta = stconv.load(sys.argv[1])
n = "single_transformer_blocks.1.mlp_fc2.lora_up"
dt, shape, raw = t[n]
h = len(raw) // 2
t[n] = (dt, shape, raw[h:] + raw[:h])
c = json.loads(meta["fx.crc32"]); c[n] = "%08x" % zlib.crc32(t[n][2])
meta["fx.crc32"] = json.dumps(c, separators=(",", ":"), sort_keys=True)
stconv.save(sys.argv[2], t, meta)
PY
	run -1 fx-verify --model "$T/m" --calib "$T/c128.st" "$T/bad.st"
	assert_output --partial "mlp_fc2 (single block 1): does not reproduce the source layer"
}

@test "W4A4 layers whose XᵀX has fewer rows than inputs get the thin damping, are named in a warning and do better on held-out steps" {
	# 64x64, 1 step: 16 image rows a layer (context layers: 16 tokens)
	fx-calib -q --model "$T/m" --cond "$T/cond.st" --steps 1 --res 64x64 --samples 16 --hessian -o "$T/thin.st"
	run --separate-stderr fx-quant --model "$T/m" --calib "$T/thin.st" --precision fp4 --gptq -o "$T/q.st"
	assert_success
	[[ $stderr == *"24 layers' XᵀX come from fewer rows than inputs (fewest: "*"_fc2, 16 rows for 1024 inputs): "*"damping 1;"* ]] ||
		{ echo "$stderr"; return 1; }
	# the setup's 512x512, 2 steps: 2048 image rows, more than any K; the
	# 8 context-stream layers see 16 tokens a pass, 32 rows
	run --separate-stderr fx-quant --model "$T/m" --calib "$T/calib.st" --precision fp4 --gptq -o "$T/q.st"
	assert_success
	[[ $stderr == *"8 layers' XᵀX come from fewer rows than inputs (fewest: transformer_blocks.0.mlp_context_fc2, 32 rows for 1024 inputs)"* ]] ||
		{ echo "$stderr"; return 1; }
	run -0 fx-verify "$T/q.st"
	assert_output --partial '"gptq_thin_damp":1'
	# --gptq-thin-damp recomputes the 8 thin layers alone
	cp "$T/q.st" "$T/q1.st"
	run --separate-stderr fx-quant --json --model "$T/m" --calib "$T/calib.st" --precision fp4 --gptq \
		--gptq-thin-damp 0.01 -o "$T/q1.st"
	assert_success
	[ "$(json_get - 'len(d["computed"])' <<<"$output")" = 8 ]
	json_get - 'all("context" in n for n in d["computed"])' <<<"$output" | grep -q True
	# without --gptq nothing is said
	run --separate-stderr fx-quant --model "$T/m" --calib "$T/thin.st" --precision fp4 -o "$T/q.st"
	assert_success
	[[ $stderr != *"fewer rows"* ]]
	# held-out steps and noise: the W4A4 layers' mean output SNR in fx-eval
	# (on the sampler's own activations) with the thin damping against 0.01
	# for every layer (the damping before it). Measured: fp4 +0.20, int4
	# +0.78 dB (mean of 24 layers; a 256x256 calibration: +0.28, +0.80)
	for p in fp4 int4; do
		fx-lowrank -q --model "$T/m" --calib "$T/thin.st" --rank 16 --alpha-grid 3 --precision $p -o "$T/tb-$p.st"
		for d in 1 0.01; do
			fx-quant -q --model "$T/m" --branch "$T/tb-$p.st" --calib "$T/thin.st" --precision $p --gptq \
				--gptq-thin-damp $d -o "$T/tq.st" 2>/dev/null
			fx-pack -q --model "$T/m" --quant "$T/tq.st" --branch "$T/tb-$p.st" -o "$T/tp-$p-$d.st"
		done
		run --separate-stderr fx-eval --json --model "$T/m" --cond "$T/cond.st" --steps 4 --res 128x128 \
			--seed 77 "$T/tp-$p-1.st" "$T/tp-$p-0.01.st"
		assert_success
		echo "$output" >"$T/e.json"
		python3 - "$p" "$T/e.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
m = [sum(v) / len(v) for v in ([l["snr"] for l in c["layers"] if ".linear" not in l["layer"]]
                               for c in d["checkpoints"])]
need = {"fp4": 0.05, "int4": 0.4}[sys.argv[1]]
print("# %s: thin damping %.2f dB, 0.01 %.2f dB" % (sys.argv[1], m[0], m[1]))
sys.exit(0 if m[0] > m[1] + need else 1)
PY
	done
}

@test "fx-quant notes a branch searched for the other kind of codes (--for-gptq against --gptq)" {
	fx-lowrank -q --model "$T/m" --calib "$T/calib.st" --rank 16 --alpha-grid 2 --blocks 0 -o "$T/b.st"
	fx-lowrank -q --model "$T/m" --calib "$T/calib.st" --rank 16 --alpha-grid 2 --blocks 0 --for-gptq -o "$T/bg.st"
	q() { fx-quant --model "$T/m" --precision fp4 --blocks 0 "$@" -o "$T/q.st" --force; }
	run -0 --separate-stderr q --branch "$T/b.st" --calib "$T/calib.st" --gptq
	[[ "$stderr" == *"b.st' was searched for round-to-nearest codes"*"fx-lowrank --for-gptq"* ]]
	run -0 --separate-stderr q --branch "$T/bg.st"
	[[ "$stderr" == *"bg.st' was searched for GPTQ"* ]]
	for args in "--branch $T/bg.st --calib $T/calib.st --gptq" "--branch $T/b.st"; do
		run -0 --separate-stderr q $args
		[[ "$stderr" != *"was searched for"* ]]
	done
	# -q keeps it quiet
	run -0 --separate-stderr q -q --branch "$T/b.st" --calib "$T/calib.st" --gptq
	[[ "$stderr" != *"was searched for"* ]]
}
