#!/usr/bin/env bats
# Every stage checks the values it reads, at the first stage that reads
# them; fx-eval refuses damaged files; messages name the files involved.
load helper

export PYTHONPATH=$BATS_TEST_DIRNAME

# poke FILE TENSOR INDEX VALUE: one element of a BF16/F32 tensor set to VALUE
# (an fx file's recorded CRC32 follows, as a faulty writer's would)
poke() {
	python3 - "$@" <<'PY'
import json, sys, zlib
import numpy as np
from stconv import load, save
path, name, idx, val = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
t, m = load(path)
dt, sh, raw = t[name]
if dt == "BF16":
    a = np.frombuffer(raw, "<u2").copy()
    a[idx] = (np.array([val], "<f4").view("<u4")[0] >> 16)
else:
    a = np.frombuffer(raw, "<f4").copy()
    a[idx] = val
t[name] = (dt, sh, a.tobytes())
if m and "fx.crc32" in m:
    crc = json.loads(m["fx.crc32"])
    width = len(crc[name])
    crc[name] = format(zlib.crc32(a.tobytes()), "0%dx" % width)
    m["fx.crc32"] = json.dumps(crc, separators=(",", ":"), sort_keys=True)
save(path, t, m)
PY
}

setup() {
	T=$BATS_TEST_TMPDIR
	fx-synth -q -o "$T/m" --cond "$T/cond.st" --prompts 1 --txt-len 16
	F=$T/m/diffusion_pytorch_model.safetensors
}

@test "fx-verify on a source model reports NaN/Inf weights, biases and norms" {
	poke "$F" transformer_blocks.1.attn.to_k.weight 70 nan
	poke "$F" single_transformer_blocks.0.attn.norm_q.weight 3 inf
	run fx-verify "$T/m"
	assert_failure 1
	assert_output --partial "error: values: tensor 'transformer_blocks.1.attn.to_k.weight' has NaN at [0,70]"
	assert_output --partial "error: values: tensor 'single_transformer_blocks.0.attn.norm_q.weight' has Inf at [3]"
	assert_output --partial "2 errors"
	run fx-verify --json "$T/m"
	assert_failure 1
	[ "$(json_get - 'sum(1 for f in d["files"][0]["findings"] if f["check"] == "values")' <<<"$output")" = 2 ]
}

@test "fx-quant and fx-lowrank name NaN in a bias, a norm or an unquantized tensor before any work" {
	fx-calib -q --model "$T/m" --cond "$T/cond.st" --steps 1 --res 64x64 --samples 16 -o "$T/calib.st"
	cp -r "$T/m" "$T/clean"
	for tn in transformer_blocks.0.ff.net.2.bias:5 transformer_blocks.1.attn.norm_added_k.weight:1 \
		context_embedder.weight:9 proj_out.bias:0; do
		rm -rf "$T/m" && cp -r "$T/clean" "$T/m"
		poke "$F" "${tn%:*}" "${tn#*:}" nan
		run fx-quant --model "$T/m" --precision int4 -o "$T/q.st"
		assert_failure 3
		assert_output --partial "tensor '${tn%:*}' has NaN"
		[ ! -e "$T/q.st" ]
		run fx-lowrank --model "$T/m" --calib "$T/calib.st" --rank 16 --alpha-grid 2 -o "$T/b.st"
		assert_failure 3
		assert_output --partial "tensor '${tn%:*}' has NaN"
	done
}

