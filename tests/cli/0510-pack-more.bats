#!/usr/bin/env bats
# fx-pack and fx-meta, continued: fx-meta in place on fresh fx-pack output,
# --check on present but wrong metadata and its repair, interrupted fx-pack
# (single file and --legacy folder).

load helper

setup() {
	M=$BATS_TEST_TMPDIR/model
	fx-synth -q -o "$M"
}

pack() {  # pack PRECISION OUT
	fx-quant -q --model "$M" --precision "$1" -o "$BATS_TEST_TMPDIR/q-$1.safetensors"
	fx-pack -q --model "$M" --quant "$BATS_TEST_TMPDIR/q-$1.safetensors" -o "$2"
}

# Sets metadata KEY of FILE to the JSON value v after running the python
# statement EXPR on it, in place (the header keeps its length).
edit_meta() {  # edit_meta FILE KEY EXPR
	python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
p, key, expr = sys.argv[1], sys.argv[2], sys.argv[3]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
m = hdr["__metadata__"]
try:
    v = json.loads(m[key])
except ValueError:
    v = m[key]
exec(expr)
m[key] = v if isinstance(v, str) else json.dumps(v)
text = json.dumps(hdr).encode()
assert len(text) <= n
raw[8:8 + n] = text + b" " * (n - len(text))
open(p, "wb").write(raw)
PY
}

@test "fx-meta writes into the header room fx-pack reserves: same inode, same size, tensors untouched" {
	p=$BATS_TEST_TMPDIR/p.safetensors
	pack int4 "$p"
	ino=$(stat -c %i "$p") size=$(stat -c %s "$p")
	data() { python3 -c 'import struct,sys,hashlib; r=open(sys.argv[1],"rb").read(); n=struct.unpack("<Q",r[:8])[0]; print(n, hashlib.sha256(r[8+n:]).hexdigest())' "$1"; }
	before=$(data "$p")
	run -0 --separate-stderr fx-meta --model "$M" "$p" --json
	[[ "$stderr" == *"metadata written (in place)"* ]]
	[[ "$output" == *'"up_to_date":false'* ]]
	[[ "$output" == *'"in_place":true'* ]]
	[ "$(stat -c %i "$p")" = "$ino" ]
	[ "$(stat -c %s "$p")" = "$size" ]
	[ "$(data "$p")" = "$before" ]
	run -0 fx-meta --check "$p"
	run -0 fx-verify "$p"
	# a second run has nothing to do and writes nothing
	sum=$(sha256sum "$p")
	run -0 --separate-stderr fx-meta --model "$M" "$p" --json
	[[ "$stderr" == *"metadata up to date"* ]]
	[[ "$output" == *'"up_to_date":true'* && "$output" == *'"in_place":false'* ]]
	[ "$(sha256sum "$p")" = "$sum" ]
}

