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
	[ "$(json_get - 'len(d["computed"])' <<<"$output")" = 30 ]
	# without --gptq the codes are RTN's and differ
	fx-quant -q --model "$T/m" --calib "$T/calib.st" --precision int4 -o "$T/r.st"
	run python3 "$BATS_TEST_DIRNAME/stconv.py" diff "$T/b.st" "$T/r.st"
	assert_failure
	assert_output --partial ".codes"
}

