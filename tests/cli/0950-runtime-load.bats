#!/usr/bin/env bats
# Nunchaku's own Python loader (NunchakuQwenImageTransformer2DModel.from_pretrained:
# _patch_model with SVDQW4A4Linear / AWQW4A16Linear, patch_scale_key, strict
# load_state_dict) takes fx's Qwen-Image checkpoints, fp4 and int4, rank 32
# and 128: every key, shape and dtype, nothing missing, nothing left over.
# Broken copies of the same files are refused, so the check can fail.
#
# Needs torch, diffusers, safetensors and Nunchaku's Python code, which is
# not on PyPI (the PyPI project named nunchaku is an unrelated one): point
# FX_NUNCHAKU_SRC at a checkout of nunchaku-tech/nunchaku, and
# FX_NUNCHAKU_PYTHON at a python with the rest (default python3). Without
# them every test here is skipped with the reason. nunchaku_load.py says
# what it replaces (the CUDA extension, the GPU query, the model size).

load helper

PY=${FX_NUNCHAKU_PYTHON:-python3}
LOADER=$BATS_TEST_DIRNAME/nunchaku_load.py
export PYTHONPATH=$BATS_TEST_DIRNAME
BLOCKS=2

setup_file() {
	export W=$BATS_FILE_TMPDIR
	local why st=0
	why=$("$PY" "$LOADER" --probe 2>&1 >/dev/null) || st=$?
	case $st in
	0) ;;
	77) echo "${why#nunchaku_load: }" >"$W/skip"; return 0 ;;
	*) echo "$why" >&2; return 1 ;;
	esac
	fx-synth -q --family qwenimage --blocks $BLOCKS --hidden 256 --txt-dim 256 -o "$W/model" \
		--cond "$W/cond.safetensors" --prompts 2 --txt-len 16
	# the pipeline as users run it; the four runs share one calib file
	local p r
	for p in int4 fp4; do
		for r in 32 128; do
			make -s -f "$BATS_TEST_DIRNAME/../../pipelines/qwenimage-svdq.mk" MODEL="$W/model" \
				COND="$W/cond.safetensors" OUT="$W/out" FX="$(dirname "$(command -v fx-calib)")" \
				PRECISION=$p RANK=$r PROMPTS=2 STEPS=2 RES=128x128 SAMPLES=64 GRID=2 NAME=tiny \
				>"$W/make.log" 2>&1 || { cat "$W/make.log" >&2; return 1; }
			cp "$W/out/svdq-${p}_r$r-tiny.safetensors" "$W/svdq-$p-r$r.safetensors"
		done
	done
}

setup() {
	[ ! -e "$W/skip" ] || skip "$(cat "$W/skip")"
}

# mutate SRC DST PYTHON: DST is SRC with the edit applied to t (name ->
# (dtype, shape, bytes)) and meta (the header metadata), through stconv
mutate() {
	"$PY" - "$1" "$2" "$3" <<'PY'
import json, sys
from stconv import load, save
t, meta = load(sys.argv[1])
exec(sys.argv[3])
save(sys.argv[2], t, meta)
PY
}

# load_ok PRECISION RANK: the file loads strictly, every key of it is one of
# the model's and the other way round (wcscales excepted, which the loader
# fills with ones), counted as spec 2.5 and fx's wcscales/wtscale convention
load_ok() {
	run -0 "$PY" "$LOADER" "$W/svdq-$1-r$2.safetensors"
	local prec=$1; [ "$prec" = fp4 ] && prec=nvfp4
	assert_output --partial "svdq-$1-r$2.safetensors: ok: $prec rank $2, $BLOCKS blocks, "
	assert_output --partial "$((8 * BLOCKS)) SVDQW4A4Linear, $((2 * BLOCKS)) AWQW4A16Linear"
	[[ $output =~ \ ([0-9]+)\ file\ keys\ =\ ([0-9]+)\ parameters\ loaded\ strictly\ \+\ ([0-9]+)\ wtscale ]]
	local keys=${BASH_REMATCH[1]} params=${BASH_REMATCH[2]} wtscale=${BASH_REMATCH[3]}
	[ $((params + wtscale)) -eq "$keys" ]
	# spec 2.5: 7 tensors per W4A4 module, 4 per AWQ, 4 norms per block, 13 top level
	local base=$((BLOCKS * (8 * 7 + 2 * 4 + 4) + 13))
	if [ "$1" = int4 ]; then
		[ "$keys" -eq $base ]
		assert_output --partial "+ 0 wtscale (GEMM alpha); 0 wcscales absent"
	else
		# NVFP4: the two fused modules of a block carry wcscales, the six others wtscale
		[ "$keys" -eq $((base + 8 * BLOCKS)) ]
		assert_output --partial "+ $((6 * BLOCKS)) wtscale (GEMM alpha); $((6 * BLOCKS)) wcscales absent"
	fi
}

@test "the loader is Nunchaku's own code (from_pretrained of NunchakuQwenImageTransformer2DModel)" {
	run -0 "$PY" "$LOADER" --probe
	assert_output --regexp '^nunchaku: .*nunchaku$'
}