@test "fx-meta --check fails on metadata present but inconsistent with the tensors; fx-meta repairs it" {
	have_py_safetensors || skip "python safetensors not installed"
	p=$BATS_TEST_TMPDIR/p.safetensors
	pack int4 "$p"
	fx-meta -q --model "$M" "$p"
	cp "$p" "$BATS_TEST_TMPDIR/good.safetensors"
	# KEY | python statement on v | what --check must say
	while IFS='|' read -r key expr msg; do
		cp "$BATS_TEST_TMPDIR/good.safetensors" "$p"
		edit_meta "$p" "$key" "$expr"
		run -1 fx-meta --check "$p"
		assert_output --partial "$p: error: $msg"
		run -1 fx-verify "$p"
		# the repair route for a file of unknown origin: no --model
		run -0 --separate-stderr fx-meta "$p"
		[[ "$stderr" == *"metadata written (in place)"* ]]
		run -0 fx-meta --check "$p"
		assert_output "$p: metadata ok"
		run -0 fx-verify "$p"
	done <<'EOF'
quantization_config|v["rank"] = 32|rank is 32 but lora tensors have rank 0
quantization_config|v["weight"]["dtype"] = "fp4_e2m1_all"|weight.dtype is 'fp4_e2m1_all' but the tensors are int4
quantization_config|v["weight"]["group_size"] = 16|weight.group_size is 16, int4 needs 64
config|v["num_layers"] = 3|config num_layers 3, file has 2 double blocks
config|v["num_single_layers"] = 5|config num_single_layers 5, file has 2 single blocks
config|v["in_channels"] = 16|config in_channels 16, x_embedder takes 64
config|v["guidance_embeds"] = False|config guidance_embeds is false but the guidance embedder is present
model_class|v = "NunchakuFluxTransformer2DModelV2"|model_class is 'NunchakuFluxTransformer2DModelV2'
comfy_config|v["model_class"] = "FluxSchnell"|comfy_config model_class is 'FluxSchnell', expected 'Flux'
config|v["num_attention_heads"] *= 3|config num_attention_heads x attention_head_dim is
config|v["joint_attention_dim"] += 128|config joint_attention_dim
config|v["pooled_projection_dim"] = 7|config pooled_projection_dim 7, text_embedder takes
comfy_config|v["model_config"]["depth"] = 19|comfy_config model_config.depth is 19, the tensors give 2
comfy_config|v["model_config"]["hidden_size"] = 3072|comfy_config model_config.hidden_size is 3072
comfy_config|v["model_config"]["in_channels"] = 64|comfy_config model_config.in_channels is 64, the tensors give 16
comfy_config|v["model_config"]["guidance_embed"] = False|comfy_config model_config.guidance_embed disagrees
EOF
	# the same through fx-meta's own overrides: a wrong precision and rank are
	# written when asked for, caught by --check, and undone by a plain run
	cp "$BATS_TEST_TMPDIR/good.safetensors" "$p"
	run -0 fx-meta --precision fp4 --rank 32 "$p"
	run -1 fx-meta --check "$p"
	assert_output --partial "weight.dtype is 'fp4_e2m1_all' but the tensors are int4"
	assert_output --partial "rank is 32 but lora tensors have rank 0"
	run -0 fx-meta "$p"
	run -0 fx-meta --check "$p"
	cmp "$p" "$BATS_TEST_TMPDIR/good.safetensors"
}

@test "fx-meta --check fails on a stripped foreign checkpoint before repair, passes after" {
	have_py_safetensors || skip "python safetensors not installed"
	p=$BATS_TEST_TMPDIR/p.safetensors
	pack fp4 "$p"
	f=$BATS_TEST_TMPDIR/foreign.safetensors
	python3 - "$p" "$f" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n]); hdr.pop("__metadata__")
h = json.dumps(hdr, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n:])
PY
	run -1 fx-meta --check "$f"
	for k in model_class config quantization_config comfy_config; do
		assert_output --partial "$f: error: metadata '$k' missing"
	done
	run -1 fx-meta --check --json "$f"
	[ "$(json_get - 'd["status"]' <<<"$output")" = findings ]
	# no header room: the whole file is rewritten (a new inode), not in place
	ino=$(stat -c %i "$f")
	run -0 --separate-stderr fx-meta "$f" --json
	[[ "$stderr" == *"metadata written (rewritten)"* ]]
	[[ "$output" == *'"in_place":false'* ]]
	[ "$(stat -c %i "$f")" != "$ino" ]
	run -0 fx-meta --check "$f"
	run -0 fx-meta --check --json "$f"
	[ "$(json_get - 'd["status"]' <<<"$output")" = ok ]
	[ -z "$(ls "$BATS_TEST_TMPDIR" | grep '\.tmp\.')" ]
}

