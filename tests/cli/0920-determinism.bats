#!/usr/bin/env bats
# fx(7) DETERMINISM: on one machine with one OpenBLAS kernel, fx-calib,
# fx-lowrank (rsvd) and fx-quant give the same bytes for any --threads,
# fx-lowrank --jobs and fx-quant row block. Checked under every OpenBLAS kernel this CPU can
# run (the bytes of different kernels are not compared: they may differ).

load helper

# OPENBLAS_CORETYPE names this CPU can run: each needs the /proc/cpuinfo
# flags after it (never an AVX-512 kernel on a CPU without AVX-512). OpenBLAS
# takes an unknown name, or any name in a build without DYNAMIC_ARCH,
# silently, so a name counts only when OpenBLAS reports it as the core in use.
core_types() {
	local flags name need f ok
	flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
	while read -r name need; do
		ok=1
		for f in $need; do
			[[ $flags == *" $f "* ]] || ok=0
		done
		((ok)) || continue
		OPENBLAS_VERBOSE=2 OPENBLAS_CORETYPE=$name fx-lowrank --version 2>&1 >/dev/null |
			grep -qx "Core: $name" && echo "$name"
	done <<'EOF'
SkylakeX avx512f avx512cd avx512bw avx512dq avx512vl
Cooperlake avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16
Zen avx2 fma
Haswell avx2 fma
Sandybridge avx
Nehalem sse4_2 popcnt
Core2 ssse3
Prescott pni
EOF
}

# same A B WHAT: the two files are byte-identical, else name the first tensor
# that differs
same() {
	cmp -s "$1" "$2" && return 0
	python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
def tensors(p):
    raw = open(p, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    return {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in hdr.items() if k != "__metadata__"}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
bad = sorted(k for k in a if a[k] != b.get(k))
print("%s: %d of %d tensors differ, first %s" % (sys.argv[3], len(bad), len(a), bad[:1]))
PY
	return 1
}

@test "same bytes for any --threads and fx-quant row block, under every OpenBLAS kernel this CPU runs" {
	W=$BATS_TEST_TMPDIR
	local cores c t rows
	fx-synth -q -o "$W/m" --double 1 --single 1 --cond "$W/cond.safetensors" --prompts 1 --txt-len 16
	mapfile -t cores < <(core_types)
	# no kernel can be forced (another CPU, a build without DYNAMIC_ARCH):
	# the default one still has to keep the promise
	((${#cores[@]} > 0)) || cores=(default)
	echo "# OpenBLAS kernels: ${cores[*]}"
	for c in "${cores[@]}"; do
		if [[ $c == default ]]; then
			unset OPENBLAS_CORETYPE
		else
			export OPENBLAS_CORETYPE=$c
		fi
		echo "# kernel $c"
		for t in 1 2; do
			fx-calib -q --force --threads "$t" --model "$W/m" --cond "$W/cond.safetensors" --steps 1 \
				--res 128x128 --samples 64 --hessian -o "$W/calib$t.safetensors"
			fx-lowrank -q --force --threads "$t" --model "$W/m" --calib "$W/calib1.safetensors" \
				--rank 32 --precision fp4 --alpha-grid 2 --iters 1 -o "$W/branch$t.safetensors"
			fx-quant -q --force --threads "$t" --model "$W/m" --branch "$W/branch1.safetensors" \
				--precision fp4 -o "$W/quant$t.safetensors"
			fx-quant -q --force --threads "$t" --model "$W/m" --calib "$W/calib1.safetensors" --search \
				--precision fp4 -o "$W/search$t.safetensors"
		done
		same "$W/calib1.safetensors" "$W/calib2.safetensors" "$c: fx-calib --threads 1 vs 2"
		same "$W/branch1.safetensors" "$W/branch2.safetensors" "$c: fx-lowrank --threads 1 vs 2"
		same "$W/quant1.safetensors" "$W/quant2.safetensors" "$c: fx-quant --threads 1 vs 2"
		same "$W/search1.safetensors" "$W/search2.safetensors" "$c: fx-quant --search --threads 1 vs 2"
		# fx-lowrank's layer jobs: one at a time, three, two of two threads
		for j in "1 2" "3 3" "2 4"; do
			set -- $j
			fx-lowrank -q --force --jobs "$1" --threads "$2" --model "$W/m" --calib "$W/calib1.safetensors" \
				--rank 32 --precision fp4 --alpha-grid 2 --iters 1 -o "$W/jobs.safetensors"
			same "$W/branch1.safetensors" "$W/jobs.safetensors" "$c: fx-lowrank --jobs $1 --threads $2"
		done
		# the search for GPTQ (its score adds a product)
		for t in 1 3; do
			fx-lowrank -q --force --jobs 2 --threads "$t" --for-gptq --model "$W/m" \
				--calib "$W/calib1.safetensors" --rank 32 --precision int4 --alpha-grid 2 --iters 1 \
				-o "$W/forgptq$t.safetensors"
		done
		same "$W/forgptq1.safetensors" "$W/forgptq3.safetensors" "$c: fx-lowrank --for-gptq --threads 1 vs 3"
		# row blocks that straddle members and end mid-layer, on 2 and 3 threads
		for rows in 1 7 50 128; do
			for t in 2 3; do
				FX_QUANT_ROWS=$rows fx-quant -q --force --threads "$t" --model "$W/m" \
					--branch "$W/branch1.safetensors" --precision fp4 -o "$W/rows.safetensors"
				same "$W/quant1.safetensors" "$W/rows.safetensors" "$c: fx-quant FX_QUANT_ROWS=$rows --threads $t"
			done
		done
	done
}
