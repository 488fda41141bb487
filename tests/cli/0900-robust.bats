#!/usr/bin/env bats
# Robustness of every stage (issue 13): an input replaced, truncated or
# rewritten while a run reads it; temporaries of killed runs; outputs that are
# inputs, links, devices or FIFOs; signals. Runs are held at a known moment
# with FX_TEST_SYNC (fx(7)), so nothing here depends on timing.

load helper

# A sanitizer build: ASan's own SIGBUS handler would take the fault before
# fx's (which defers to a handler already installed)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}handle_sigbus=0"

setup() {
	W=$BATS_TEST_TMPDIR
}

# small bfl single-file models: m.st and, with other weights, m2.st
mk_models() {
	fx-synth -q --layout bfl --hidden 128 --double 1 --single 1 -o "$W/m.st"
	fx-synth -q --layout bfl --hidden 128 --double 1 --single 1 --seed 2 -o "$W/m2.st"
}

# Starts CMD in the background, to stop at POINT (see fx_test_sync): its
# stderr goes to $W/bg.err, its pid to $bg.
start_at() {  # start_at POINT CMD...
	sync_file=$W/sync/$1
	shift
	mkdir -p "$W/sync"
	rm -f "$sync_file" "$sync_file.go"
	FX_TEST_SYNC=$sync_file "$@" 2>"$W/bg.err" &
	bg=$!
}

# Waits (10 s at most) until the background run stops at its point.
reached() {
	local i
	for i in $(seq 200); do
		[ -e "$sync_file" ] && return 0
		kill -0 $bg 2>/dev/null || break
		sleep 0.05
	done
	echo "the run never reached $(basename "$sync_file")"
	cat "$W/bg.err"
	return 1
}

# Lets it go on and sets $bg_status and $bg_err.
resume() {
	touch "$sync_file.go"
	bg_status=0
	wait $bg || bg_status=$?
	bg_err=$(cat "$W/bg.err")
}

no_temporaries() {  # no_temporaries DIR
	[ -z "$(ls -A "$1" | grep '\.tmp\.')" ] || { ls -la "$1"; false; }
}

@test "a model replaced (mv) after the stage mapped it: refused, and no stale output is later 'up to date'" {
	mk_models
	start_at input-id-m.st fx-quant --model "$W/m.st" --precision int4 -o "$W/q.st"
	reached
	cp "$W/m2.st" "$W/new" && mv "$W/new" "$W/m.st"
	resume
	[ "$bg_status" -eq 4 ]
	[[ "$bg_err" == *"'$W/m.st' changed while the run read it; nothing written"* ]] || { echo "$bg_err"; false; }
	[ ! -e "$W/q.st" ]
	no_temporaries "$W"
	run -0 --separate-stderr fx-quant --model "$W/m.st" --precision int4 -o "$W/q.st"
	[[ "$stderr" == *"15 layers quantized"* ]]
	# what it holds is the new model's: the same bytes as a run on m2 itself
	fx-quant -q --model "$W/m2.st" --precision int4 -o "$W/q2.st"
	cmp "$W/q.st" "$W/q2.st"
}

@test "a shard of a model folder replaced mid-run, and an fx input replaced mid-run, are refused" {
	fx-synth -q -o "$W/model" --shards 2
	fx-synth -q -o "$W/other" --shards 2 --seed 2
	shard=$(cd "$W/model" && ls diffusion_pytorch_model-*.safetensors | head -1)
	start_at input-id-model fx-quant --model "$W/model" --precision int4 -o "$W/q.st"
	reached
	cp "$W/other/$shard" "$W/new" && mv "$W/new" "$W/model/$shard"
	resume
	[ "$bg_status" -eq 4 ]
	[[ "$bg_err" == *"$shard' changed while the run read it; nothing written"* ]] || { echo "$bg_err"; false; }
	[ ! -e "$W/q.st" ]
	# a calib file (an fx file: its identity is its recorded recipe)
	fx-synth -q -o "$W/m" --cond "$W/cond.st" --hidden 128 --double 1 --single 1
	for seed in 1 2; do
		fx-calib -q --model "$W/m" --cond "$W/cond.st" --steps 1 --prompts 1 --res 64x64 \
			--samples 32 --seed $seed -o "$W/c$seed.st"
	done
	start_at input-id-c1.st fx-lowrank --model "$W/m" --calib "$W/c1.st" --rank 16 \
		--alpha-grid 1 --iters 0 -o "$W/b.st"
	reached
	cp "$W/c2.st" "$W/new" && mv "$W/new" "$W/c1.st"
	resume
	[ "$bg_status" -eq 4 ]
	[[ "$bg_err" == *"'$W/c1.st' changed while the run read it; nothing written"* ]] || { echo "$bg_err"; false; }
	[ ! -e "$W/b.st" ]
	no_temporaries "$W"
}

