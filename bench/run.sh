#!/usr/bin/env bash
# make bench: every stage's benchmark, one summary table at the end.
#
#   FX_BIN=$PWD/build/bin bash bench/run.sh [quant] [calib] [lowrank] [encode]
#
# With no arguments all benchmarks run (about 5-15 minutes on 2 cores; the
# first run also generates the FLUX-width inputs, ~5 GB, into the cache).
# Environment (see also bench/lib.sh):
#   FX_BENCH_CACHE   generated inputs, kept between runs (default build/bench-cache)
#   FX_BENCH_PYTHON  python with torch + diffusers for the calib baseline
#                    (default python3; skipped with a message when it lacks them)
#   FX_BENCH_STEPS   sampling steps of the longer fx-calib run (default 3)
#
# Benchmarks (the targets are those of the stage issues):
#   quant    fx-quant + fx-pack on FLUX-width models of two sizes (best of three
#            rounds, the I/O floor likewise): input GB/s,
#            ratio to the I/O floor (cat of the input + durable copies of the
#            outputs), peak RSS (target >= 0.5 of the floor, < 2 GiB, flat in
#            the number of blocks)
#   calib    the C forward at hidden 3072, 2 double + 2 single blocks, 1024
#            image + 256 text tokens, alone (bench/forward.c, built by make
#            bench as FX_FORWARD_BENCH) and as an fx-calib sampling step with
#            activation capture: ms per forward, fraction of the OpenBLAS sgemm
#            peak measured in the same run (target >= 60 %), ratio to the
#            diffusers/torch CPU forward (target >= 1), and the projected
#            FLUX.1-dev calibration times
#   lowrank  bench/lowrank.sh (fx-lowrank per fused group, projected total)
#   gptq     the GPTQ sweep (kernels/cpu/gptq.c, FX_GPTQ_BENCH) per FLUX-width
#            layer: factorization of the K x K Hessian and the sweep per row,
#            projected to each W4A4 and adaLN shape and to FLUX.1-dev (76 of
#            each W4A4 shape, 38 norm1 pairs, 38 single-block norms)
#   qwen     bench/qwenimage.sh (Qwen-Image at FLUX width, two block counts:
#            peak memory of fx-calib, fx-quant, fx-pack flat in the blocks)
set -euo pipefail
export LC_ALL=C

want_quant=0 want_calib=0 want_lowrank=0 want_encode=0 want_gptq=0 want_qwen=0
if (($# == 0)); then
	want_quant=1 want_calib=1 want_lowrank=1 want_encode=1 want_gptq=1 want_qwen=1
fi
for a in "$@"; do
	case $a in
	quant) want_quant=1 ;;
	calib) want_calib=1 ;;
	lowrank) want_lowrank=1 ;;
	encode) want_encode=1 ;;
	gptq) want_gptq=1 ;;
	qwen) want_qwen=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench: unknown benchmark '$a' (quant, calib, lowrank, encode, gptq, qwen)" >&2; exit 2 ;;
	esac
done

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for t in fx-synth fx-quant fx-pack fx-calib; do
	[[ -x $FX_BIN/$t ]] || die "$FX_BIN/$t is missing: build the tools first (make tools)"
done

BENCH_T0=$(date +%s)
cpu_mark
BENCH_CPU_MARK=("$CPU_MARK_T" "$CPU_MARK_BUSY" "$CPU_MARK_OWN")
printf 'fx bench: %s, %s cores, %s\n' "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')" \
	"$NPROC" "$(awk '/MemTotal/ { printf "%.0f GiB RAM", $2/1048576 }' /proc/meminfo)"
printf 'tools: %s (%s)\ncache: %s\n' "$FX_BIN" "$("$FX_BIN/fx-quant" --version 2>&1 | head -n 1)" "$CACHE"
if [[ -n $TIME_BIN ]]; then
	echo "peak RSS: GNU time's maximum resident set size (includes mmapped input pages); anon = sampled peak RssAnon"
else
	echo "peak RSS: polled VmHWM every 0.1 s (GNU time not installed: 'apt-get install -y time' for exact numbers)"
fi
echo "all timed runs read inputs from the page cache (warmed by a cat first; the page cache is never dropped)"

