#!/usr/bin/env bash
# fx-lowrank benchmark (issue 5), run by bench/run.sh or alone:
#
#   FX_BIN=$PWD/build/bin bash bench/lowrank.sh
#
# Model: two FLUX-width single blocks (hidden 3072): each block's four fused
# groups are exactly one of each FLUX.1 W4A4 shape — qkv 9216x3072, out_proj
# 3072x3072, mlp_fc1 12288x3072, mlp_fc2 3072x12288 — and FLUX.1-dev's 304
# groups are 76 of each (19 double blocks x 2 streams + 38 single blocks), so
# the projected total is 38 x the wall time of one run. fx-lowrank searches
# two groups at once (--jobs, default 2), so per-group times overlap: the
# projection uses the run's wall time (model loading included), over eight
# groups so that the two jobs' uneven last groups cost little. Calibration:
# fx-calib, 1 prompt, 1 step at 512x512 (1024 image + 256 text tokens),
# FX_BENCH_LR_SAMPLES rows per layer (default 256); generated once into the
# cache.
#
# Runs (each capped at FX_BENCH_LOWRANK_TIMEOUT seconds, default 300):
#   rank 32 with --jobs 1 (one group at a time: every thread in its
#   products) and the default, then rank 128 (default jobs), all with
#   --method rsvd and --for-gptq, the search the pipelines run with GPTQ
#   (their default; the target: projected total with GPTQ under 60 min for
#   rank 32); rank 32 without it (the RTN search of GPTQ=0, with its
#   refinement rounds); then --method svd (LAPACK sgesdd) against rsvd at
#   rank 32 on the first block with one candidate and no refinement
#   (--alpha-grid FX_BENCH_LR_GRID, default 1, --iters 0, --jobs 1): one SVD
#   per group; svd over the full search is far too slow for a bench.
set -euo pipefail
export LC_ALL=C
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LR_TIMEOUT=${FX_BENCH_LOWRANK_TIMEOUT:-300}
LR_GRID=${FX_BENCH_LR_GRID:-1}
LR_SAMPLES=${FX_BENCH_LR_SAMPLES:-256}
BLOCKS=2
DEV_RUNS=38 # FLUX.1-dev: 304 W4A4 groups = 76 x (qkv, out, fc1, fc2) = 38 runs of 2 blocks

if [[ ! -x $FX_BIN/fx-lowrank ]]; then
	note "fx-lowrank: skipped ($FX_BIN/fx-lowrank not built yet)"
	row "fx-lowrank" "-" "-" "-" "n/a" "skipped: fx-lowrank not built" "-" "< 60 min (dev, r32)"
	[[ ${BENCH_ROWS_OWNER:-} == "$$" ]] && print_table
	exit 0
fi

need_space 2
dir=$(cached_model flux3072-s2-lowrank --hidden 3072 --double 0 --single $BLOCKS --txt-dim 4096 \
	--cond cond.safetensors --prompts 1 --txt-len 256)
m=$dir/model
calib=$dir/calib-s$LR_SAMPLES.safetensors
prime_hash "$m"
# fx-calib skips the work when the calib file is up to date.
"$FX_BIN/fx-calib" -q --model "$m" --cond "$dir/cond.safetensors" --prompts 1 --steps 1 \
	--res 512x512 --samples "$LR_SAMPLES" -o "$calib" ||
	die "fx-calib for the fx-lowrank benchmark failed"