@test "a model truncated under fx-quant (SIGBUS): the file named, exit 4, no temporary" {
	mk_models
	start_at stage-begin fx-quant --model "$W/m.st" --precision int4 -o "$W/q.st"
	reached
	ls "$W"/q.st.tmp.* >/dev/null   # the temporary exists now
	truncate -s 4096 "$W/m.st"
	resume
	[ "$bg_status" -eq 4 ]
	[[ "$bg_err" == *"m.st' changed while the run read it (truncated or rewritten in place); nothing written"* ]] || { echo "$bg_err"; false; }
	[ ! -e "$W/q.st" ]
	no_temporaries "$W"
}

@test "a quant file truncated under fx-pack (SIGBUS) and a model rewritten in place (same size) are refused" {
	mk_models
	fx-quant -q --model "$W/m.st" --precision int4 -o "$W/q.st"
	start_at stage-begin fx-pack --model "$W/m.st" --quant "$W/q.st" -o "$W/p.st"
	reached
	truncate -s 4096 "$W/q.st"
	resume
	[ "$bg_status" -eq 4 ]
	[[ "$bg_err" == *"q.st' changed while the run read it (truncated or rewritten in place)"* ]] || { echo "$bg_err"; false; }
	[ ! -e "$W/p.st" ]
	no_temporaries "$W"
	# cp over the model: the same inode, new bytes, no fault; caught at commit
	start_at stage-begin fx-quant --model "$W/m.st" --precision int4 -o "$W/q3.st"
	reached
	cp "$W/m2.st" "$W/m.st"
	resume
	[ "$bg_status" -eq 4 ]
	[[ "$bg_err" == *"m.st' changed while the run read it; nothing written"* ]] || { echo "$bg_err"; false; }
	[ ! -e "$W/q3.st" ]
	no_temporaries "$W"
}

@test "temporaries of runs killed with -9 are removed by the next run; a live run's is left alone" {
	mk_models
	for k in 1 2 3; do
		start_at stage-begin fx-quant -q --model "$W/m.st" --precision int4 -o "$W/q.st"
		reached
		kill -9 $bg
		wait $bg || true
		# each run removed its predecessor's leftover: one left, the last one's
		[ "$(ls "$W" | grep -c '^q\.st\.tmp\.')" -eq 1 ]
		[ -e "$W/q.st.tmp.$bg" ]
	done
	dead=$bg
	# a live run for the same output, held after creating its temporary
	start_at stage-begin fx-quant -q --model "$W/m.st" --precision int4 -o "$W/q.st" --force
	reached
	live=$bg
	[ -e "$W/q.st.tmp.$live" ]
	[ ! -e "$W/q.st.tmp.$dead" ]    # the live run removed the dead one's
	run -0 --separate-stderr fx-quant --model "$W/m.st" --precision int4 -o "$W/q.st"
	[ -e "$W/q.st.tmp.$live" ]      # untouched: its writer is alive
	resume
	[ "$bg_status" -eq 0 ]
	no_temporaries "$W"
	# the message: a run that died, then a rerun (up to date) cleans up
	start_at stage-begin fx-quant -q --model "$W/m.st" --precision int4 -o "$W/q.st" --force
	reached
	kill -9 $bg
	wait $bg || true
	run -0 --separate-stderr fx-quant --model "$W/m.st" --precision int4 -o "$W/q.st"
	[[ "$stderr" == *"removed stale temporary '$W/q.st.tmp.$bg' of a run that died"* ]] || { echo "$stderr"; false; }
	[[ "$stderr" == *"up to date"* ]]
	no_temporaries "$W"
}