@test "int4 rank 32: Nunchaku's loader takes fx's checkpoint strictly" {
	load_ok int4 32
}

@test "int4 rank 128: Nunchaku's loader takes fx's checkpoint strictly" {
	load_ok int4 128
}

@test "fp4 rank 32: Nunchaku's loader takes fx's checkpoint strictly" {
	load_ok fp4 32
}

@test "fp4 rank 128: Nunchaku's loader takes fx's checkpoint strictly" {
	load_ok fp4 128
}

@test "negative controls: broken copies of fx's checkpoints are refused by the loader" {
	local i4=$W/svdq-int4-r32.safetensors f4=$W/svdq-fp4-r32.safetensors B=transformer_blocks.0
	local d=$BATS_TEST_TMPDIR
	mutate "$i4" "$d/rename.safetensors" "t['$B.attn.to_qkv.lora_down'] = t.pop('$B.attn.to_qkv.proj_down')"
	mutate "$i4" "$d/wtscale.safetensors" "t['$B.attn.to_out.0.wtscale'] = ('BF16', [1], b'\\x80\\x3f')"
	mutate "$i4" "$d/dtype.safetensors" "dt, sh, raw = t['$B.attn.to_qkv.smooth_factor']; t['$B.attn.to_qkv.smooth_factor'] = ('F16', sh, raw)"
	mutate "$i4" "$d/rank.safetensors" "dt, sh, raw = t['$B.img_mlp.net.2.proj_up']
row = sh[1] * 2
t['$B.img_mlp.net.2.proj_up'] = (dt, [sh[0], sh[1] // 2], b''.join(raw[i:i + row // 2] for i in range(0, len(raw), row)))"
	mutate "$i4" "$d/blocks.safetensors" "c = json.loads(meta['config']); c['num_layers'] += 1; meta['config'] = json.dumps(c)"
	mutate "$f4" "$d/fp8.safetensors" "dt, sh, raw = t['$B.img_mlp.net.0.proj.wscales']; t['$B.img_mlp.net.0.proj.wscales'] = ('I8', sh, raw)"
	mutate "$f4" "$d/noconfig.safetensors" "del meta['config']"
	# the same rewrite without an edit still loads: the edits are what is refused
	mutate "$i4" "$d/same-int4.safetensors" "pass"
	mutate "$f4" "$d/same-fp4.safetensors" "pass"
	run -1 "$PY" "$LOADER" "$d"/{rename,wtscale,dtype,rank,blocks,fp8,noconfig,same-int4,same-fp4}.safetensors
	assert_line --partial "$d/same-int4.safetensors: ok: int4 rank 32"
	assert_line --partial "$d/same-fp4.safetensors: ok: nvfp4 rank 32"
	assert_equal "$(grep -c ': ok: ' <<<"$output")" 2
	assert_line --partial "FAIL: $d/rename.safetensors (int4): AssertionError"
	assert_line "nunchaku_load:   missing: $B.attn.to_qkv.proj_down torch.bfloat16 (256, 32)"
	assert_line --partial "FAIL: $d/wtscale.safetensors (int4): RuntimeError: Error(s) in loading state_dict"
	assert_line --partial "Unexpected key(s) in state_dict: \"$B.attn.to_out.0.wtscale\""
	assert_line --partial "FAIL: $d/dtype.safetensors (int4): AssertionError"
	assert_line --partial "dtype: $B.attn.to_qkv.smooth_factor is torch.float16 in the file, the model has torch.bfloat16"
	assert_line --partial "FAIL: $d/rank.safetensors (int4): RuntimeError: Error(s) in loading state_dict"
	assert_line --partial "size mismatch for $B.img_mlp.net.2.proj_up: copying a param with shape torch.Size([256, 16])"
	assert_line --partial "FAIL: $d/blocks.safetensors (int4): AssertionError"
	assert_line --partial "missing: transformer_blocks.$BLOCKS.attn.add_qkv_proj.bias torch.bfloat16"
	assert_line --partial "FAIL: $d/fp8.safetensors (nvfp4): AssertionError"
	assert_line --partial "dtype: $B.img_mlp.net.0.proj.wscales is torch.int8 in the file, the model has torch.float8_e4m3fn"
	assert_line --partial "FAIL: $d/noconfig.safetensors (nvfp4): KeyError: 'config'"
}

@test "negative control: an INT4 checkpoint is refused where the GPU asks for NVFP4, and the other way round" {
	run -1 "$PY" "$LOADER" --precision nvfp4 "$W/svdq-int4-r32.safetensors"
	assert_output --partial "(nvfp4): AssertionError"
	assert_output --partial "wscales is torch.bfloat16 in the file, the model has torch.float8_e4m3fn"
	run -1 "$PY" "$LOADER" --precision int4 "$W/svdq-fp4-r32.safetensors"
	assert_output --partial "(int4): AssertionError"
	assert_output --partial "wscales is torch.float8_e4m3fn in the file, the model has torch.bfloat16"
}