@test "fx-quant names the branch file, tensor and element of an Inf in a branch" {
	fx-calib -q --model "$T/m" --cond "$T/cond.st" --steps 1 --res 64x64 --samples 16 -o "$T/calib.st"
	fx-lowrank -q --model "$T/m" --calib "$T/calib.st" --rank 16 --alpha-grid 2 -o "$T/b.st"
	cp "$T/b.st" "$T/b2.st"
	# transformer_blocks.1.mlp_fc1.up is (1024, 16): element 2*16+5 is [2,5]
	poke "$T/b2.st" transformer_blocks.1.mlp_fc1.up 37 inf
	run fx-quant --model "$T/m" --branch "$T/b2.st" --precision fp4 -o "$T/q.st"
	assert_failure 3
	assert_output --partial "'$T/b2.st': transformer_blocks.1.mlp_fc1.up: has Inf at [2,5]"
	cp "$T/b.st" "$T/b3.st"
	poke "$T/b3.st" single_transformer_blocks.0.qkv_proj.down 4 -inf
	run fx-quant --model "$T/m" --branch "$T/b3.st" --precision fp4 -o "$T/q.st"
	assert_failure 3
	assert_output --partial "single_transformer_blocks.0.qkv_proj.down: has -Inf at [0,4]"
}

@test "fx-eval refuses a checkpoint that fails its checksums" {
	fx-quant -q --model "$T/m" --precision int4 -o "$T/q.st"
	fx-pack -q --model "$T/m" --quant "$T/q.st" -o "$T/p.st"
	run fx-eval -q --model "$T/m" --cond "$T/cond.st" --steps 1 --res 64x64 "$T/p.st"
	assert_success
	# one bit of the last tensor's data flipped
	python3 - "$T/p.st" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[-3] ^= 0x10
open(p, "wb").write(b)
PY
	run fx-eval -q --model "$T/m" --cond "$T/cond.st" --steps 1 --res 64x64 "$T/p.st"
	assert_failure 3
	assert_output --partial "fails its checksum"
}

@test "messages name the files: fx-meta on a non-packed file, fx-pack with another model's quant" {
	fx-quant -q --model "$T/m" --precision int4 -o "$T/q.st"
	run fx-meta --model "$T/m" "$T/q.st"
	assert_failure 3
	assert_output --partial "'$T/q.st' is an fx.quant file, not a packed checkpoint"
	refute_output --partial "give --model"
	fx-synth -q -o "$T/other" --seed 9
	run fx-pack --model "$T/other" --quant "$T/q.st" -o "$T/p.st"
	assert_failure 3
	assert_output --partial "'$T/q.st' was made from another model than '$T/other'"
	refute_output --partial "the one given"
}

# A calib and an fp4 branch of the model in $T/m.
mk_branch() {
	fx-calib -q --model "$T/m" --cond "$T/cond.st" --steps 1 --res 64x64 --samples 16 -o "$T/calib.st"
	fx-lowrank -q --model "$T/m" --calib "$T/calib.st" --rank 16 --alpha-grid 2 --precision fp4 -o "$T/b.st"
}

# rewrite IN OUT PYTHON: t (tensors) and m (metadata) edited, CRCs recomputed
# for every tensor (as a faulty writer would record them)
rewrite() {
	python3 - "$1" "$2" "$3" <<'PY'
import json, sys, zlib
import numpy as np
from stconv import load, save
t, m = load(sys.argv[1])
exec(sys.argv[3])
if "fx.crc32" in m:
    m["fx.crc32"] = json.dumps({n: format(zlib.crc32(v[2]), "08x") for n, v in t.items()},
                               separators=(",", ":"), sort_keys=True)
save(sys.argv[2], t, m)
PY
}