# ---------------------------------------------------------------------------
# FLOPs of one FLUX transformer forward (spec flux-transformer.md §6.1): every
# linear layer (blocks 12·D²·N MACs per token, modulation, embedders, output)
# plus attention 2·N²·D per block; FLOP = 2·MAC.
# forward_flops D DOUBLE SINGLE IMG_TOKENS TXT_TOKENS
forward_flops() {
	awk -v D="$1" -v nd="$2" -v ns="$3" -v Ni="$4" -v Nt="$5" 'BEGIN {
		N = Ni + Nt
		blocks = (nd + ns) * (12 * D * D * N + 2 * N * N * D)
		modulation = nd * 12 * D * D + ns * 3 * D * D + 2 * D * D
		embed = 64 * D * Ni + 4096 * D * Nt + 2 * (256 * D + D * D) + 768 * D + D * D + D * 64 * Ni
		printf "%.0f", 2 * (blocks + modulation + embed) }'
}

# ---------------------------------------------------------------------------
# min_of A B: the smaller number; an empty A counts as none.
min_of() { [[ -z $1 ]] && echo "$2" || awk -v a="$1" -v b="$2" 'BEGIN { print (b < a ? b : a) }'; }

bench_quant() {
	section "fx-quant + fx-pack (issue 3): FLUX-width models, NVFP4, no branch (plain RTN)"
	need_space 8
	local sizes=("2 4" "1 2") nd ns key dir m shards in_b q p t_tools t_floor rss anon
	local rss_list=() anon_list=() names=()
	for s in "${sizes[@]}"; do
		read -r nd ns <<<"$s"
		key=flux3072-d${nd}s${ns}
		dir=$(cached_model "$key" --hidden 3072 --double "$nd" --single "$ns" --txt-dim 4096)
		m=$dir/model
		shards=("$m"/*.safetensors)
		in_b=$(file_bytes "${shards[@]}")
		q=$BENCH_WORK/q-$key.safetensors
		p=$BENCH_WORK/p-$key.safetensors
		prime_hash "$m"
		warm "${shards[@]}"
		cpu_mark
		note "$key: hidden 3072, $nd double + $ns single blocks, input $(bytes_h "$in_b") in ${#shards[@]} shard(s)"

		# Three rounds of tools and floor, interleaved; the best of each
		# counts. Pages this VM has not touched for a while cost up to 10x
		# more to fill, whoever fills them, so a single round swings by 2-3x.
		# Every round writes new files, as the floor's copies are new files
		# (replacing an old output frees its blocks inside the rename).
		local tq= tp= rq=0 rp=0 aq=0 ap=0 t_floor= q_b p_b round t0 t1 tf sq
		for round in 1 2 3; do
			rm -f -- "$q" "$p"
			measure "quant-$key" "$FX_BIN/fx-quant" --model "$m" --precision fp4 -o "$q" --force
			sq=$M_SEC
			tq=$(min_of "$tq" "$M_SEC")
			((M_RSS_KB > rq)) && rq=$M_RSS_KB
			((M_ANON_KB > aq)) && aq=$M_ANON_KB
			measure "pack-$key" "$FX_BIN/fx-pack" --model "$m" --quant "$q" -o "$p" --force
			tp=$(min_of "$tp" "$M_SEC")
			((M_RSS_KB > rp)) && rp=$M_RSS_KB
			((M_ANON_KB > ap)) && ap=$M_ANON_KB
			q_b=$(file_bytes "$q")
			p_b=$(file_bytes "$p")
			# I/O floor: read the input once, write both outputs durably (the
			# tools fsync their outputs, so the copies are synced too).
			t0=$(date +%s%N)
			cat -- "${shards[@]}" >/dev/null
			cp -- "$q" "$BENCH_WORK/floor-q" && sync -- "$BENCH_WORK/floor-q"
			cp -- "$p" "$BENCH_WORK/floor-p" && sync -- "$BENCH_WORK/floor-p"
			t1=$(date +%s%N)
			rm -f -- "$BENCH_WORK/floor-q" "$BENCH_WORK/floor-p"
			tf=$(calc "($t1 - $t0) / 1e9")
			t_floor=$(min_of "$t_floor" "$tf")
			note "round $round: fx-quant $(secs_h "$sq"), fx-pack $(secs_h "$M_SEC") I/O floor $(secs_h "$tf")"
		done
		note "fx-quant best $(secs_h "$tq"), peak RSS $(kib_h "$rq") (anon $(kib_h "$aq")): $(tail -n 1 "$BENCH_WORK/quant-$key.log" | sed 's|/[^ ]*/||')"
		note "fx-pack best $(secs_h "$tp"), peak RSS $(kib_h "$rp") (anon $(kib_h "$ap")): $(tail -n 1 "$BENCH_WORK/pack-$key.log" | sed 's|/[^ ]*/||')"
		t_tools=$(calc "$tq + $tp")
		cpu_report "$key"
		note "I/O floor: cat input ($(bytes_h "$in_b")) + cp&sync quant ($(bytes_h "$q_b")) + packed ($(bytes_h "$p_b")): $(secs_h "$t_floor"), $(calc "$in_b / $t_floor / 1e9" '%.2f') GB/s of input"
		note "fx-quant + fx-pack: $(secs_h "$t_tools"), $(calc "$in_b / $t_tools / 1e9" '%.2f') GB/s of input, $(calc "$t_floor / $t_tools" '%.2f') of the I/O floor (target >= 0.5)"
		rss=$rq anon=$aq
		[[ $rp =~ ^[0-9]+$ && $rss =~ ^[0-9]+$ ]] && ((rp > rss)) && rss=$rp
		((ap > anon)) && anon=$ap
		rss_list+=("$rss") anon_list+=("$anon") names+=("$key")
		row "fx-quant+fx-pack" "$nd d + $ns s, $(bytes_h "$in_b") in" "$(secs_h "$t_tools")" \
			"$(calc "$in_b / $t_tools / 1e9" '%.2f') GB/s in" "$(calc "$t_floor / $t_tools" '%.2f')" \
			"I/O floor $(secs_h "$t_floor")" "$(kib_h "$rss") (anon $(kib_h "$anon"))" ">= 0.5; < 2 GiB"
		rm -f -- "$q" "$p"
	done
	if [[ ${rss_list[0]} =~ ^[0-9]+$ && ${rss_list[1]} =~ ^[0-9]+$ ]]; then
		note "peak RSS ${names[0]} / ${names[1]}: $(calc "${rss_list[0]} / ${rss_list[1]}" '%.2f') (anon: $(calc "${anon_list[0]} / (${anon_list[1]} > 0 ? ${anon_list[1]} : 1)" '%.2f')); 1.00 = flat in the number of blocks"
		note "input size ratio: $(calc "$(file_bytes "$CACHE/${names[0]}"/model/*.safetensors) / $(file_bytes "$CACHE/${names[1]}"/model/*.safetensors)" '%.2f')"
	fi
}

# ---------------------------------------------------------------------------
# sgemm_probe LABEL: the OpenBLAS sgemm rate now (2048^3, 1.5 s); the machine's
# speed drifts (shared host), so the calib benchmark probes between its runs.
SG_BEST=() SG_MEAN=()
sgemm_probe() {
	local sg=$CACHE/sgemm-peak l best mean
	if [[ ! -x $sg || $BENCH_DIR/sgemm-peak.c -nt $sg ]]; then
		${CC:-cc} -O2 -std=c11 -o "$sg" "$BENCH_DIR/sgemm-peak.c" -lopenblas ||
			die "cannot build the sgemm probe bench/sgemm-peak.c (needs libopenblas-dev)"
	fi
	l=$("$sg" 2048 1.5) || die "the sgemm probe failed"
	best=$(sed 's/.*best_gflops=\([0-9.]*\).*/\1/' <<<"$l")
	mean=$(sed 's/.*mean_gflops=\([0-9.]*\).*/\1/' <<<"$l")
	SG_BEST+=("$best") SG_MEAN+=("$mean")
	printf '  %-28s %10s  best %s GFLOP/s, mean %s GFLOP/s\n' "sgemm probe ($1)" "1.5 s" "$best" "$mean"
}

bench_calib() {
	section "fx-calib forward (issue 4): hidden 3072, 2 double + 2 single, 1024 img + 256 txt tokens"
	need_space 4
	local dir m cond steps=${FX_BENCH_STEPS:-3} flops peak spread t1 t2 fwd rate frac
	[[ $steps =~ ^[0-9]+$ ]] && ((steps >= 2)) || die "FX_BENCH_STEPS must be >= 2"
	dir=$(cached_model flux3072-d2s2-calib --hidden 3072 --double 2 --single 2 --txt-dim 4096 \
		--cond cond.safetensors --prompts 1 --txt-len 256)
	m=$dir/model
	cond=$dir/cond.safetensors
	flops=$(forward_flops 3072 2 2 1024 256)
	note "forward: $(calc "$flops / 1e12" '%.3f') TFLOP (linear + attention, FLOP = 2 MAC); ms per forward = (time of --steps $steps - time of --steps 1) / $((steps - 1))"

	prime_hash "$m"
	warm "$m"/*.safetensors "$cond"
	cpu_mark
	local common=(--model "$m" --cond "$cond" --prompts 1 --res 512x512 --samples 256 --force)
	sgemm_probe "before"
	measure calib-1 "$FX_BIN/fx-calib" "${common[@]}" --steps 1 -o "$BENCH_WORK/calib-1.safetensors"
	t1=$M_SEC
	detail "fx-calib --steps 1"
	sgemm_probe "between"
	measure calib-n "$FX_BIN/fx-calib" "${common[@]}" --steps "$steps" -o "$BENCH_WORK/calib-n.safetensors"
	t2=$M_SEC
	detail "fx-calib --steps $steps"
	local rss=$M_RSS_KB anon=$M_ANON_KB
	sgemm_probe "after"
	cpu_report "the fx-calib runs"
	rm -f -- "$BENCH_WORK"/calib-*.safetensors
	fwd=$(calc "($t2 - $t1) / ($steps - 1)")
	if awk -v f="$fwd" 'BEGIN { exit !(f <= 0) }'; then
		die "fx-calib: the $steps-step run was not slower than the 1-step run ($t2 s vs $t1 s): machine too noisy, run again"
	fi
	peak=$(printf '%s\n' "${SG_BEST[@]}" | sort -g | tail -n 1)
	spread=$(printf '%s\n' "${SG_MEAN[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f", hi / lo }')
	rate=$(calc "$flops / $fwd / 1e9" '%.1f')
	frac=$(calc "$rate / $peak" '%.2f')
	note "sgemm peak (best of the probes): $peak GFLOP/s; probe means vary by ${spread}x"
	if awk -v s="$spread" -v f="$frac" -v x="$(calc "$t1 - $fwd")" 'BEGIN { exit !(s > 1.25 || f > 1 || x < 0) }'; then
		note "WARNING: the machine's speed changed during this benchmark (probe means vary by ${spread}x): the calib numbers are unreliable, run again on a quiet machine"
	fi
	note "fx-calib sampling step (forward + activation capture): $(calc "$fwd * 1000" '%.0f') ms = $rate GFLOP/s = $frac of sgemm peak; fixed cost per run $(secs_h "$(calc "$t1 - $fwd")")"
	row "fx-calib step" "$(calc "$flops / 1e12" '%.2f') TFLOP/fwd" "$(calc "$fwd * 1000" '%.0f') ms/fwd" \
		"$rate GFLOP/s" "$frac" "sgemm peak $peak GFLOP/s" "$(kib_h "$rss") (anon $(kib_h "$anon"))" ">= 0.60"

	# The forward alone, timed as torch-forward.py times torch's (warm-up,
	# best of 2): the like-for-like comparison.
	local fb=${FX_FORWARD_BENCH:-} fms= frate= ffrac=
	if [[ -n $fb && -x $fb ]]; then
		measure forward "$fb" "$m" 1024 256 2
		fms=$(sed -n 's/^fx_forward ms=\([0-9.]*\).*/\1/p' "$BENCH_WORK/forward.log")
		[[ -n $fms ]] || die "fx-forward-bench printed no result: $(tail -n 3 "$BENCH_WORK/forward.log")"
		frate=$(calc "$flops / ($fms / 1000) / 1e9" '%.1f')
		ffrac=$(calc "$frate / $peak" '%.2f')
		detail "fx forward alone (3 calls)" "$(head -n 1 "$BENCH_WORK/forward.log")"
		note "C forward alone (bench/forward.c, best of 2 after a warm-up): $fms ms = $frate GFLOP/s = $ffrac of sgemm peak (target >= 0.60)"
		row "fx forward" "$(calc "$flops / 1e12" '%.2f') TFLOP/fwd" "$fms ms/fwd" "$frate GFLOP/s" "$ffrac" \
			"sgemm peak $peak GFLOP/s" "$(kib_h "$M_RSS_KB") (anon $(kib_h "$M_ANON_KB"))" ">= 0.60"
	else
		note "fx forward alone: skipped (FX_FORWARD_BENCH unset; make bench builds it)"
		fms=$(calc "$fwd * 1000" '%.1f')
	fi

	# The diffusers/torch CPU forward of the same shapes.
	local py=${FX_BENCH_PYTHON:-python3}
	if "$py" -c 'import torch, diffusers' >/dev/null 2>&1; then
		cpu_mark
		measure torch "$py" "$BENCH_DIR/torch-forward.py" 3072 2 2 1024 256 2 "$NPROC"
		local tl tms
		tl=$(grep '^torch_forward' "$BENCH_WORK/torch.log" || true)
		[[ -n $tl ]] || die "torch-forward.py printed no result: $(tail -n 3 "$BENCH_WORK/torch.log")"
		tms=$(sed -n 's/^torch_forward ms=\([0-9.]*\).*/\1/p' <<<"$tl")
		detail "torch forward (3 calls)" "${tl#torch_forward }"
		sgemm_probe "after torch"
		cpu_report "the torch forward"
		note "diffusers/torch CPU forward (float32, $NPROC threads, best of 2): $tms ms; the fx forward is $(calc "$tms / $fms" '%.2f')x torch's speed (target >= 1); an fx-calib step with capture $(calc "$tms / ($fwd * 1000)" '%.2f')x"
		row "fx forward vs torch" "same forward" "$fms ms/fwd" \
			"$(calc "$flops / ($fms / 1000) / 1e9" '%.1f') GFLOP/s" "$(calc "$tms / $fms" '%.2f')" "torch CPU $tms ms/fwd" \
			"$(kib_h "$M_RSS_KB") (torch)" ">= 1"
	else
		note "torch: skipped (not installed: '$py -c \"import torch, diffusers\"' fails; pip install torch diffusers, or set FX_BENCH_PYTHON)"
		row "fx forward vs torch" "same forward" "-" "-" "n/a" "torch: skipped (not installed)" "-" ">= 1"
	fi

	# Projections for FLUX.1-dev (19 double + 38 single, 512 text tokens),
	# scaling by FLOPs at the measured rate.
	local f1024 f512 p1 p2
	f1024=$(forward_flops 3072 19 38 4096 512)
	f512=$(forward_flops 3072 19 38 1024 512)
	p1=$(calc "128 * 50 * $f1024 / ($rate * 1e9)")
	p2=$(calc "32 * 8 * $f512 / ($rate * 1e9)")
	note "FLUX.1-dev forward: $(calc "$f1024 / 1e12" '%.1f') TFLOP at 1024^2, $(calc "$f512 / 1e12" '%.1f') TFLOP at 512^2"
	note "projected FLUX.1-dev calibration at $rate GFLOP/s: 128 prompts x 50 steps at 1024^2 = $(secs_h "$p1") ($(calc "$p1 / 86400" '%.1f') days); 32 x 8 at 512^2 = $(secs_h "$p2")"
	row "fx-calib projected" "dev 128x50 @1024^2" "$(secs_h "$p1")" "$(calc "128 * 50 * $f1024 / 1e15" '%.0f') PFLOP" "-" "at the measured rate" "-" "-"
	row "fx-calib projected" "dev 32x8 @512^2" "$(secs_h "$p2")" "$(calc "32 * 8 * $f512 / 1e15" '%.1f') PFLOP" "-" "at the measured rate" "-" "-"
}

# ---------------------------------------------------------------------------
bench_lowrank() {
	section "fx-lowrank (issue 5)"
	local n0 out rc=0
	if [[ ! -f $BENCH_DIR/lowrank.sh ]]; then
		note "fx-lowrank: skipped (bench/lowrank.sh missing)"
		row "fx-lowrank" "-" "-" "-" "n/a" "skipped: bench/lowrank.sh missing" "-" "-"
		return 0
	fi
	n0=$(wc -l <"$FX_BENCH_ROWS")
	out=$BENCH_WORK/lowrank.out
	BENCH_WORK=$BENCH_WORK bash "$BENCH_DIR/lowrank.sh" 2>&1 | tee "$out" || rc=$?
	if (($(wc -l <"$FX_BENCH_ROWS") == n0)); then
		# A script that does not add rows itself: its last line is its summary.
		row "fx-lowrank" "-" "-" "-" "-" "$(grep -v '^[[:space:]]*$' "$out" | tail -n 1 | tr '\t' ' ' | cut -c1-70)" "-" "-"
	fi
	((rc == 0)) || note "bench/lowrank.sh exited with status $rc"
}

# ---------------------------------------------------------------------------
bench_gptq() {
	section "GPTQ sweep (issue 14): FLUX-width layers, INT4 grid"
	if [[ -z ${FX_GPTQ_BENCH:-} || ! -x ${FX_GPTQ_BENCH:-} ]]; then
		note "gptq: skipped (FX_GPTQ_BENCH not built: make bench builds it)"
		row "GPTQ" "-" "-" "-" "n/a" "skipped: fx-gptq-bench not built" "-" "-"
		return 0
	fi
	local k3 k12 f3 r3 f12 r12 qkv out fc1 fc2 n1 n2 total
	# the sweep's time is linear in the rows: a slice of rows is timed
	read -r _ _ f3 r3 < <("$FX_GPTQ_BENCH" 3072 256)
	read -r _ _ f12 r12 < <("$FX_GPTQ_BENCH" 12288 32)
	note "K=3072: factor $(secs_h "$f3"), sweep $(calc "$r3 * 1000" '%.2f') ms per row"
	note "K=12288: factor $(secs_h "$f12"), sweep $(calc "$r12 * 1000" '%.2f') ms per row"
	qkv=$(calc "$f3 + 9216 * $r3")
	out=$(calc "$f3 + 3072 * $r3")
	fc1=$(calc "$f3 + 12288 * $r3")
	fc2=$(calc "$f12 + 3072 * $r12")
	n1=$(calc "$f3 + 18432 * $r3")
	n2=$(calc "$f3 + 9216 * $r3")
	note "per layer: qkv 9216x3072 $(secs_h "$qkv"), out 3072x3072 $(secs_h "$out"), fc1 12288x3072 $(secs_h "$fc1"), fc2 3072x12288 $(secs_h "$fc2"), norm1 18432x3072 $(secs_h "$n1"), single norm 9216x3072 $(secs_h "$n2")"
	total=$(calc "76 * ($qkv + $out + $fc1 + $fc2) + 38 * $n1 + 38 * $n2")
	note "projected FLUX.1-dev GPTQ (304 W4A4 + 76 adaLN layers): $(secs_h "$total")"
	row "GPTQ" "FLUX.1-dev, 380 layers" "$(secs_h "$total")" "-" "fc2 $(secs_h "$fc2")/layer" "projection from timed slices" "-" "lowrank + GPTQ < 60 min"
}

((want_quant)) && bench_quant
((want_calib)) && bench_calib
((want_lowrank)) && bench_lowrank
((want_gptq)) && bench_gptq
if ((want_encode)); then
	section "fx-encode (issue 8)"
	# bench/encode.sh adds its rows to the shared table itself
	BENCH_WORK=$BENCH_WORK bash "$BENCH_DIR/encode.sh" || note "bench/encode.sh exited with status $?"
fi

if ((want_qwen)); then
	BENCH_WORK=$BENCH_WORK bash "$BENCH_DIR/qwenimage.sh" || note "bench/qwenimage.sh exited with status $?"
fi

section "summary ($(secs_h $(($(date +%s) - BENCH_T0))) in all)"
CPU_MARK_T=${BENCH_CPU_MARK[0]} CPU_MARK_BUSY=${BENCH_CPU_MARK[1]} CPU_MARK_OWN=${BENCH_CPU_MARK[2]}
cpu_report "the whole bench"
print_table