warm "$m"/*.safetensors "$calib"
cpu_mark
note "two FLUX-width single blocks: 2 x 4 fused groups (qkv 9216x3072, out 3072x3072, fc1 12288x3072, fc2 3072x12288), $LR_SAMPLES calibration rows"

# lr_run NAME RANK METHOD GRID [ARGS...]: sets LR_SEC (the run's wall time;
# "" when it timed out), LR_CPU (its CPU seconds), LR_N (the groups it
# searched) and LR_RSS; prints the per-group times fx-lowrank reports (with
# two jobs they overlap).
lr_run() {
	local name=lowrank-$1 rank=$2 method=$3 grid=$4 args=() per
	shift 4
	[[ $grid != default ]] && args=(--alpha-grid "$grid")
	args+=("$@")
	BENCH_ALLOW_FAIL=1 measure "$name" timeout "$LR_TIMEOUT" "$FX_BIN/fx-lowrank" -v --model "$m" \
		--calib "$calib" --rank "$rank" --method "$method" "${args[@]}" \
		-o "$BENCH_WORK/$name.safetensors" --force
	rm -f -- "$BENCH_WORK/$name.safetensors"
	LR_RSS="$(kib_h "$M_RSS_KB") (anon $(kib_h "$M_ANON_KB"))"
	LR_CPU=$(cpu_of "$name")
	if ((M_RC == 124)); then
		LR_SEC=
		note "$(printf '%-28s' "r$rank $method grid $grid") > ${LR_TIMEOUT} s (timed out; FX_BENCH_LOWRANK_TIMEOUT)"
		return 0
	elif ((M_RC != 0)); then
		printf 'bench: error: fx-lowrank --rank %s --method %s failed (exit %s):\n' "$rank" "$method" "$M_RC" >&2
		tail -n 20 "$BENCH_WORK/$name.log" >&2
		exit 1
	fi
	LR_SEC=$M_SEC
	# "fx-lowrank: single_transformer_blocks.0.qkv_proj: alpha ..., 1.1 s"
	per=$(sed -n 's/^fx-lowrank: [a-z_]*\.\([0-9]*\.[a-z_0-9]*\): alpha .*, \([0-9.]*\) s$/\1 \2/p' \
		"$BENCH_WORK/$name.log")
	LR_N=$(grep -c . <<<"$per" || true)
	per=$(awk '{ printf "%s%s %s s", (NR > 1 ? ", " : ""), $1, $2 }' <<<"$per")
	detail "r$rank $method grid $grid${*:+ $*}" "$(secs_h "$LR_SEC") wall, CPU $(secs_h "$LR_CPU"), $LR_N groups ($per)"
}

# rank 32 one group at a time (--jobs 1), then the default (two at once)
lr_run r32-jobs1 32 rsvd default --jobs 1 --for-gptq
t_j1=$LR_SEC
for rank in 32 128; do
	lr_run "r$rank" "$rank" rsvd default --for-gptq
	if [[ -n $LR_SEC ]]; then
		total=$(calc "$LR_SEC * $DEV_RUNS")
		note "r$rank rsvd: $(calc "$LR_SEC / ($BLOCKS * 4)" '%.2f') s per group (wall time / 8); projected FLUX.1-dev (304 groups): $(secs_h "$total")"
		if [[ $rank == 32 && -n $t_j1 ]]; then
			note "r32 --jobs 1: $(calc "$t_j1 / ($BLOCKS * 4)" '%.2f') s per group, projected $(secs_h "$(calc "$t_j1 * $DEV_RUNS")"): two jobs are $(calc "$t_j1 / $LR_SEC" '%.2f')x as fast"
			row "fx-lowrank r32 jobs" "8 groups, --jobs 2 vs 1" "$(secs_h "$LR_SEC") wall" \
				"--jobs 1 $(secs_h "$t_j1")" "$(calc "$t_j1 / $LR_SEC" '%.2f')" "jobs 1 / jobs 2 time" "$LR_RSS" "> 1"
		fi
		# kept for bench/run.sh gptq's post-calibration projection
		[[ $rank == 32 ]] && printf '%s measured %s\n' "$total" "$(date -u '+%Y-%m-%d %H:%M UTC')" \
			>"$CACHE/lowrank-r32-dev.txt"
		# with GPTQ + fx-quant/fx-pack on idle cores: bench/run.sh gptq's
		# last projection (it reads this run's fx-lowrank figure itself)
		if [[ $rank == 32 ]]; then
			gq=${FX_BENCH_GPTQ_DEV_S:-} gq_from="FX_BENCH_GPTQ_DEV_S"
			[[ -z $gq && -s $CACHE/gptq-quantpack-dev.txt ]] &&
				read -r gq gq_from <"$CACHE/gptq-quantpack-dev.txt" && gq_from="bench/run.sh gptq, $gq_from"
			[[ -z $gq ]] && gq=900 gq_from="not measured here: 15 min, fx-quant(1)'s figure"
			note "r32 rsvd + GPTQ + fx-quant/fx-pack ($gq_from): $(secs_h "$total") + $(secs_h "$gq") = $(secs_h "$(calc "$total + $gq")") projected FLUX.1-dev post-calibration (target < 60 min): $(awk -v p="$(calc "$total + $gq")" 'BEGIN { print (p < 3600 ? "PASS" : "FAIL") }')"
		fi
		row "fx-lowrank r$rank rsvd" "8 groups, --for-gptq" "$(calc "$LR_SEC / ($BLOCKS * 4)" '%.1f') s/group" \
			"dev total $(secs_h "$total")" "$(calc "3600 / $total" '%.2f')" "60 min target / projected" "$LR_RSS" \
			"$([[ $rank == 32 ]] && echo ">= 1 (< 60 min)" || echo "-")"
	else
		row "fx-lowrank r$rank rsvd" "8 groups, --for-gptq" "> $LR_TIMEOUT s" \
			"dev total > $(secs_h "$((LR_TIMEOUT * DEV_RUNS))")" "< $(calc "3600 / ($LR_TIMEOUT * $DEV_RUNS)" '%.2f')" \
			"60 min target / projected" "$LR_RSS" "$([[ $rank == 32 ]] && echo ">= 1 (< 60 min)" || echo "-")"
	fi
done

# the RTN search (GPTQ=0): refinement rounds, no GPTQ after it
lr_run r32-rtn 32 rsvd default
if [[ -n $LR_SEC ]]; then
	total=$(calc "$LR_SEC * $DEV_RUNS")
	note "r32 rsvd, RTN search (GPTQ=0 pipelines): $(calc "$LR_SEC / ($BLOCKS * 4)" '%.2f') s per group, projected FLUX.1-dev $(secs_h "$total")"
	row "fx-lowrank r32 RTN search" "8 groups, default grid, refinement" "$(calc "$LR_SEC / ($BLOCKS * 4)" '%.1f') s/group" \
		"dev total $(secs_h "$total")" "$(calc "3600 / $total" '%.2f')" "60 min target / projected" "$LR_RSS" ">= 1 (< 60 min)"
else
	row "fx-lowrank r32 RTN search" "8 groups, default grid, refinement" "> $LR_TIMEOUT s" \
		"dev total > $(secs_h "$((LR_TIMEOUT * DEV_RUNS))")" "< $(calc "3600 / ($LR_TIMEOUT * $DEV_RUNS)" '%.2f')" \
		"60 min target / projected" "$LR_RSS" ">= 1 (< 60 min)"
fi

# sgesdd against the randomized SVD, same (small) grid, the first block.
lr_run r32-rsvd-g 32 rsvd "$LR_GRID" --iters 0 --blocks 0 --jobs 1
t_rsvd=$LR_SEC
lr_run r32-svd-g 32 svd "$LR_GRID" --iters 0 --blocks 0 --jobs 1
t_svd=$LR_SEC
if [[ -n $t_rsvd && -n $t_svd ]]; then
	note "r32, grid $LR_GRID, no refinement, 4 groups: svd $(secs_h "$t_svd"), rsvd $(secs_h "$t_rsvd"): rsvd is $(calc "$t_svd / $t_rsvd" '%.2f')x faster"
	row "fx-lowrank r32 svd" "4 groups, 1 SVD each" "$(calc "$t_svd / 4" '%.1f') s/group" \
		"rsvd $(calc "$t_rsvd / 4" '%.1f') s/group" "$(calc "$t_svd / $t_rsvd" '%.2f')" \
		"svd / rsvd time, 1 SVD/group" "$LR_RSS" "> 1 (rsvd faster)"
else
	row "fx-lowrank r32 svd" "4 groups, 1 SVD each" "${t_svd:+$(calc "$t_svd / 4" '%.1f') s/group}${t_svd:-> $LR_TIMEOUT s}" \
		"-" "n/a" "svd / rsvd (a run timed out)" "$LR_RSS" "> 1 (rsvd faster)"
fi

cpu_report "the fx-lowrank runs"
[[ ${BENCH_ROWS_OWNER:-} == "$$" ]] && print_table
exit 0