@test "stages check a branch as fx-verify does: edited header, extra tensor, another rank, another precision" {
	mk_branch
	# an edited header: fx.params no longer matches fx.recipe
	rewrite "$T/b.st" "$T/hdr.st" "p = json.loads(m['fx.params']); p['iters'] = 99; m['fx.params'] = json.dumps(p)"
	run fx-verify "$T/hdr.st"
	assert_failure 1
	for cmd in "fx-quant --model $T/m --branch $T/hdr.st --precision fp4 -o $T/q.st" \
		"fx-pack --model $T/m --quant $T/q0.st --branch $T/hdr.st -o $T/p.st"; do
		[[ $cmd == fx-pack* ]] && fx-quant -q --model "$T/m" --branch "$T/b.st" --precision fp4 -o "$T/q0.st"
		run $cmd
		assert_failure 3
		assert_output --partial "'$T/hdr.st': the header was edited" || assert_output --partial "does not match fx.params"
	done
	# an extra tensor
	rewrite "$T/b.st" "$T/extra.st" "t['transformer_blocks.0.qkv_proj.extra'] = ('F32', [1], b'\0\0\0\0')"
	run fx-quant --model "$T/m" --branch "$T/extra.st" --precision fp4 -o "$T/q.st"
	assert_failure 3
	assert_output --partial "transformer_blocks.0.qkv_proj.extra"
	# one layer at rank 16 - 16 = another rank than the file's
	rewrite "$T/b.st" "$T/rank.st" "
n = 'transformer_blocks.1.out_proj'
d = np.frombuffer(t[n + '.down'][2], '<f4').reshape(t[n + '.down'][1])[:8]
u = np.frombuffer(t[n + '.up'][2], '<f4').reshape(t[n + '.up'][1])[:, :8]
t[n + '.down'] = ('F32', list(d.shape), d.tobytes())
t[n + '.up'] = ('F32', list(u.shape), np.ascontiguousarray(u).tobytes())"
	run fx-verify "$T/rank.st"
	assert_failure 1
	run fx-quant --model "$T/m" --branch "$T/rank.st" --precision fp4 -o "$T/q.st"
	assert_failure 3
	assert_output --partial "transformer_blocks.1.out_proj"
	# made for fp4, asked for int4
	run fx-quant --model "$T/m" --branch "$T/b.st" --precision int4 -o "$T/q.st"
	assert_failure 3
	assert_output --partial "'$T/b.st' was made for --precision fp4, not int4"
	[ ! -e "$T/q.st" ]
}

@test "fx-lowrank and fx-quant --search check the calib file's checksums and groups" {
	mk_branch
	python3 - "$T/calib.st" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[-5] ^= 0x01
open(p, "wb").write(b)
PY
	run fx-lowrank --model "$T/m" --calib "$T/calib.st" --rank 16 --alpha-grid 2 -o "$T/b2.st"
	assert_failure 3
	assert_output --partial "fails its checksum"
	run fx-quant --model "$T/m" --branch "$T/b.st" --calib "$T/calib.st" --search --precision fp4 -o "$T/q.st"
	assert_failure 3
	assert_output --partial "fails its checksum"
}

@test "under an address-space limit (ulimit -v) a run finishes or says what to raise, never hangs" {
	# AddressSanitizer reserves terabytes of shadow memory: no ulimit -v there
	if ldd "$(command -v fx-quant)" | grep -q libasan; then
		skip "sanitizer build: ASan cannot start under ulimit -v"
	fi
	mk_branch
	local v rc hung=""
	for v in $(seq 250000 125000 1000000); do
		for cmd in "fx-lowrank -q --model $T/m --calib $T/calib.st --rank 16 --alpha-grid 2 --threads 2 -o $T/lb.st --force" \
			"fx-quant -q --model $T/m --branch $T/b.st --precision fp4 --threads 2 -o $T/lq.st --force"; do
			rc=0
			(ulimit -v $v; timeout 60 $cmd) >"$T/out" 2>&1 || rc=$?
			[ $rc -ne 124 ] || hung="$hung $v:${cmd%% *}"
			if [ $rc -ne 0 ]; then
				[ $rc -eq 4 ] || { echo "limit $v: ${cmd%% *} exited $rc"; cat "$T/out"; false; }
				grep -Eq "address-space limit|out of memory|Cannot allocate memory" "$T/out" ||
					{ echo "limit $v: ${cmd%% *} failed without saying why"; cat "$T/out"; false; }
			fi
		done
	done
	[ -z "$hung" ] || { echo "hung at:$hung"; false; }
}