@test "an output that is an input is refused even with --force (calib, model, a hard link, a shard)" {
	mk_models
	fx-synth -q -o "$W/model" --cond "$W/cond.st" --hidden 128 --double 1 --single 1
	fx-calib -q --model "$W/model" --cond "$W/cond.st" --steps 1 --prompts 1 --res 64x64 \
		--samples 32 -o "$W/c.st"
	sums=$(cd "$W" && sha256sum c.st m.st model/*)
	run -2 --separate-stderr fx-lowrank --model "$W/model" --calib "$W/c.st" --rank 16 -o "$W/c.st" --force
	[[ "$stderr" == *"output '$W/c.st' is the input '$W/c.st' (the same file): refused even with --force"* ]]
	run -2 --separate-stderr fx-quant --model "$W/m.st" --precision int4 -o "$W/m.st" --force
	[[ "$stderr" == *"output '$W/m.st' is the input '$W/m.st'"* ]]
	ln "$W/m.st" "$W/hard.st"
	run -2 --separate-stderr fx-quant --model "$W/m.st" --precision int4 -o "$W/hard.st" --force
	[[ "$stderr" == *"output '$W/hard.st' is the input '$W/m.st' (the same file)"* ]]
	shard=$W/model/diffusion_pytorch_model.safetensors
	run -2 --separate-stderr fx-quant --model "$W/model" --precision int4 -o "$shard" --force
	[[ "$stderr" == *"output '$shard' is the input"* ]]
	fx-quant -q --model "$W/m.st" --precision int4 -o "$W/q.st"
	run -2 --separate-stderr fx-pack --model "$W/m.st" --quant "$W/q.st" -o "$W/q.st" --force
	[[ "$stderr" == *"output '$W/q.st' is the input '$W/q.st'"* ]]
	[ "$(cd "$W" && sha256sum c.st m.st model/*)" = "$sums" ]
	no_temporaries "$W"
	# a stage still replaces its own earlier output, reusing its layers
	run -0 --separate-stderr fx-quant --model "$W/m.st" --precision fp4 -o "$W/q.st" --force
}

@test "outputs that are links, devices or FIFOs are refused, with or without --force, and nothing hangs" {
	mk_models
	ln -s m2.st "$W/link.st"
	run -2 --separate-stderr fx-quant --model "$W/m.st" --precision int4 -o "$W/link.st" --force
	[[ "$stderr" == *"output '$W/link.st' is a symbolic link to 'm2.st', not a regular file (refused even with --force)"* ]]
	[ -L "$W/link.st" ]
	run -2 --separate-stderr fx-quant --model "$W/m.st" --precision int4 -o /dev/null --force
	[[ "$stderr" == *"output '/dev/null' is a character device, not a regular file"* ]]
	[ -c /dev/null ]
	mkfifo "$W/fifo"
	for force in --force ""; do
		run -2 --separate-stderr timeout 20 fx-quant --model "$W/m.st" --precision int4 -o "$W/fifo" $force
		[[ "$stderr" == *"output '$W/fifo' is a FIFO, not a regular file"* ]]
	done
	[ -p "$W/fifo" ]
	# a FIFO as an input is refused, not waited on
	run -4 --separate-stderr timeout 20 fx-quant --model "$W/fifo" --precision int4 -o "$W/q.st"
	[[ "$stderr" == *"'$W/fifo': not a regular file"* ]]
	# the non-stage writers too
	run -2 --separate-stderr fx-synth --layout bfl -o "$W/link.st" --force
	[[ "$stderr" == *"is a symbolic link"* ]]
	no_temporaries "$W"
}

@test "a signal says which and that nothing was written (exit 4, no temporary)" {
	mk_models
	for sig in TERM HUP; do
		start_at stage-begin fx-quant --model "$W/m.st" --precision int4 -o "$W/q.st"
		reached
		kill -$sig $bg
		resume
		[ "$bg_status" -eq 4 ]
		[ "$bg_err" = "fx-quant: interrupted by SIG$sig, nothing written" ] || { echo "$bg_err"; false; }
		[ ! -e "$W/q.st" ]
		no_temporaries "$W"
	done
}