# Runs CMD in the background with SIGINT and SIGQUIT at their defaults (a
# non-interactive shell starts background jobs with them ignored, and fx keeps
# an ignored signal ignored), waits for a file matching GLOB to appear, stops
# the process, records the directory listing in $stopped, sends SIG, resumes
# it and sets $status to its exit status. $stopped is empty when the process
# ended before GLOB appeared (then the caller retries).
interrupt_at() {  # interrupt_at GLOB SIG CMD...
	local glob=$1 sig=$2 pid
	shift 2
	python3 -c 'import os, signal, sys
for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(s, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' "$@" &
	pid=$!
	stopped=
	SECONDS=0
	while [ $SECONDS -lt 60 ]; do
		if compgen -G "$glob" >/dev/null; then
			kill -STOP $pid
			# stopped with the temporary file still there: mid-run for sure
			stopped=$(compgen -G "$glob" || true)
			[ -n "$stopped" ] && kill -"$sig" $pid
			kill -CONT $pid
			break
		fi
		[ -d /proc/$pid ] && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null || break
	done
	status=0
	wait $pid || status=$?
}

# A model whose packing takes a few tenths of a second, and its quant files.
mk_big() {
	W=$BATS_TEST_TMPDIR
	fx-synth -q -o "$W/big" --hidden 1024
	fx-quant -q --model "$W/big" --precision int4 -o "$W/q-int4.safetensors"
}

# Nothing of fx's left in DIR but the hash cache.
left_in() {
	ls -A "$1" 2>/dev/null | grep -v '^\.fx-hash-cache$' || true
}

@test "fx-pack interrupted by SIGINT or SIGTERM exits 4 and leaves no output and no temporary file" {
	mk_big
	for sig in INT TERM; do
		caught=
		for try in 1 2 3 4 5; do
			rm -rf "$W/out" && mkdir "$W/out"
			interrupt_at "$W/out/p.safetensors.tmp.*" $sig \
				fx-pack -q --model "$W/big" --quant "$W/q-int4.safetensors" -o "$W/out/p.safetensors"
			[ -n "$stopped" ] && { caught=1; break; }
		done
		[ -n "$caught" ] || { echo "fx-pack was never caught mid-run"; false; }
		[ "$status" -eq 4 ]
		[ -z "$(left_in "$W/out")" ] || { ls -la "$W/out"; false; }
	done
	# the interrupted runs did not disturb a later one
	run -0 fx-pack -q --model "$W/big" --quant "$W/q-int4.safetensors" -o "$W/out/p.safetensors"
	run -1 fx-verify "$W/out/p.safetensors"   # complete; only the loader metadata is missing
	assert_output --partial "30 of 30 modules complete"
}

@test "fx-pack --legacy interrupted in either phase leaves no partial folder" {
	mk_big
	fx-quant -q --model "$W/big" --precision fp4 -o "$W/q-fp4.safetensors"
	L=$W/legacy
	# 1. while the single file is written: no output, no folder contents
	caught=
	for try in 1 2 3 4 5; do
		rm -rf "$W/out" "$L" && mkdir "$W/out"
		interrupt_at "$W/out/p.safetensors.tmp.*" INT \
			fx-pack -q --model "$W/big" --quant "$W/q-int4.safetensors" -o "$W/out/p.safetensors" --legacy "$L"
		[ -n "$stopped" ] && { caught=1; break; }
	done
	[ -n "$caught" ]
	[ "$status" -eq 4 ]
	[ -z "$(left_in "$W/out")" ]
	[ -z "$(ls -A "$L" 2>/dev/null)" ]
	# 2. while the folder is written (its second file, the first one complete),
	# over an older complete folder (fp4): the single file is done, the folder
	# keeps exactly its old files
	fx-pack -q --model "$W/big" --quant "$W/q-fp4.safetensors" -o "$W/old.safetensors" --legacy "$L"
	old=$(cd "$L" && sha256sum -- *)
	caught=
	for try in 1 2 3 4 5; do
		rm -rf "$W/out" && mkdir "$W/out"
		interrupt_at "$L/unquantized_layers.safetensors.tmp.*" TERM \
			fx-pack -q --model "$W/big" --quant "$W/q-int4.safetensors" -o "$W/out/p.safetensors" --legacy "$L"
		[ -n "$stopped" ] && { caught=1; break; }
	done
	[ -n "$caught" ]
	[ "$status" -eq 4 ]
	[ -e "$W/out/p.safetensors" ]
	[ "$(cd "$L" && sha256sum -- *)" = "$old" ] || { ls -la "$L"; false; }
	# 3. a fresh folder interrupted the same way holds nothing, not the first file
	caught=
	for try in 1 2 3 4 5; do
		rm -rf "$L"
		interrupt_at "$L/unquantized_layers.safetensors.tmp.*" INT \
			fx-pack -q --model "$W/big" --quant "$W/q-int4.safetensors" -o "$W/out/p.safetensors" --legacy "$L"
		[ -n "$stopped" ] && { caught=1; break; }
	done
	[ -n "$caught" ]
	[ "$status" -eq 4 ]
	[ -z "$(ls -A "$L" 2>/dev/null)" ] || { ls -la "$L"; false; }
	# a rerun finishes the job: the single file is up to date, the folder complete
	run -0 --separate-stderr fx-pack --model "$W/big" --quant "$W/q-int4.safetensors" -o "$W/out/p.safetensors" --legacy "$L"
	[[ "$stderr" == *"up to date"* ]]
	run -0 fx-verify "$L"
	assert_output --partial "30 of 30 modules complete, INT4"
}

@test "a write failure anywhere in the --legacy folder leaves the folder as it was (exit 4)" {
	W=$BATS_TEST_TMPDIR
	L=$W/legacy
	fx-quant -q --model "$M" --precision int4 -o "$W/q.safetensors"
	fx-quant -q --model "$M" --precision fp4 -o "$W/q4.safetensors"
	fx-pack -q --model "$M" --quant "$W/q.safetensors" -o "$W/p.safetensors"
	fx-pack -q --model "$M" --quant "$W/q4.safetensors" -o "$W/old.safetensors" --legacy "$L"
	old=$(cd "$L" && sha256sum -- *)
	# with the single file up to date, every write is one of the folder's:
	# find how many there are (FX_FAULT_IO=n passes once n exceeds them) ...
	probe() { rm -rf "$W/probe"; FX_FAULT_IO=$1 fx-pack -q -q --model "$M" --quant "$W/q.safetensors" -o "$W/p.safetensors" --legacy "$W/probe" 2>/dev/null; }
	lo=1 hi=100000
	if probe $lo; then false; fi
	probe $hi
	while [ $((hi - lo)) -gt 1 ]; do
		mid=$(((lo + hi) / 2))
		if probe $mid; then hi=$mid; else lo=$mid; fi
	done
	[ $lo -ge 8 ]   # at least two writes per file
	# ... then fail the first, some in the middle and the last few (the text files)
	for i in 1 2 $((lo / 4)) $((lo / 2)) $((3 * lo / 4)) $((lo - 4)) $((lo - 3)) $((lo - 2)) $((lo - 1)) $lo; do
		FX_FAULT_IO=$i run -4 --separate-stderr fx-pack --model "$M" --quant "$W/q.safetensors" -o "$W/p.safetensors" --legacy "$L"
		[[ "$stderr" == *"No space left"* ]]
		[ "$(cd "$L" && sha256sum -- *)" = "$old" ] || { echo "write $i of $lo"; ls -la "$L"; false; }
		[ -z "$(ls -A "$L" | grep '\.tmp\.')" ]
		# and a folder that did not exist is not left behind, even empty
		FX_FAULT_IO=$i run -4 fx-pack --model "$M" --quant "$W/q.safetensors" -o "$W/p.safetensors" --legacy "$W/new"
		[ ! -e "$W/new" ]
	done
	run -0 fx-pack --model "$M" --quant "$W/q.safetensors" -o "$W/p.safetensors" --legacy "$L"
	run -0 fx-verify "$L"
	assert_output --partial "30 of 30 modules complete, INT4"
}
